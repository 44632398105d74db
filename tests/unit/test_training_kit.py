"""The shared training kit: one AMP step, one epoch loop, one checkpoint format with one resume
check, and the old per-family layouts upgraded on load."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from medq import common
from medq.common.errors import JobError, TrainingDiverged
from medq.common.families.ceph.spec import HRNetSpec
from medq.common.training.checkpoint import (
    load_checkpoint,
    restore,
    resume_check,
    save_checkpoint,
    save_weights,
    set_rng_states,
    upgrade_layout,
)
from medq.common.training.kit import EpochMeter, amp_step, train_one_epoch

SPEC = HRNetSpec(width="w18s", image_size=64, epochs=3)


def _run(lr: float = 0.5):
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0]]))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=False)


# --- the step and the epoch ------------------------------------------------------------------


def test_the_step_refuses_a_nan_or_infinite_loss_naming_epoch_and_step_and_leaves_the_weights():
    model, optimizer, _, scaler = _run()
    with pytest.raises(TrainingDiverged, match="training loss is nan at epoch 3, step 7"):
        amp_step(model.weight.sum() * float("nan"), optimizer, scaler, epoch=3, step=7)
    with pytest.raises(TrainingDiverged, match="training loss is inf at epoch 1, step 1"):
        amp_step(model.weight.sum() * float("inf"), optimizer, scaler, epoch=1, step=1)
    assert torch.equal(model.weight.detach(), torch.ones(1, 2))


def test_the_step_moves_the_weights_and_returns_the_loss():
    model, optimizer, _, scaler = _run()
    assert amp_step((model.weight ** 2).sum(), optimizer, scaler, epoch=1, step=1) == 2.0
    assert torch.allclose(model.weight.detach(), torch.zeros(1, 2))  # 1 - 0.5 * 2


def test_the_step_clips_the_gradient_norm_when_asked():
    model, optimizer, _, scaler = _run(lr=1.0)
    amp_step((model.weight ** 2).sum(), optimizer, scaler, epoch=1, step=1, grad_clip=0.5)
    # gradient (2, 2) has norm 2.83; clipped to norm 0.5 it is (0.354, 0.354)
    assert torch.allclose(model.weight.detach(), torch.full((1, 2), 1 - 0.5 / 2 ** 0.5), atol=1e-6)


def test_an_epoch_counts_reports_and_stops_when_asked():
    model, optimizer, scheduler, scaler = _run(lr=0.01)
    batches = [torch.ones(4, 2), torch.ones(3, 2), torch.ones(2, 2)]
    reports, meter = [], EpochMeter.from_dict({"steps": 1, "images": 5, "loss_sum": 10.0, "seconds": 1.0})
    cancelled = train_one_epoch(model, batches, lambda b: (model(b).mean(), len(b)), optimizer, scaler, epoch=2,
                                meter=meter, should_stop=lambda: len(reports) == 2,
                                report=lambda m: reports.append(m.steps), after_step=scheduler.step)
    assert cancelled and reports == [2, 3]  # a resumed epoch's counts go on from where they were
    assert (meter.steps, meter.images, scheduler.last_epoch) == (3, 12, 2)
    assert EpochMeter.from_dict(meter.to_dict()) == meter

    def diverging(batch):
        return model(batch).mean() * float("nan"), len(batch)

    with pytest.raises(TrainingDiverged, match="epoch 4, step 1"):
        train_one_epoch(model, batches, diverging, optimizer, scaler, epoch=4, meter=EpochMeter(),
                        should_stop=lambda: False, report=lambda m: None)


# --- the checkpoint --------------------------------------------------------------------------


def test_a_checkpoint_round_trip_restores_the_run_and_the_random_streams(tmp_path):
    model, optimizer, scheduler, scaler = _run()
    for _ in range(2):
        amp_step((model.weight ** 2).sum(), optimizer, scaler, epoch=1, step=1)
        scheduler.step()
    save_checkpoint(tmp_path / "last.pt", model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                    epoch=2, spec=SPEC, seed=4, state={"best": [(1.5, 2)]}, extra={"hu": {"mean": -500.0}})
    expected = (random.random(), np.random.rand(), torch.rand(1))

    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert set(checkpoint) == {"kind", "job_kind", "model", "optimizer", "scheduler", "scaler", "epoch", "spec",
                               "seed", "code_version", "rng", "state", "hu"}
    assert (checkpoint["kind"], checkpoint["job_kind"], checkpoint["epoch"], checkpoint["seed"]) == ("last", "hrnet", 2, 4)
    assert checkpoint["spec"] == SPEC.to_dict() and checkpoint["code_version"] == common.__version__
    assert checkpoint["state"] == {"best": [(1.5, 2)]} and checkpoint["hu"] == {"mean": -500.0}
    resume_check(checkpoint, SPEC, 4, tmp_path / "last.pt")

    fresh, fresh_optimizer, fresh_scheduler, fresh_scaler = _run()
    restore(checkpoint, fresh, fresh_optimizer, fresh_scheduler, fresh_scaler)
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_scheduler.last_epoch == 2 and fresh_optimizer.param_groups[0]["lr"] == pytest.approx(0.5 / 3)
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["momentum_buffer"],
                       optimizer.state_dict()["state"][0]["momentum_buffer"])
    set_rng_states(checkpoint["rng"])
    again = (random.random(), np.random.rand(), torch.rand(1))
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


def test_resume_check_names_the_spec_fields_or_the_seed_that_differ(tmp_path):
    model, optimizer, scheduler, scaler = _run()
    path = tmp_path / "last.pt"
    save_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, epoch=1, spec=SPEC,
                    seed=2, state={})
    checkpoint = load_checkpoint(path)
    with pytest.raises(JobError, match=r"different spec \(differs in: epochs, lr\); refusing to resume"):
        resume_check(checkpoint, dataclasses.replace(SPEC, epochs=4, lr=2e-3), 2, path)
    with pytest.raises(JobError, match="belongs to seed 2, not seed 3"):
        resume_check(checkpoint, SPEC, 3, path)
    save_weights(tmp_path / "best.pt", model, SPEC, 1, seed=2, val_loss=0.25)
    weights = load_checkpoint(tmp_path / "best.pt")
    assert weights["kind"] == "weights" and weights["val_loss"] == 0.25 and weights["epoch"] == 1
    with pytest.raises(JobError, match="holds weights only"):
        resume_check(weights, SPEC, 2, tmp_path / "best.pt")


def test_an_unreadable_checkpoint_is_a_job_error_naming_the_file(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(JobError, match=f"checkpoint {tmp_path / 'last.pt'} cannot be read"):
        load_checkpoint(tmp_path / "last.pt")


# --- the layouts before the kit --------------------------------------------------------------


def test_the_chest_layout_moves_its_phase_into_the_state():
    old = {"model": {}, "optimizer": {}, "scheduler": {}, "scaler": {}, "epoch": 1, "phase": "head",
           "best_val_loss": 0.5, "best_epoch": 1, "bad_epochs": 0, "spec": {}, "seed": 0, "code_version": "0.1.0",
           "rng": {}, "state": {"epoch": 1, "best_val_loss": 0.5, "best_val_error_px": 3.0, "best_epoch": 1,
                                "bad_epochs": 0, "partial": {}, "stopped_early": False}}
    new = upgrade_layout(old)
    assert new["kind"] == "last" and new["epoch"] == 1 and "phase" not in new and "best_epoch" not in new
    assert new["state"] == {"phase": "head", "best_val_loss": 0.5, "best_val_error_px": 3.0, "best_epoch": 1,
                            "bad_epochs": 0, "partial": {}, "stopped_early": False}
    assert old["phase"] == "head"  # the loaded dict is not changed in place


@pytest.mark.parametrize("state", [
    {"epoch": 3, "best": [(1.2, 3)], "bad_epochs": 0, "stopped_early": False},  # HRNet
    {"epoch": 3, "best_dice": 0.4, "best_epoch": 3, "bad_epochs": 0, "stopped_early": False},  # segmenter
])
def test_the_hrnet_and_segmenter_layouts_get_their_epoch_at_the_top(state):
    new = upgrade_layout({"model": {}, "optimizer": {}, "scheduler": {}, "scaler": {}, "spec": {}, "seed": 0,
                          "rng": {}, "state": state})
    assert (new["kind"], new["epoch"]) == ("last", 3)
    assert new["state"] == {k: v for k, v in state.items() if k != "epoch"}


def test_old_weights_files_load_as_weights():
    old = {"model": {}, "spec": {}, "epoch": 2, "val_mre": 1.1, "code_version": "0.1.0"}
    assert upgrade_layout(old) == {**old, "kind": "weights"}


def test_the_kit_imports_no_family_and_no_celery():
    code = ("import sys, medq.common.training.kit, medq.common.training.checkpoint, medq.common.landmark_pairs; "
            "print(sorted(m for m in sys.modules if m.startswith('medq.common.families') or m.startswith('celery')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
