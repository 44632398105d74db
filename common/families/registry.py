"""The model families, by job kind: an explicit list (as nnU-Net lists its readers and timm
registers its models), plus any plug-in families named by ``MEDQ_FAMILIES``.

``family(kind)`` is how the queue, the CLI and bulk inference reach a family; an unknown kind
lists the valid ones. A new family is a folder under ``common/families/`` and one line in
``BUILTIN`` below, or, outside medq's tree, ``MEDQ_FAMILIES=package.module:FAMILY`` (comma
separated) in the environment of the submitter and of every worker.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from medq.common.errors import SpecError
from medq.common.families.base import Family
from medq.common.registry import Registry

BUILTIN = (
    "medq.common.families.chest.family:FAMILY",  # chest-landmark ResNet ensembles   (kind "ensemble")
    "medq.common.families.ceph.family:FAMILY",  # cephalometric HRNet heatmaps       (kind "hrnet")
    "medq.common.families.ct_lesions.family:FAMILY",  # CT lesion UNet++ segmentation (kind "segment")
)

_FAMILIES: Registry[Family] = Registry("job kind")
_loaded: set[str] = set()


def register(family: Family) -> Family:
    """Add a family under its kind (a kind registered twice is an error)."""
    _FAMILIES.register(family.kind)(family)
    return family


def _load(reference: str) -> None:
    if reference in _loaded:
        return
    module, _, attribute = reference.partition(":")
    try:
        found = getattr(importlib.import_module(module), attribute or "FAMILY")
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"model family {reference!r} (MEDQ_FAMILIES) cannot be loaded: {exc}") from None
    _loaded.add(reference)
    if not isinstance(found, Family):
        raise SpecError(f"model family {reference!r} is a {type(found).__name__}, not a medq Family")
    if found.kind not in _FAMILIES:
        register(found)


def _ensure_loaded() -> None:
    from medq.common.settings import load_settings

    for reference in (*BUILTIN, *(r.strip() for r in load_settings().families.split(",") if r.strip())):
        _load(reference)


def family(kind: str) -> Family:
    """The family of a job kind; SpecError listing the valid kinds for any other word."""
    _ensure_loaded()
    return _FAMILIES.get(kind)


def kinds() -> list[str]:
    _ensure_loaded()
    return _FAMILIES.names()


def families() -> list[Family]:
    return [family(kind) for kind in kinds()]


def is_training_kind(kind: str) -> bool:
    """Whether jobs of this kind train members (every family's kind), as opposed to the
    inference and other job kinds."""
    _ensure_loaded()
    return kind in _FAMILIES


def family_of_spec(spec: dict[str, Any], where: str = "checkpoint") -> Family:
    """The one family whose spec type takes every field of this spec dict (specs refuse unknown
    fields), for checkpoints written before they recorded their kind."""
    fitting = []
    for candidate in families():
        try:
            candidate.spec_from_dict(spec)
        except Exception:  # SpecError, or a TypeError of a field of the wrong shape: not this family
            continue
        fitting.append(candidate)
    if len(fitting) != 1:
        raise SpecError(f"{where}: its spec fits {len(fitting)} model families ({', '.join(f.kind for f in fitting)}) "
                        f"where one was expected")
    return fitting[0]


def family_of_checkpoint(path: Path) -> Family:
    """The family of a checkpoint file, read without torch and without running its pickle."""
    from medq.common.checkpoint_meta import checkpoint_kind, checkpoint_spec

    kind = checkpoint_kind(path)
    return family(kind) if kind else family_of_spec(checkpoint_spec(path), str(path))
