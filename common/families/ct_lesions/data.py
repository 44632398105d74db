"""CT segmentation datasets in the MedSeg layout, read and checked whole before anything is queued.

A folder holds one or more sets ``images_<name>.npy`` + ``masks_<name>.npy`` (+ optional
``volumes_<name>.npy``):

- images: (N, H, W, 1) or (N, H, W), float, Hounsfield units;
- masks: (N, H, W, 4) one-hot in MedSeg's channel order (ground glass, consolidation, other
  lung, background), or (N, H, W) class indices 0..3;
- volumes: (N,) integers, the volume (patient scan) each slice comes from. With them the
  validation and test splits take whole volumes (no slice of a scan on both sides); without
  them the split is by slice, and the results say so.

Every problem is collected first (streamed through memory-mapped arrays, a block of slices at a
time) and raised as one ``DataError`` naming the file and the slice index.

Torch-free: the CLI checks a dataset with it before enqueueing. ``layouts.py`` picks this reader
or another layout's (NIfTI pairs) by what a folder holds; every layout ends in ``SegSource``
arrays that ``SliceReader`` reads the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from medq.common.datafiles import not_regular
from medq.common.errors import DataError
from medq.common.families.ct_lesions.schema import N_CLASSES
from medq.common.specs import SplitSpec

BLOCK = 16  # slices checked at a time
MAX_LISTED = 5  # bad slice indices named per problem


@dataclass(frozen=True)
class SegSource:
    """One set of slices as the trainer reads them: ``images`` (N, H, W[, 1]) HU and ``masks``
    (N, H, W, 4) one-hot or (N, H, W) class indices, both .npy files memory-mapped on use. A
    MedSeg pair is read in place; another layout (``kind``, see ``layouts.py``) converts its files
    into such arrays once and keeps in ``origin`` what it needs to convert them again."""

    name: str
    images: Path
    masks: Path
    volumes: Path | None
    n: int
    height: int
    width: int
    one_hot: bool  # masks (N, H, W, 4); else (N, H, W) indices
    kind: str = "medseg"  # the layout it was read from (layouts.LAYOUTS)
    origin: dict | None = field(default=None, compare=False)  # the layout's own record (JSON)

    def to_dict(self) -> dict:
        return {"name": self.name, "images": str(self.images), "masks": str(self.masks),
                "volumes": None if self.volumes is None else str(self.volumes), "n": self.n,
                "height": self.height, "width": self.width, "one_hot": self.one_hot, "kind": self.kind,
                "origin": self.origin}

    @classmethod
    def from_dict(cls, data: dict) -> "SegSource":
        return cls(data["name"], Path(data["images"]), Path(data["masks"]),
                   None if data["volumes"] is None else Path(data["volumes"]), data["n"], data["height"],
                   data["width"], data["one_hot"], data.get("kind", "medseg"), data.get("origin"))


@dataclass(frozen=True)
class SegData:
    root: Path
    sources: tuple[SegSource, ...]
    volume_ids: tuple[str, ...] | None  # per global slice index, "<set>:<id>"; None: no volumes given
    layout: str = "medseg"  # the layout the folder holds (layouts.LAYOUTS)

    @property
    def n_slices(self) -> int:
        return sum(s.n for s in self.sources)

    def locate(self, index: int) -> tuple[SegSource, int]:
        """(source, index within it) of a global slice index."""
        for source in self.sources:
            if index < source.n:
                return source, index
            index -= source.n
        raise IndexError(index)


def _listed(indices: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:MAX_LISTED])
    return shown + (f" and {len(indices) - MAX_LISTED} more" if len(indices) > MAX_LISTED else "")


def _load(path: Path, problems: list[str]) -> np.ndarray | None:
    problem = not_regular(path)
    if problem:  # a pipe named images_x.npy would block np.load forever
        problems.append(f"{path}: {problem}")
        return None
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: not a readable .npy array ({exc})")
        return None


def _check_images(path: Path, images: np.ndarray, problems: list[str]) -> tuple[int, int, int] | None:
    shape = images.shape
    if not (images.ndim == 3 or (images.ndim == 4 and shape[3] == 1)):
        problems.append(f"{path}: shape {shape}; expected (N, H, W, 1) or (N, H, W) HU slices")
        return None
    if not np.issubdtype(images.dtype, np.number):
        problems.append(f"{path}: dtype {images.dtype}; expected numbers (HU)")
        return None
    bad = []
    for start in range(0, shape[0], BLOCK):
        block = np.asarray(images[start:start + BLOCK], dtype=np.float32).reshape(-1, shape[1] * shape[2])
        bad.extend(start + np.flatnonzero(~np.isfinite(block).all(axis=1)))
    if bad:
        problems.append(f"{path}: NaN or infinite values in slice(s) {_listed(np.array(bad))}")
    return shape[0], shape[1], shape[2]


def _check_masks(path: Path, masks: np.ndarray, problems: list[str]) -> bool | None:
    """True for one-hot masks, False for index masks, None when unusable."""
    shape = masks.shape
    one_hot = masks.ndim == 4 and shape[3] == N_CLASSES
    if not (one_hot or masks.ndim == 3):
        problems.append(f"{path}: shape {shape}; expected (N, H, W, {N_CLASSES}) one-hot or (N, H, W) class "
                        f"indices")
        return None
    out_of_range, not_one = [], []
    for start in range(0, shape[0], BLOCK):
        block = np.asarray(masks[start:start + BLOCK])
        flat = block.reshape(block.shape[0], -1)
        if one_hot:
            values_ok = ((flat == 0) | (flat == 1)).all(axis=1)
            sums_ok = (block.sum(axis=-1, dtype=np.float64) == 1).reshape(block.shape[0], -1).all(axis=1)
            out_of_range.extend(start + np.flatnonzero(~values_ok))
            not_one.extend(start + np.flatnonzero(values_ok & ~sums_ok))
        else:
            ok = ((flat >= 0) & (flat < N_CLASSES) & (flat == np.round(flat))).all(axis=1)
            out_of_range.extend(start + np.flatnonzero(~ok))
    if out_of_range:
        what = "values other than 0 and 1" if one_hot else f"values outside the classes 0..{N_CLASSES - 1}"
        problems.append(f"{path}: {what} in slice(s) {_listed(np.array(out_of_range))}")
    if not_one:
        problems.append(f"{path}: one-hot channels do not sum to 1 at every pixel in slice(s) "
                        f"{_listed(np.array(not_one))}")
    return one_hot


def check_one_size(root: Path, sources: Sequence[SegSource], what: str) -> None:
    """DataError unless every source has slices of one size (evaluation batches them)."""
    by_size: dict[tuple[int, int], list[str]] = {}
    for s in sources:
        by_size.setdefault((s.height, s.width), []).append(s.name)
    if len(by_size) > 1:
        sizes = "; ".join(f"{h}x{w}: {_names(names)}"
                          for (h, w), names in sorted(by_size.items(), key=lambda kv: -len(kv[1])))
        raise DataError(f"{root}: {what} of different slice sizes ({sizes}); resize them to one size first")


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def read_medseg(root: Path) -> SegData:
    """Every images/masks pair under ``root``, checked; raises one DataError listing all problems."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected images_*.npy and masks_*.npy, the MedSeg layout)")
    image_files = sorted(root.glob("images_*.npy"))
    if not image_files:
        raise DataError(f"{root}: no images_*.npy (expected images_<name>.npy with masks_<name>.npy)")
    problems: list[str] = []
    sources, volume_ids = [], []
    for image_path in image_files:
        name = image_path.stem.removeprefix("images_")
        mask_path, volume_path = root / f"masks_{name}.npy", root / f"volumes_{name}.npy"
        if not mask_path.is_file():
            problems.append(f"{image_path}: no matching {mask_path.name}")
            continue
        images, masks = _load(image_path, problems), _load(mask_path, problems)
        if images is None or masks is None:
            continue
        dims = _check_images(image_path, images, problems)
        one_hot = _check_masks(mask_path, masks, problems)
        if dims is None or one_hot is None:
            continue
        if masks.shape[0] != dims[0]:
            problems.append(f"{mask_path}: {masks.shape[0]} masks for {dims[0]} images in {image_path.name}")
            continue
        if tuple(masks.shape[1:3]) != dims[1:]:
            problems.append(f"{mask_path}: masks are {masks.shape[1]}x{masks.shape[2]} but the images in "
                            f"{image_path.name} are {dims[1]}x{dims[2]}")
            continue
        volumes = None
        if volume_path.is_file():
            ids = _load(volume_path, problems)
            if ids is None:
                continue
            if ids.shape != (dims[0],) or not np.issubdtype(ids.dtype, np.integer):
                problems.append(f"{volume_path}: shape {ids.shape}, dtype {ids.dtype}; expected ({dims[0]},) "
                                f"integers, one volume id per slice")
                continue
            volumes = volume_path
            volume_ids.extend(f"{name}:{int(v)}" for v in ids)
        sources.append(SegSource(name, image_path.resolve(), mask_path.resolve(),
                                 None if volumes is None else volumes.resolve(), *dims, one_hot))
    orphans = [p for p in sorted(root.glob("masks_*.npy"))
               if not (root / f"images_{p.stem.removeprefix('masks_')}.npy").is_file()]
    problems.extend(f"{p}: no matching images_{p.stem.removeprefix('masks_')}.npy" for p in orphans)
    if problems:
        raise DataError(problems)
    check_one_size(root, sources, "sets")
    by_volume = all(s.volumes is not None for s in sources)
    return SegData(root.resolve(), tuple(sources), tuple(volume_ids) if by_volume else None)


