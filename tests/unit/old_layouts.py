"""The three ``last.pt`` layouts written before the training kit (commit ee75839), rebuilt from a
kit checkpoint key by key as the old code wrote them, so tests can resume what a worker
mid-training during an upgrade leaves on disk."""

from __future__ import annotations

from pathlib import Path

import torch

CHEST_KEYS = {"model", "optimizer", "scheduler", "scaler", "epoch", "phase", "best_val_loss", "best_epoch",
              "bad_epochs", "spec", "seed", "code_version", "rng", "state"}
CHEST_STATE_KEYS = {"epoch", "best_val_loss", "best_val_error_px", "best_epoch", "bad_epochs", "partial",
                    "stopped_early"}
HRNET_KEYS = {"model", "optimizer", "scheduler", "scaler", "spec", "seed", "code_version", "rng", "state"}
HRNET_STATE_KEYS = {"epoch", "best", "bad_epochs", "stopped_early"}
SEG_KEYS = {"model", "optimizer", "scheduler", "scaler", "rng", "state", "lesion", "spec", "seed", "hu",
            "class_weights", "code_version"}
SEG_STATE_KEYS = {"epoch", "best_dice", "best_epoch", "bad_epochs", "stopped_early"}
_RUN = ("model", "optimizer", "scheduler", "scaler", "spec", "seed", "code_version", "rng")


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def to_old_chest(path: Path) -> dict:
    """chest/train.py's save_last: phase and copies of the loop state at the top level."""
    new = _load(path)
    s = new["state"]
    state = {"epoch": new["epoch"], "best_val_loss": s["best_val_loss"], "best_val_error_px": s["best_val_error_px"],
             "best_epoch": s["best_epoch"], "bad_epochs": s["bad_epochs"], "partial": dict(s["partial"]),
             "stopped_early": s["stopped_early"]}
    old = {**{k: new[k] for k in _RUN}, "epoch": new["epoch"], "phase": s["phase"],
           "best_val_loss": s["best_val_loss"], "best_epoch": s["best_epoch"], "bad_epochs": s["bad_epochs"],
           "state": state}
    assert set(old) == CHEST_KEYS and set(state) == CHEST_STATE_KEYS
    torch.save(old, path)
    return old


def to_old_hrnet(path: Path) -> dict:
    """ceph/train.py's last.pt: no top-level epoch, the epoch in state["epoch"]."""
    new = _load(path)
    s = new["state"]
    old = {**{k: new[k] for k in _RUN}, "state": {"epoch": new["epoch"], "best": [tuple(b) for b in s["best"]],
                                                  "bad_epochs": s["bad_epochs"], "stopped_early": s["stopped_early"]}}
    assert set(old) == HRNET_KEYS and set(old["state"]) == HRNET_STATE_KEYS
    torch.save(old, path)
    return old


def to_old_segmenter(path: Path) -> dict:
    """ct_lesions/train.py's last.pt: the normaliser beside the run, the epoch in state["epoch"]."""
    new = _load(path)
    s = new["state"]
    old = {**{k: new[k] for k in _RUN}, "lesion": new["lesion"], "hu": new["hu"],
           "class_weights": new["class_weights"],
           "state": {"epoch": new["epoch"], "best_dice": s["best_dice"], "best_epoch": s["best_epoch"],
                     "bad_epochs": s["bad_epochs"], "stopped_early": s["stopped_early"]}}
    assert set(old) == SEG_KEYS and set(old["state"]) == SEG_STATE_KEYS
    torch.save(old, path)
    return old
