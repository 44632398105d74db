"""The chest-landmark engine: augmentation geometry, model registry, training, resume, evaluation.

Tiny and on the CPU: 16 synthetic 299-px radiographs, image_size 64, batch 4, 1 + 1 epochs.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medq.common.errors import JobError
from medq.common.families.chest.augment import apply_transform, eval_transform, train_transform
from medq.common.families.chest.csvio import make_split
from medq.common.families.chest.dataset import LandmarkDataset, preload_images
from medq.common.families.chest.evaluate import evaluate_ensemble, load_member, predict
from medq.common.families.chest.model import BACKBONES, build_model
from medq.common.families.chest.synth import synth_chest
from medq.common.training.checkpoint import LAST_NAME
from medq.common.training.kit import Progress, TrainHooks
from medq.common.families.chest.train import train_member
from medq.common.families.chest.spec import LANDMARK_BACKBONES, EnsembleSpec
from medq.common.specs import AGGREGATIONS
from tests.unit.old_layouts import to_old_chest

TINY = EnsembleSpec(image_size=64, batch_size=4, epochs_head=1, epochs=1, loss="mse")
LAST_KEYS = {"kind", "model", "optimizer", "scheduler", "scaler", "epoch", "spec", "seed", "code_version", "rng",
             "state"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """16 synthetic radiographs (299 px): 11 train / 3 val / 2 test after the default split."""
    folder = tmp_path_factory.mktemp("chest")
    summary = synth_chest(folder, 16, seed=3, size=299)
    return folder, make_split(summary.records, TINY.split)


def _steps_and_epochs(calls: list[Progress]) -> tuple[list[Progress], list[Progress]]:
    return [c for c in calls if not c.epoch_done], [c for c in calls if c.epoch_done]


# --- augmentation --------------------------------------------------------------------------


def test_forced_flip_puts_the_mirrored_right_landmark_in_the_left_slot():
    """Flip convention: x -> (S - 1) - x on the S-px output (albumentations' pixel-centre mirror)."""
    width, height, size = 120, 100, 60
    image = np.zeros((height, width), np.uint8)
    points = np.column_stack([np.linspace(5, 110, 15), np.linspace(3, 95, 15)])
    spec = dataclasses.replace(TINY, image_size=size, flip_p=1.0, rotation_deg=0.0, brightness=0.0, contrast=0.0)
    out_image, out = apply_transform(train_transform(spec), image, points)
    assert out_image.shape == (size, size)
    # input landmark 3 at (27.5, 22.714): resized x0.5, x0.6 to (13.75, 13.629), mirrored 59 - 13.75
    x3, y3 = points[3]
    assert out[2] == pytest.approx([size - 1 - x3 * size / width, y3 * size / height], abs=1e-4)
    assert out[2] == pytest.approx([45.25, 13.6286], abs=1e-3)
    x2, y2 = points[2]
    assert out[3] == pytest.approx([size - 1 - x2 * size / width, y2 * size / height], abs=1e-4)
    # midline landmarks keep their index
    assert out[0] == pytest.approx([size - 1 - points[0, 0] * size / width, points[0, 1] * size / height], abs=1e-4)


def test_evaluation_pass_scales_coordinates_exactly_by_the_resize_factor():
    image = np.zeros((100, 200), np.uint8)
    points = np.column_stack([np.arange(15) * 10.0 + 7.0, np.arange(15) * 6.0 + 1.0])
    _, out = apply_transform(eval_transform(50), image, points)
    np.testing.assert_allclose(out, points * [50 / 200, 50 / 100], atol=1e-5)


def test_dataset_targets_are_original_pixels_over_image_size(data):
    folder, split = data
    from medq.common.families.chest.dataset import split_records

    records = split_records(folder, split, ("val",))["val"]
    dataset = LandmarkDataset(records, preload_images(folder / "images", [r.stem for r in records]),
                              eval_transform(64))
    image, target = dataset[0]
    assert image.shape == (1, 64, 64) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    np.testing.assert_allclose(target.numpy(), records[0].points / 299.0, atol=1e-5)


# --- model ---------------------------------------------------------------------------------


def test_backbone_registry_names_equal_the_spec_names():
    assert BACKBONES.names() == sorted(LANDMARK_BACKBONES)


@pytest.mark.parametrize("name", LANDMARK_BACKBONES)
def test_model_maps_grey_images_to_30_outputs_in_unit_range(name):
    model = build_model(dataclasses.replace(TINY, backbone=name)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 30)
    assert torch.all((out >= 0) & (out <= 1))


def test_pretrained_weights_come_from_the_hub_cache_or_a_file_and_never_from_the_network(tmp_path, monkeypatch, caplog):
    import torchvision

    from medq.common.errors import SpecError
    from medq.common.families.chest.model import load_pretrained

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("download attempted"))
    model = build_model(TINY)
    assert load_pretrained(model, TINY) == "random"
    assert "random initialisation: no local ImageNet weights" in caplog.text

    imagenet = torchvision.models.resnet18(weights=None).state_dict()  # with its fc.* keys
    imagenet["conv1.weight"] = torch.full_like(imagenet["conv1.weight"], 0.25)
    (tmp_path / "checkpoints").mkdir()
    torch.save(imagenet, tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    assert load_pretrained(model, TINY).endswith("resnet18-f37072fd.pth")
    assert torch.equal(model.backbone.conv1.weight, imagenet["conv1.weight"])

    with pytest.raises(SpecError, match="does not exist"):
        load_pretrained(model, dataclasses.replace(TINY, pretrained=str(tmp_path / "nowhere.pth")))


# --- training ------------------------------------------------------------------------------


def test_member_trains_both_phases_and_writes_both_checkpoints(data, tmp_path):
    folder, split = data
    calls: list[Progress] = []
    outcome = train_member(TINY, split, folder, 7, tmp_path, TrainHooks(progress=calls.append))
    steps, epochs = _steps_and_epochs(calls)
    assert [(p.epoch, p.phase) for p in epochs] == [(1, "head"), (2, "finetune")]
    assert len(steps) == 2 * 3  # 11 training images in batches of 4 -> 3 steps per epoch
    assert all(math.isfinite(p.val_loss) and p.val_error_px > 0 for p in epochs)
    assert outcome.epochs_run == 2 and not outcome.cancelled and outcome.resumed_from_epoch is None
    assert outcome.best_val_loss == min(p.val_loss for p in epochs)

    last = torch.load(outcome.last_checkpoint, weights_only=True)
    assert LAST_KEYS <= set(last)
    assert last["epoch"] == 2 and last["state"]["phase"] == "finetune" and last["seed"] == 7
    assert last["spec"] == TINY.to_dict()
    best = torch.load(outcome.best_checkpoint, weights_only=True)
    assert {"model", "spec", "seed", "epoch", "val_loss", "val_error_px"} <= set(best)
    assert best["epoch"] == outcome.best_epoch
    model, spec = load_member(outcome.best_checkpoint)
    assert spec == TINY


def test_should_stop_cancels_within_the_epoch(data, tmp_path):
    folder, split = data
    calls: list[Progress] = []
    outcome = train_member(TINY, split, folder, 1, tmp_path,
                           TrainHooks(progress=calls.append, should_stop=lambda: len(calls) >= 2))
    assert outcome.cancelled
    assert [(p.epoch, p.step, p.epoch_done) for p in calls] == [(1, 1, False), (1, 2, False)]
    assert outcome.epochs_run == 0 and outcome.best_val_loss is None
    saved = torch.load(tmp_path / LAST_NAME, weights_only=True)
    assert saved["epoch"] == 0 and saved["state"]["partial"]["steps"] == 2


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """An uninterrupted 1 + 1 epoch run of seed 5, the reference for the resume tests."""
    folder, split = data
    return train_member(TINY, split, folder, 5, tmp_path_factory.mktemp("straight"))


@pytest.mark.parametrize(
    "stop_after, resumed_from, remaining_epochs, first_step",
    [("epoch", 1, [2], 1), ("two steps", 0, [1, 2], 3)],  # 3 steps per epoch
)
def test_resume_continues_where_it_stopped_and_matches_an_uninterrupted_run(
    data, straight, tmp_path, stop_after, resumed_from, remaining_epochs, first_step
):
    folder, split = data
    first: list[Progress] = []
    if stop_after == "epoch":
        stop = lambda: any(p.epoch_done for p in first)  # noqa: E731
    else:
        stop = lambda: len(first) >= 2  # noqa: E731
    cut = train_member(TINY, split, folder, 5, tmp_path / "cut", TrainHooks(progress=first.append, should_stop=stop))
    assert cut.cancelled and cut.epochs_run == resumed_from
    second: list[Progress] = []
    resumed = train_member(TINY, split, folder, 5, tmp_path / "cut", TrainHooks(progress=second.append))
    assert resumed.resumed_from_epoch == resumed_from and not resumed.cancelled
    assert [p.epoch for p in second if p.epoch_done] == remaining_epochs  # it did not start over
    assert second[0].step == first_step
    assert resumed.epochs_run == 2

    a = torch.load(straight.last_checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.last_checkpoint, weights_only=True)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert resumed.best_val_loss == pytest.approx(straight.best_val_loss, rel=1e-6)


def test_a_last_pt_of_the_layout_before_the_kit_resumes_mid_epoch_exactly(data, straight, tmp_path):
    """A member cut mid-epoch by the code before the training kit (its last.pt layout, phase and
    loop state at the top level) finishes under this code exactly as an uninterrupted run does."""
    folder, split = data
    first: list[Progress] = []
    train_member(TINY, split, folder, 5, tmp_path, TrainHooks(progress=first.append, should_stop=lambda: len(first) >= 2))
    old = to_old_chest(tmp_path / LAST_NAME)
    assert old["phase"] == "head" and old["state"]["partial"]["steps"] == 2
    resumed = train_member(TINY, split, folder, 5, tmp_path)
    assert (resumed.resumed_from_epoch, resumed.epochs_run, resumed.cancelled) == (0, 2, False)
    a = torch.load(straight.last_checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.last_checkpoint, weights_only=True)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert resumed.best_val_loss == pytest.approx(straight.best_val_loss, rel=1e-6)


def test_resume_with_another_spec_or_seed_is_refused(data, tmp_path):
    folder, split = data
    train_member(TINY, split, folder, 2, tmp_path, TrainHooks(should_stop=lambda: True))
    with pytest.raises(JobError, match="different spec.*epochs"):
        train_member(dataclasses.replace(TINY, epochs=3), split, folder, 2, tmp_path)
    with pytest.raises(JobError, match="seed 2, not seed 3"):
        train_member(TINY, split, folder, 3, tmp_path)


def test_early_stopping_counts_only_phase_two_epochs_without_improvement(data, tmp_path, monkeypatch):
    import medq.common.families.chest.train as train

    folder, split = data
    real_evaluate, losses = train.evaluate, iter([0.5, 0.6, 0.4, 0.45, 0.41, 0.3, 0.2])

    def scripted(*args, **kwargs):  # real predictions, scripted validation losses
        return next(losses), real_evaluate(*args, **kwargs)[1]

    monkeypatch.setattr(train, "evaluate", scripted)
    spec = dataclasses.replace(TINY, epochs_head=2, epochs=5, patience=2)
    calls: list[Progress] = []
    outcome = train_member(spec, split, folder, 0, tmp_path, TrainHooks(progress=calls.append))
    # epoch 2 (head) is worse but does not count; 3 improves; 4 and 5 do not -> stop after 5 of 7
    assert [p.epoch for p in calls if p.epoch_done] == [1, 2, 3, 4, 5]
    assert outcome.stopped_early and outcome.epochs_run == 5
    assert outcome.best_epoch == 3 and outcome.best_val_loss == pytest.approx(0.4)
    assert torch.load(outcome.best_checkpoint, weights_only=True)["epoch"] == 3
    again = train_member(spec, split, folder, 0, tmp_path)  # a finished member is not trained again
    assert again.stopped_early and again.epochs_run == 5 and again.resumed_from_epoch == 5


def test_nan_loss_fails_the_member_naming_epoch_and_step(data, tmp_path, monkeypatch):
    from medq.common.errors import TrainingDiverged
    import medq.common.families.chest.train as train

    folder, split = data
    monkeypatch.setattr(train, "build_loss", lambda spec: lambda pred, target: (pred - target).sum() * math.nan)
    with pytest.raises(TrainingDiverged, match="epoch 1, step 1"):
        train_member(TINY, split, folder, 0, tmp_path)


# --- evaluation ----------------------------------------------------------------------------


def test_evaluate_ensemble_reports_each_member_and_every_aggregation(data, tmp_path):
    folder, split = data
    members = []
    for seed in (0, 1):
        outcome = train_member(dataclasses.replace(TINY, epochs=0), split, folder, seed, tmp_path / str(seed))
        members.append((seed, outcome.best_checkpoint, outcome.best_val_loss))
    result = evaluate_ensemble(TINY, split, folder, members)
    assert set(result["members"]) == {"0", "1"}
    assert set(result["ensemble"]) == set(AGGREGATIONS)
    for report in [*result["members"].values(), *result["ensemble"].values()]:
        assert report["n_images"] == len(split["test"]) and math.isfinite(report["mean_error_px"])
    # triangle inequality: |(a + b) / 2 - t| <= (|a - t| + |b - t|) / 2 for every landmark
    member_mean = np.mean([r["mean_error_px"] for r in result["members"].values()])
    assert result["ensemble"]["mean"]["mean_error_px"] <= member_mean + 1e-9


def test_predict_returns_original_pixels(data, tmp_path):
    folder, split = data
    from medq.common.families.chest.dataset import split_records

    records = split_records(folder, split, ("test",))["test"]
    model = build_model(TINY).eval()
    pred = predict(model, records, folder / "images", 64, device="cpu")  # exact float32 arithmetic
    with torch.no_grad():
        images = torch.stack([LandmarkDataset(records, preload_images(folder / "images", [r.stem for r in records]),
                                              eval_transform(64))[i][0] for i in range(len(records))])
        normalised = model(images).view(-1, 15, 2).numpy()
    assert pred.shape == (len(records), 15, 2)
    np.testing.assert_allclose(pred, normalised * 299.0, rtol=1e-5)


def test_throughput_benchmarks_measure_positive_rates(data):
    from medq.common.families.chest.bench import bare_loop_throughput, member_throughput

    folder, _ = data
    spec = dataclasses.replace(TINY, epochs_head=0, epochs=1)
    assert 0 < bare_loop_throughput(spec, folder, steps=2, warmup=1) < math.inf
    assert 0 < member_throughput(spec, folder, steps=2, warmup=1) < math.inf
