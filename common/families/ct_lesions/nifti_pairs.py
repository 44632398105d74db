"""CT segmentation datasets as NIfTI image/label pairs, the layout of nnU-Net and the Medical
Segmentation Decathlon, checked whole and converted once into memory-mappable slices.

A folder holds ``imagesTr/<case>.nii[.gz]`` (nnU-Net v2 names them ``<case>_0000.nii.gz``, its
first input channel; both are accepted) and ``labelsTr/<case>.nii[.gz]`` integer label volumes
on the same voxels, and optionally ``dataset.json`` naming the label values (``labelmap.py``;
without it 0 background, 1 ground glass, 2 consolidation, 3 other lung). Hidden files (``.*``,
such as the ``._<case>.nii.gz`` macOS leaves in the Decathlon's archives) are passed over.

Each case is one volume, cut into the canonical axial slices bulk inference reads from a NIfTI
file (``nifti.py``, the same functions), so a model trained here and run on NIfTI studies sees
one orientation. Every case is read once, one at a time, and every problem is collected (the
file, and the slice along the file's own voxel axis where one applies) into one DataError.

A ``.nii.gz`` cannot be sliced without decompressing it, and the trainer draws slices at random
across all cases from several DataLoader worker processes; so a valid case is written once,
while it is checked, as two .npy arrays in canonical slice order (HU, as int16 when lossless, and
medq's class indices) in a cache folder named by a hash of the two files' paths, sizes and
modification times and of the label mapping. The sources point at those arrays: the trainer's
memory-mapped reader takes them as it takes MedSeg's (the page cache shared by the workers, a
source pickled as its paths), a second submission of unchanged files reuses them, and a worker
that finds its cache gone writes it again from the files (``ensure_cached``). Torch-free.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medq.common.atomic_files import NO_SPACE, no_space, require_space
from medq.common.datafiles import not_regular
from medq.common.errors import DataError
from medq.common.families.ct_lesions.data import SegData, SegSource, check_one_size
from medq.common.families.ct_lesions.labelmap import DEFAULT_LABELS, describe_labels, listed, map_labels, read_label_map
from medq.common.families.ct_lesions.nifti import (
    NIFTI_SUFFIXES, canonical_slices, is_nifti, nifti_grid, nonfinite_slices, open_nifti, stored_slice_axis,
)
from medq.common.inference.types import StudyError

KIND = "nifti"
IMAGES, LABELS, DATASET_JSON = "imagesTr", "labelsTr", "dataset.json"
CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")  # nnU-Net v2: <case>_0000
AFFINE_TOLERANCE = 1e-3  # mm for the origin, per unit for the direction and spacing columns
CACHE_FORMAT = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    case: str
    image: Path
    label: Path


def holds_nifti_pairs(root: Path) -> bool:
    return (root / IMAGES).is_dir() or (root / LABELS).is_dir()


def _stem(path: Path) -> str:
    return next(path.name[:-len(s)] for s in sorted(NIFTI_SUFFIXES, key=len, reverse=True)
                if path.name.lower().endswith(s))


def _nifti_files(folder: Path, problems: list[str]) -> dict[str, Path]:
    """stem -> file of each NIfTI file in ``folder``; anything else there is a problem."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        problem = not_regular(path) or (None if is_nifti(path.name) else "not a NIfTI file (.nii or .nii.gz)")
        if problem:
            problems.append(f"{path}: {problem}")
        elif _stem(path) in found:
            problems.append(f"{path}: the same case as {found[_stem(path)].name}; keep one")
        else:
            found[_stem(path)] = path
    return found


