"""Label values of NIfTI label volumes onto medq's classes (``schema.CLASSES``).

Without a ``dataset.json`` the values are 0 background, 1 ground glass, 2 consolidation, 3 other
lung. A ``dataset.json`` with a ``labels`` mapping names them, in either form in use:
nnU-Net v2 ``{"background": 0, "ground_glass": 1, ...}`` (name -> value) or the Medical
Segmentation Decathlon's ``{"0": "background", "1": ...}`` (value -> name). Names are matched
case-insensitively with spaces, hyphens and underscores alike, and a few common spellings
(``ALIASES``); a name medq has no class for is refused, with the file and the name.

Pure functions; torch-free.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from medq.common.datafiles import read_text
from medq.common.families.ct_lesions.schema import BACKGROUND, CLASSES, CONSOLIDATION, GROUND_GLASS, OTHER_LUNG

DEFAULT_LABELS = {0: BACKGROUND, 1: GROUND_GLASS, 2: CONSOLIDATION, 3: OTHER_LUNG}  # value -> class index
ALIASES = {
    GROUND_GLASS: ("ground_glass", "ggo", "ground_glass_opacity", "ground_glass_opacities"),
    CONSOLIDATION: ("consolidation", "consolidations"),
    OTHER_LUNG: ("other_lung", "lung", "lungs"),
    BACKGROUND: ("background", "bg"),
}
CLASS_OF_NAME = {name: index for index, names in ALIASES.items() for name in names}
UNMAPPED = 255
BLOCK = 16  # slices mapped at a time
MAX_LISTED = 5


def class_of(name: str) -> int | None:
    """medq's class index of a label name ("Ground-Glass" -> 0), or None."""
    return CLASS_OF_NAME.get(re.sub(r"[\s\-_]+", "_", name.strip().lower()))


def _entry(key: Any, value: Any) -> tuple[int, str] | str:
    """(value, name) of one entry of either form, or why it is neither."""
    if isinstance(value, str) and str(key).strip().isdigit():  # MSD: "1": "ground glass"
        return int(key), value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:  # nnU-Net: "ground glass": 1
        return value, str(key)
    if isinstance(value, list):
        return f"label {key!r} is a region (a list of values); medq trains one class per value"
    return (f"label {key!r}: {value!r} is neither a value >= 0 (nnU-Net: name -> value) nor a name under a "
            f"value (MSD: value -> name)")


def label_map(doc: Any) -> tuple[dict[int, int], list[str]]:
    """(label value -> class index, problems) of a parsed dataset.json; each problem is a sentence
    for the caller to prefix with the file."""
    labels = doc.get("labels") if isinstance(doc, dict) else None
    if not isinstance(labels, dict) or not labels:
        return {}, ['no "labels" mapping (nnU-Net: {"background": 0, ...}; MSD: {"0": "background", ...})']
    mapping: dict[int, int] = {}
    problems = []
    for key, entry in labels.items():
        entry = _entry(key, entry)
        if isinstance(entry, str):
            problems.append(entry)
            continue
        value, name = entry
        index = class_of(name)
        if index is None:
            problems.append(f"label {name!r} (value {value}) is not one of medq's classes "
                            f"({', '.join(CLASSES)}; also spelt {', '.join(_spellings())})")
        elif value in mapping:
            problems.append(f"value {value} is named twice")
        else:
            mapping[value] = index
    return mapping, problems


def _spellings() -> list[str]:
    return [name.replace("_", " ") for name in CLASS_OF_NAME if name not in CLASSES]


def read_label_map(path: Path) -> tuple[dict[int, int], list[str]]:
    """(value -> class index, problems naming ``path``) of a dataset.json file."""
    text, problem = read_text(path)
    if problem:
        return {}, [f"{path}: {problem}"]
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return {}, [f"{path}: not JSON (line {exc.lineno}: {exc.msg})"]
    mapping, problems = label_map(doc)
    return mapping, [f"{path}: {p}" for p in problems]


def describe_labels(mapping: dict[int, int]) -> str:
    """"0 background, 1 ground_glass, ..." in value order."""
    return ", ".join(f"{value} {CLASSES[index]}" for value, index in sorted(mapping.items()))


def map_labels(values: np.ndarray, mapping: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class indices uint8 of ``values`` (S, H, W), the values outside the mapping, the slices
    holding them). A value that is not a whole number, or is NaN, is outside. A block of slices
    at a time, so the temporaries stay small beside the volume."""
    lut = np.full(max(mapping) + 1, UNMAPPED, dtype=np.uint8)
    for value, index in mapping.items():
        lut[value] = index
    classes = np.empty(values.shape, dtype=np.uint8)
    bad_values, bad_slices = [], []
    for start in range(0, len(values), BLOCK):
        block = values[start:start + BLOCK]
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(block) & (block >= 0) & (block < len(lut)) & (block == np.rint(block))
        mapped = lut[np.where(whole, block, 0).astype(np.intp)]
        bad = ~whole | (mapped == UNMAPPED)
        mapped[bad] = UNMAPPED
        classes[start:start + BLOCK] = mapped
        bad_values.append(np.unique(block[bad]))
        bad_slices.extend(start + np.flatnonzero(bad.reshape(len(block), -1).any(axis=1)))
    return classes, np.unique(np.concatenate(bad_values)) if bad_values else np.array([]), np.array(bad_slices, int)


def listed(values) -> str:
    """At most MAX_LISTED values, whole numbers without a decimal point, and how many more."""
    values = list(values)
    shown = ", ".join(str(int(v)) if float(v).is_integer() else str(float(v)) for v in values[:MAX_LISTED])
    return shown + (f" and {len(values) - MAX_LISTED} more" if len(values) > MAX_LISTED else "")