def split_slices(data: SegData, split: SplitSpec) -> tuple[dict[str, list[int]], str]:
    """({train, val, test: global slice indices}, "volume" | "slice"): whole volumes in each part
    when volume ids are given, single slices otherwise; a seeded shuffle cut by the fractions."""
    if data.volume_ids is not None:
        groups: dict[str, list[int]] = {}
        for index, volume in enumerate(data.volume_ids):
            groups.setdefault(volume, []).append(index)
        if len(groups) >= 3:
            keys = sorted(groups)
            order = [keys[k] for k in np.random.default_rng(split.seed).permutation(len(keys))]
            n_val, n_test = max(1, round(len(keys) * split.val)), max(1, round(len(keys) * split.test))
            parts = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
            if parts["train"]:
                return {part: sorted(i for key in ks for i in groups[key]) for part, ks in parts.items()}, "volume"
        # fewer than three volumes cannot be split by volume; fall through to slices
    n = data.n_slices
    if n < 3:
        raise DataError(f"{data.root}: {n} slice(s); need at least 3 for train/val/test")
    order = np.random.default_rng(split.seed).permutation(n)
    n_val, n_test = max(1, round(n * split.val)), max(1, round(n * split.test))
    return {"train": sorted(int(i) for i in order[n_val + n_test:]), "val": sorted(int(i) for i in order[:n_val]),
            "test": sorted(int(i) for i in order[n_val:n_val + n_test])}, "slice"


class SliceReader:
    """Random access to global slice indices: (HU (H, W) float32, class indices (H, W) uint8).
    Each set's arrays are memory-mapped on first use and kept; a copy sent to another process
    (a DataLoader worker) maps its own."""

    def __init__(self, sources: Sequence[SegSource]):
        self.data = SegData(Path("."), tuple(sources), None)
        self._opened: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self) -> dict:
        return {"data": self.data, "_opened": {}}

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        source, local = self.data.locate(index)
        if source.name not in self._opened:
            self._opened[source.name] = (np.load(source.images, mmap_mode="r"), np.load(source.masks, mmap_mode="r"))
        images, masks = self._opened[source.name]
        hu = np.asarray(images[local], dtype=np.float32).reshape(source.height, source.width)
        mask = np.asarray(masks[local])
        return hu, (mask.argmax(axis=-1) if source.one_hot else mask).astype(np.uint8)


def slice_arrays(sources: Sequence[SegSource], indices: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(HU (H, W) float32, class indices (H, W) uint8) of each global slice index, in order."""
    read = SliceReader(sources)
    return (read(index) for index in indices)