def find_pairs(root: Path, problems: list[str]) -> list[Pair]:
    """Each case with its image and label file, by name; a case missing either is a problem."""
    folders = {name: root / name for name in (IMAGES, LABELS)}
    missing = [name for name, folder in folders.items() if not folder.is_dir()]
    if missing:
        problems.append(f"{root}: no {missing[0]} folder (expected {IMAGES}/<case>_0000.nii.gz with "
                        f"{LABELS}/<case>.nii.gz)")
        return []
    images, labels = _nifti_files(folders[IMAGES], problems), _nifti_files(folders[LABELS], problems)
    by_case: dict[str, Path] = {}
    for stem, path in images.items():
        match = None if stem in labels else CHANNEL.match(stem)
        case = match["case"] if match else stem
        if match and match["channel"] != "0000":
            problems.append(f"{path}: input channel {match['channel']} of case {case!r}; medq trains on one CT "
                            f"channel (<case>_0000 or <case>)")
        elif case in by_case:
            problems.append(f"{path}: a second image of case {case!r} (beside {by_case[case].name}); keep one")
        else:
            by_case[case] = path
    pairs = []
    for case, image in sorted(by_case.items()):
        if case in labels:
            pairs.append(Pair(case, image, labels[case]))
        else:
            problems.append(f"{image}: case {case!r} has no label ({LABELS}/{case}.nii.gz)")
    problems.extend(f"{label}: case {case!r} has no image ({IMAGES}/{case}_0000.nii.gz or {case}.nii.gz)"
                    for case, label in sorted(labels.items()) if case not in by_case)
    if not images and not problems:
        problems.append(f"{folders[IMAGES]}: no NIfTI images")
    return pairs


def _open(path: Path, problems: list[str]):
    """(image, grid) with the header checked, or None with the problem noted."""
    try:
        image = open_nifti(path)
        return image, nifti_grid(image)
    except StudyError as exc:
        problems.append(f"{path}: {exc}")
        return None


def _voxels(path: Path, image, grid, problems: list[str]) -> np.ndarray | None:
    try:
        return canonical_slices(image, grid)
    except StudyError as exc:  # voxels that cannot be decoded (a truncated file)
        problems.append(f"{path}: {exc}")
        return None


def _slices(grid, slices: np.ndarray) -> str:
    axis, stored = stored_slice_axis(grid, slices)
    return f"slice(s) {axis}={listed(sorted(stored.tolist()))} of the file"


