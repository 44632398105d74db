"""The disc classifier: a two-layer CNN trained on the shared training kit (one AMP step, one
checkpoint format, one resume check), one checkpoint per epoch, resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from medq.common.training.checkpoint import (
    load_checkpoint, prepare_workdir, restore, resume_check, save_checkpoint, save_weights, set_rng_states,
)
from medq.common.training.kit import EpochMeter, Progress, pick_device, seed_everything, train_one_epoch
from tests.fourth_family.data import load_images


def build_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def load_classifier(path: Path) -> tuple[nn.Module, dict]:
    checkpoint = load_checkpoint(Path(path))
    model = build_model()
    model.load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint


def train(spec, plan: dict, seed: int, workdir: Path, hooks) -> dict:
    workdir = Path(workdir)
    last, best = workdir / "last.pt", workdir / "best.pt"
    _maybe_flaky(spec, workdir)
    seed_everything(seed)
    device = pick_device()
    data = Path(plan["data_dir"])
    labels = dict(map(tuple, plan["labels"]))
    parts = {part: (torch.from_numpy(load_images(data, stems, spec.image_size)),
                    torch.tensor([labels[s] for s in stems])) for part, stems in plan["split"].items()}
    model = build_model().to(device)
    prepare_workdir(workdir, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.98)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    state, resumed = {"epoch": 0, "best_accuracy": -1.0}, None
    if last.is_file():
        checkpoint = load_checkpoint(last)
        resume_check(checkpoint, spec, seed, last)
        restore(checkpoint, model, optimizer, scheduler, scaler)
        set_rng_states(checkpoint["rng"])
        state, resumed = dict(checkpoint["state"]), checkpoint["state"]["epoch"]
    images, targets = parts["train"]
    steps = -(-len(images) // spec.batch_size)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(state["epoch"] + 1, spec.epochs + 1):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        batches = [order[k:k + spec.batch_size] for k in range(0, len(order), spec.batch_size)]
        meter = EpochMeter()

        def loss_of(index):
            return loss_fn(model(images[index].to(device)), targets[index].to(device)), len(index)

        def report(m: EpochMeter, epoch=epoch) -> None:
            hooks.progress(Progress(epoch, spec.epochs, "train", m.steps, steps, m.mean_loss, None, None,
                                    m.images_per_s, False))

        if train_one_epoch(model, batches, loss_of, optimizer, scaler, epoch=epoch, meter=meter,
                           should_stop=hooks.should_stop, report=report, after_step=lambda: None):
            return {"cancelled": True, "epoch": state["epoch"], "resumed": resumed, "last": last, "best": best}
        scheduler.step()
        val_loss, accuracy = evaluate_model(model, *parts["val"], device)
        state["epoch"] = epoch
        if accuracy > state["best_accuracy"]:
            state["best_accuracy"] = accuracy
            save_weights(best, model, spec, epoch, val_loss=val_loss, accuracy=accuracy)
        save_checkpoint(last, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, epoch=epoch,
                        spec=spec, seed=seed, state=state)
        hooks.progress(Progress(epoch, spec.epochs, "train", meter.steps, steps, meter.mean_loss, val_loss, None,
                                meter.images_per_s, True, val_score=accuracy))
    return {"cancelled": False, "epoch": state["epoch"], "resumed": resumed, "last": last, "best": best,
            "accuracy": state["best_accuracy"], "device": str(device)}


def _maybe_flaky(spec, workdir: Path) -> None:
    """The first ``spec.flaky_reads`` attempts find the data's file system away (EIO), as an NFS
    server that reboots does: a transient fault, which medq retries."""
    import errno

    tries = workdir / "flaky-tries"
    workdir.mkdir(parents=True, exist_ok=True)
    seen = int(tries.read_text()) if tries.is_file() else 0
    if seen < spec.flaky_reads:
        tries.write_text(str(seen + 1))
        raise OSError(errno.EIO, "Input/output error")


@torch.no_grad()
def evaluate_model(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, device) -> tuple[float, float]:
    model.eval()
    logits = model(images.to(device)).float().cpu()
    model.train()
    loss = float(nn.functional.cross_entropy(logits, targets))
    return loss, float((logits.argmax(dim=1) == targets).float().mean())


def probabilities(model: nn.Module, images: np.ndarray, device) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(images).to(device)).float(), dim=1).cpu().numpy()
