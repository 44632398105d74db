"""The dataset layouts a segmentation job trains from, in one registry, chosen by what the
folder holds (as nnU-Net chooses its image readers):

- ``medseg``: MedSeg arrays, ``images_<name>.npy`` with ``masks_<name>.npy`` (``data.py``);
- ``nifti``: NIfTI pairs, ``imagesTr/<case>[_0000].nii[.gz]`` with ``labelsTr/<case>.nii[.gz]``
  (``nifti_pairs.py``), converted once into a cache folder of .npy slices.

Every source of a plan carries its layout's ``kind``; ``ready_sources`` turns a plan's sources
back into ``SegSource`` objects and lets their layout make sure the arrays are there. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from medq.common.errors import DataError, unknown_name
from medq.common.families.ct_lesions.data import SegData, SegSource, read_medseg
from medq.common.families.ct_lesions.nifti_pairs import ensure_cached, holds_nifti_pairs, read_nifti_pairs

CACHE_FOLDER = "ct-nifti-slices"  # under the artifact root: every worker sees it


@dataclass(frozen=True)
class Layout:
    kind: str
    what: str  # for people, in the error of a folder holding no layout
    holds: Callable[[Path], bool]  # whether a folder holds files of this layout
    read: Callable[[Path, Path], SegData]  # (folder, cache folder) -> the checked dataset
    ensure: Callable[[SegSource], None] = lambda source: None  # on a worker, before its arrays are read


def _holds_medseg(root: Path) -> bool:
    return any(root.glob("images_*.npy")) or any(root.glob("masks_*.npy"))


LAYOUTS = {layout.kind: layout for layout in (
    Layout("medseg", "MedSeg arrays (images_<name>.npy with masks_<name>.npy)", _holds_medseg,
           lambda root, cache_dir: read_medseg(root)),
    Layout("nifti", "NIfTI pairs (imagesTr/<case>_0000.nii.gz or <case>.nii.gz with labelsTr/<case>.nii.gz, "
                    "optionally dataset.json)", holds_nifti_pairs, read_nifti_pairs, ensure_cached),
)}


def default_cache_dir() -> Path:
    """Where converted cases go: under the artifact root, which the workers share with the submitter."""
    from medq.common.settings import load_settings

    return load_settings().artifacts / CACHE_FOLDER


def read_seg_dataset(root: Path, cache_dir: Path | None = None) -> SegData:
    """The dataset in ``root``, read and checked by the one layout it holds; DataError when it
    holds none or more than one. ``cache_dir``: for a layout that converts its files
    (default: ``default_cache_dir()``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected {_every_layout()})")
    held = [layout for layout in LAYOUTS.values() if layout.holds(root)]
    if not held:
        raise DataError(f"{root}: no segmentation dataset here; expected {_every_layout()}")
    if len(held) > 1:
        raise DataError(f"{root}: holds more than one layout ({', '.join(l.what for l in held)}); keep one per folder")
    return held[0].read(root, Path(cache_dir) if cache_dir is not None else default_cache_dir())


def _every_layout() -> str:
    return " or ".join(layout.what for layout in LAYOUTS.values())


def ready_sources(records: Iterable[dict]) -> list[SegSource]:
    """A plan's sources, each made ready by its layout (a NIfTI case converted again when its
    cache was cleaned)."""
    sources = [SegSource.from_dict(record) for record in records]
    for source in sources:
        if source.kind not in LAYOUTS:
            raise unknown_name("dataset layout", source.kind, LAYOUTS)
        LAYOUTS[source.kind].ensure(source)
    return sources
