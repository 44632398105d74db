"""Checkpoint files of a landmark member: atomic writes, random states, resume checks.

``last.pt`` holds everything needed to continue a member; ``best.pt`` the model of its best
validation epoch. Both carry the spec (``spec.to_dict()``), the seed and the code version, and
both load with ``torch.load(weights_only=True)`` (no pickled code).
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
from medq.common.specs import EnsembleSpec

log = logging.getLogger(__name__)

LAST_NAME, BEST_NAME = "last.pt", "best.pt"


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


def prepare_workdir(workdir: Path, model: torch.nn.Module) -> None:
    """Before a member trains: its folder exists, a killed attempt's partial files are gone, and
    its file system has room for a checkpoint with optimiser state and a best model (about four
    times the weights), so a full artifact disk fails the member now, not after an epoch."""
    workdir.mkdir(parents=True, exist_ok=True)
    if remove_partial_files(workdir):
        log.info("removed partial checkpoint files a killed attempt left in %s", workdir)
    weights = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    require_space(workdir, 4 * weights + MB, "writing a member's checkpoints")


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


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file cannot be resumed
        raise JobError(f"checkpoint {path} cannot be read: {exc}") from None


def check_resumable(checkpoint: dict[str, Any], spec: EnsembleSpec, seed: int, path: Path) -> None:
    """A checkpoint resumes only the same spec and seed; anything else is a different job."""
    if checkpoint.get("seed") != seed:
        raise JobError(f"{path} belongs to seed {checkpoint.get('seed')}, not seed {seed}")
    saved = checkpoint.get("spec")
    if saved != spec.to_dict():
        differing = sorted(k for k in set(saved or {}) | set(spec.to_dict())
                           if (saved or {}).get(k) != spec.to_dict().get(k))
        raise JobError(f"{path} was written with a different spec (differs in: {', '.join(differing)})")
    if checkpoint.get("code_version") != common.__version__:
        log.warning("resuming a checkpoint of code version %s with %s", checkpoint.get("code_version"),
                    common.__version__)
