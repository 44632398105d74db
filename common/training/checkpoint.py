"""One checkpoint format for every family: atomic writes, random states, one resume check.

``last.pt`` (kind "last") holds everything needed to continue a run::

    {kind, model, optimizer, scheduler, scaler, epoch, spec, seed, code_version, rng, state, **extra}

``epoch`` is the last completed epoch, ``spec`` the job spec's ``to_dict()``, ``rng`` the
Python, numpy, torch and CUDA random states, ``state`` the family's own loop state (best
epochs, early-stopping count, a cut epoch's counts) and ``extra`` what the family needs before
it can build its model (the CT normaliser's statistics, say). Weights files (kind "weights":
``best.pt``, ``best-NNNN.pt``, ``init.pt``) hold {kind, model, spec, epoch, code_version} and
the family's fields. Every file loads with ``torch.load(weights_only=True)`` (no pickled code).

Files written before this format (one layout per family) still load and resume: ``load_checkpoint``
turns them into this one (``upgrade_layout``).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medq import common
from medq.common.atomic_files import MB, remove_partial_files, require_space, write_atomic
from medq.common.errors import JobError

log = logging.getLogger(__name__)

LAST_NAME, BEST_NAME, INIT_NAME = "last.pt", "best.pt", "init.pt"
LAST, WEIGHTS = "last", "weights"  # the two kinds of file


# --- writing -------------------------------------------------------------------------------


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """torch.save to ``path.tmp``, flushed to disk, then renamed over ``path``; the free space it
    needs is checked first, and a full disk is a DiskFull naming the file system."""
    write_atomic(path, lambda handle: torch.save(obj, handle), needed=checkpoint_bytes(obj), sync=True)


def checkpoint_bytes(obj: Any) -> int:
    """About what ``torch.save(obj)`` writes: its tensors' bytes, plus a megabyte for the rest."""
    def tensors(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(tensors(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(tensors(v) for v in value)
        return 0
    return tensors(obj) + MB


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer, scheduler, scaler, epoch: int, spec,
                    seed: int, state: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Write the resumable ``last.pt`` of a run (atomically), with the random states of now."""
    save_atomic({
        "kind": LAST, "job_kind": getattr(spec, "kind", None), "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
        "spec": spec.to_dict(), "seed": seed, "code_version": common.__version__, "rng": rng_states(),
        "state": dict(state), **(extra or {}),
    }, path)


def save_weights(path: Path, model: torch.nn.Module, spec, epoch: int, **fields: Any) -> None:
    """Write a weights file (best, best-k or initial weights) with the family's ``fields``."""
    save_atomic({"kind": WEIGHTS, "job_kind": getattr(spec, "kind", None), "model": model.state_dict(),
                 "spec": spec.to_dict(), "epoch": epoch, "code_version": common.__version__, **fields}, path)


def prepare_workdir(workdir: Path, model: torch.nn.Module) -> None:
    """Before a member trains: its folder exists, a killed attempt's partial files are gone, and
    its file system has room for a checkpoint with optimiser state and a best model (about four
    times the weights), so a full artifact disk fails the member now, not after an epoch."""
    workdir.mkdir(parents=True, exist_ok=True)
    if remove_partial_files(workdir):
        log.info("removed partial checkpoint files a killed attempt left in %s", workdir)
    weights = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    require_space(workdir, 4 * weights + MB, "writing a member's checkpoints")


# --- random states -------------------------------------------------------------------------


def rng_states() -> dict[str, Any]:
    """Python, numpy, torch and CUDA random states in a form ``torch.load(weights_only=True)`` reads."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


# --- reading and resuming ------------------------------------------------------------------


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path`` in this module's format (an older layout is upgraded);
    JobError when the file cannot be read."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file cannot be resumed
        raise JobError(f"checkpoint {path} cannot be read: {exc}") from None
    if not isinstance(checkpoint, dict):
        raise JobError(f"checkpoint {path} cannot be read: it holds a {type(checkpoint).__name__}, not a dict")
    return upgrade_layout(checkpoint)


# Top-level keys of the chest's old last.pt that repeated its loop state.
_OLD_CHEST_COPIES = ("best_val_loss", "best_epoch", "bad_epochs")


def upgrade_layout(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of the layouts written before this format, in this format (one of this
    format comes back unchanged). The old ``last.pt`` layouts: the chest's kept ``phase`` and
    copies of its loop state at the top level; the HRNet's and the segmenter's kept the epoch
    only in ``state["epoch"]``. None had a ``kind``."""
    if "kind" in checkpoint:
        return checkpoint
    checkpoint = dict(checkpoint)
    if "optimizer" not in checkpoint:
        checkpoint["kind"] = WEIGHTS
        return checkpoint
    state = dict(checkpoint.get("state") or {})
    epoch = state.pop("epoch", None)
    checkpoint.setdefault("epoch", epoch if epoch is not None else 0)
    if "phase" in checkpoint:
        state.setdefault("phase", checkpoint.pop("phase"))
        for key in _OLD_CHEST_COPIES:
            checkpoint.pop(key, None)
    checkpoint.update(kind=LAST, state=state)
    return checkpoint


def resumable(workdir: Path, spec, seed: int) -> dict[str, Any] | None:
    """The run's ``last.pt`` in ``workdir`` (made if missing), checked to belong to this spec
    and seed (``resume_check``), or None for a run that starts afresh."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LAST_NAME
    if not path.is_file():
        return None
    checkpoint = load_checkpoint(path)
    resume_check(checkpoint, spec, seed, path)
    return checkpoint


def resume_check(checkpoint: dict[str, Any], spec, seed: int, path: Path) -> None:
    """A checkpoint resumes only a run of the same spec and seed; anything else is another job.
    JobError naming the seeds or the spec fields that differ."""
    if checkpoint.get("kind") != LAST:
        raise JobError(f"{path} holds weights only (kind {checkpoint.get('kind')!r}); it cannot resume a run")
    if checkpoint.get("seed") != seed:
        raise JobError(f"{path} belongs to seed {checkpoint.get('seed')}, not seed {seed}; refusing to resume from it")
    saved, wanted = checkpoint.get("spec") or {}, spec.to_dict()
    if saved != wanted:
        differing = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        raise JobError(f"{path} was written with a different spec (differs in: {', '.join(differing)}); "
                       f"refusing to resume from it")
    if checkpoint.get("code_version") != common.__version__:
        log.warning("resuming a checkpoint of code version %s with %s", checkpoint.get("code_version"),
                    common.__version__)


def restore(checkpoint: dict[str, Any], model: torch.nn.Module, optimizer=None, scheduler=None, scaler=None) -> None:
    """Load the checkpoint's weights into ``model`` and, where given, the optimiser, schedule
    and scaler states (a scaler saved without AMP, an empty dict, leaves the scaler as it is).
    The random states are the caller's to set (``set_rng_states``), after the last set-up step
    that draws random numbers."""
    model.load_state_dict(checkpoint["model"])
    if optimizer is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    if scaler is not None and checkpoint.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(checkpoint["scaler"])