def check_case(pair: Pair, mapping: dict[int, int], problems: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(HU (S, H, W) float32, class indices (S, H, W) uint8) in canonical slices, or None with
    every problem of the pair noted. The headers are compared before a voxel is decoded."""
    before = len(problems)
    opened = [_open(pair.image, problems), _open(pair.label, problems)]
    if None in opened:
        return None
    (image, grid), (label, label_grid) = opened
    if label_grid.shape != grid.shape:
        problems.append(f"{pair.label}: shape {label_grid.shape}, but the image {pair.image.name} is {grid.shape}")
        return None
    off = float(np.abs(label_grid.affine[:3] - grid.affine[:3]).max())
    if off > AFFINE_TOLERANCE:
        problems.append(f"{pair.label}: its affine differs from the image {pair.image.name}'s by up to {off:.3g} "
                        f"(more than {AFFINE_TOLERANCE} mm or per direction): the label is not on the image's voxels")
        return None
    hu, values = _voxels(pair.image, image, grid, problems), _voxels(pair.label, label, grid, problems)
    if hu is None or values is None:
        return None
    bad = nonfinite_slices(hu)
    if len(bad):
        problems.append(f"{pair.image}: NaN or infinite HU in {_slices(grid, bad)}")
    classes, bad_values, bad_slices = map_labels(values, mapping)
    if len(bad_values):
        problems.append(f"{pair.label}: value(s) {listed(bad_values)} outside the labels ({describe_labels(mapping)}) "
                        f"in {_slices(grid, bad_slices)}")
    return (hu, classes) if len(problems) == before else None


# --- the cache of converted cases -----------------------------------------------------------------

def cache_key(pair: Pair, mapping: dict[int, int]) -> str:
    """A hash of what the converted arrays depend on: both files (path, size, mtime) and the mapping."""
    files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in (pair.image, pair.label)]
    text = json.dumps([CACHE_FORMAT, files, sorted(mapping.items())])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _hu_array(hu: np.ndarray) -> np.ndarray:
    """int16 when every value is a whole number in its range (CT nearly always), else float32."""
    if not hu.size or hu.min() < -32768 or hu.max() > 32767:
        return hu
    whole = hu.astype(np.int16)
    if all(np.array_equal(whole[k:k + 16], hu[k:k + 16]) for k in range(0, len(hu), 16)):
        return whole
    return hu


def write_case(folder: Path, hu: np.ndarray, classes: np.ndarray) -> None:
    """``hu.npy``, ``labels.npy`` and ``meta.json`` into ``folder``, all or nothing: written in a
    folder of their own, then renamed into place (another process that got there first wins)."""
    hu = _hu_array(hu)
    tmp = folder.with_name(f"{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        require_space(tmp, hu.nbytes + classes.nbytes + (1 << 16), "converting a NIfTI case")
        np.save(tmp / "hu.npy", hu)
        np.save(tmp / "labels.npy", classes)
        (tmp / "meta.json").write_text(json.dumps({"shape": list(classes.shape), "hu_dtype": str(hu.dtype)}))
        os.rename(tmp, folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in NO_SPACE:
            where = next(p for p in folder.parents if p.exists())
            raise no_space(where, hu.nbytes + classes.nbytes, "converting a NIfTI case") from None
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and _cached_shape(folder) is not None:
            return  # converted meanwhile by another process
        raise DataError(f"{folder}: cannot write the converted case ({exc.strerror or type(exc).__name__}); the "
                        f"cache folder must be writable (MEDQ_ARTIFACT_ROOT)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _cached_shape(folder: Path) -> tuple[int, int, int] | None:
    try:
        shape = json.loads((folder / "meta.json").read_text())["shape"]
    except (OSError, ValueError, KeyError):
        return None
    return tuple(shape) if (folder / "hu.npy").is_file() and (folder / "labels.npy").is_file() else None


def _source(pair: Pair, mapping: dict[int, int], folder: Path, shape: tuple[int, int, int]) -> SegSource:
    origin = {"image": str(pair.image.resolve()), "label": str(pair.label.resolve()),
              "labels": sorted([v, c] for v, c in mapping.items())}
    return SegSource(pair.case, folder / "hu.npy", folder / "labels.npy", None, *shape, one_hot=False, kind=KIND,
                     origin=origin)


def read_nifti_pairs(root: Path, cache_dir: Path) -> SegData:
    """Every case under ``root`` checked (one volume in memory at a time) and converted into
    ``cache_dir``; one DataError listing every problem. Each case is one volume of the split."""
    root, cache_dir = Path(root), Path(cache_dir)
    mapping, problems = DEFAULT_LABELS, []
    if (root / DATASET_JSON).exists():
        mapping, problems = read_label_map(root / DATASET_JSON)
    named_badly = bool(problems)
    pairs = find_pairs(root, problems)
    if named_badly:  # label values cannot be checked without their names
        raise DataError(problems)
    sources, converted = [], 0
    for pair in pairs:
        folder = cache_dir / cache_key(pair, mapping)
        shape = _cached_shape(folder)
        if shape is None:
            arrays = check_case(pair, mapping, problems)
            if arrays is not None and not problems:  # nothing is written once the dataset is known bad
                write_case(folder, *arrays)
                shape, converted = arrays[1].shape, converted + 1
            arrays = None  # one volume in memory at a time
        if shape is not None:
            sources.append(_source(pair, mapping, folder, shape))
    if problems:
        raise DataError(problems)
    check_one_size(root, sources, "cases")
    log.info("NIfTI dataset: %d cases, %d converted now, %d already in the cache", len(sources), converted,
             len(sources) - converted)
    volume_ids = tuple(source.name for source in sources for _ in range(source.n))
    return SegData(root.resolve(), tuple(sources), volume_ids, layout=KIND)


def ensure_cached(source: SegSource) -> None:
    """Write a source's converted arrays again from its NIfTI files when they are gone (a cleaned
    cache); DataError when the files no longer give the slices the job was planned on."""
    folder = source.images.parent
    if _cached_shape(folder) is not None:
        return
    origin = source.origin or {}
    pair = Pair(source.name, Path(origin["image"]), Path(origin["label"]))
    mapping = {int(v): int(c) for v, c in origin["labels"]}
    problems: list[str] = []
    arrays = check_case(pair, mapping, problems)
    if arrays is not None and arrays[1].shape != (source.n, source.height, source.width):
        problems.append(f"{pair.image}: now {arrays[1].shape[0]} slices of {arrays[1].shape[1]}x{arrays[1].shape[2]}, "
                        f"not the {source.n} of {source.height}x{source.width} the job was planned on")
    if problems:
        raise DataError(problems)
    write_case(folder, *arrays)
