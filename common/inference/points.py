"""What every landmark model's studies share, whatever the anatomy (numpy only, torch-free).

Landmarks are (K, 2) pixels of the ORIGINAL image, 0-based, x to the right and y down; the
spread (K,) is the disagreement of the model's checkpoints or members, in the same pixels.

- quality checks that hold for any landmark set: a spread above the limit (per landmark), a
  landmark outside the image. A family adds its own (the chest's left/right pairs and geometry)
  by passing more checks; every check returns reasons (strings, no patient data);
- millimetres from a pixel spacing;
- the stored result of a study: {landmarks_px, landmarks_mm, spread_px, qc_reasons};
- the per-study CSV: the study's columns, then x1, y1, ... in px, in mm, and the spread
  (counted from 1, as reasons count them, and named where the family names its landmarks).

The number of landmarks is always passed in by the family; nothing here infers it.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np

DEFAULT_SPREAD_LIMIT_FRACTION = 0.03  # of the image width
SPREAD_REASON = "ensemble spread above {limit:.1f} px at landmark {index}"
OUTSIDE_REASON = "landmark outside the image"

# (landmarks (K, 2) px, spread (K,) px, (width, height), spread limit px) -> reasons
Check = Callable[[np.ndarray, np.ndarray, tuple[int, int], float], list[str]]


def default_spread_limit(image_size: tuple[int, int]) -> float:
    """The spread limit in pixels for an image of (width, height): 3 % of the width."""
    return DEFAULT_SPREAD_LIMIT_FRACTION * float(image_size[0])


def spread_reasons(points: np.ndarray, spread: np.ndarray, size: tuple[int, int], limit: float) -> list[str]:
    """Landmarks are counted from 1 in reasons, as in the CSV's columns (x1, y1, ...)."""
    return [SPREAD_REASON.format(limit=limit, index=int(i) + 1) for i in np.flatnonzero(~(spread <= limit))]


def outside_reasons(points: np.ndarray, spread: np.ndarray, size: tuple[int, int], limit: float) -> list[str]:
    width, height = size
    inside = (points[:, 0] >= 0) & (points[:, 0] <= width) & (points[:, 1] >= 0) & (points[:, 1] <= height)
    outside = np.flatnonzero(~inside)  # NaN compares False, so it counts as outside
    if outside.size == 0:
        return []
    return [f"{OUTSIDE_REASON}: landmark {', '.join(str(int(i) + 1) for i in outside)}"]


LANDMARK_CHECKS: tuple[Check, ...] = (spread_reasons, outside_reasons)


def qc_reasons(landmarks_px: np.ndarray, spread_px: np.ndarray, image_size: tuple[int, int],
               spread_limit_px: float | None = None, checks: Sequence[Check] = LANDMARK_CHECKS) -> list[str]:
    """Every reason to review one prediction (empty: it passed). ``spread_limit_px``: None means
    ``DEFAULT_SPREAD_LIMIT_FRACTION`` of the width."""
    points, spread = np.asarray(landmarks_px, dtype=float), np.asarray(spread_px, dtype=float)
    size = (int(image_size[0]), int(image_size[1]))
    limit = default_spread_limit(size) if spread_limit_px is None else float(spread_limit_px)
    return [reason for check in checks for reason in check(points, spread, size, limit)]


def landmarks_mm(landmarks_px: np.ndarray, spacing_mm: tuple[float, float] | None) -> np.ndarray | None:
    """x times the column spacing, y times the row spacing; None without a spacing.
    ``spacing_mm`` is (row, column), as DICOM's PixelSpacing."""
    if spacing_mm is None:
        return None
    row, column = spacing_mm
    return np.asarray(landmarks_px, dtype=np.float64) * np.array([column, row], dtype=np.float64)


def landmark_result(landmarks_px: np.ndarray, spread_px: np.ndarray, spacing_mm: tuple[float, float] | None,
                    reasons: Sequence[str], spacing_source: str | None = None) -> dict[str, Any]:
    """A done study's stored result (plain JSON); ``spacing_source``: the DICOM attribute the
    millimetres come from (PixelSpacing or ImagerPixelSpacing)."""
    return {"landmarks_px": _floats(landmarks_px), "landmarks_mm": _floats(landmarks_mm(landmarks_px, spacing_mm)),
            "spread_px": _floats(spread_px), "qc_reasons": [str(reason) for reason in reasons],
            "spacing_source": spacing_source if spacing_mm is not None else None}


def _floats(values: Any) -> Any:
    """Nested lists / arrays of numbers -> nested lists of Python floats (None stays None)."""
    if values is None:
        return None
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, (list, tuple)):
        return [_floats(v) for v in values]
    return float(values)


# --- the per-study CSV ---------------------------------------------------------------------------

OUTPUT_FIELDS = ["overlay", "sr", "sent", "output_notes"]  # files relative to --out; the PACS's answers
STUDY_FIELDS = ["path", "key", "state", "reason", "study_uid", "series_uid", "sop_uid", "format", "width", "height",
                "spacing_source", "review", "review_reasons"]


def landmark_slug(name: str) -> str:
    """'Lower incisal incision' -> 'lower_incisal_incision' (a CSV column's part)."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def landmark_csv_columns(n_landmarks: int, names: Sequence[str] = ()) -> list[str]:
    """The header: the study's columns, then x, y per landmark in px, in mm, and its spread.
    Landmarks are counted from 1 and, where the family names them, named: ``x1_sella``,
    ``y1_sella``, ``x1_sella_mm``, ``spread1_sella_px``; without names ``x1``, ``y1``, ..."""
    tags = [f"{i}_{landmark_slug(names[i - 1])}" if names else str(i) for i in range(1, n_landmarks + 1)]
    return (STUDY_FIELDS
            + [f"{axis}{tag}" for tag in tags for axis in ("x", "y")]
            + [f"{axis}{tag}_mm" for tag in tags for axis in ("x", "y")]
            + [f"spread{tag}_px" for tag in tags] + OUTPUT_FIELDS)


def _cell(value: Any) -> Any:
    return "" if value is None else (round(value, 2) if isinstance(value, float) else value)


def sent_cell(study: Any) -> str:
    """What the PACS answered per DICOM output ("sr accepted"; "seg failed: HTTP 500 ..."), '' when nothing was sent."""
    return "; ".join(f"{s['output']} {s['state']}" + (f": {s['answer']}" if s["state"] == "failed" and s["answer"] else "")
                     for s in getattr(study, "sends", None) or [])


def landmark_csv_row(study: Any, n_landmarks: int) -> list[Any]:
    """One study row (``store.models.Study``) under ``landmark_csv_columns(n_landmarks)``."""
    result = study.result or {}
    px = result.get("landmarks_px") or [[None, None]] * n_landmarks
    mm = result.get("landmarks_mm") or [[None, None]] * n_landmarks
    spread = result.get("spread_px") or [None] * n_landmarks
    files = result.get("outputs") or {}
    return ([study.path, study.path_hash, study.state, study.reason or "", study.study_uid or "",
             study.series_uid or "", study.sop_uid or "", study.source_format or "", _cell(study.width),
             _cell(study.height), result.get("spacing_source") or "", "" if study.qc_flag is None else int(study.qc_flag),
             "; ".join(result.get("qc_reasons") or [])]
            + [_cell(v) for point in px for v in point] + [_cell(v) for point in mm for v in point]
            + [_cell(v) for v in spread] + [files.get("overlay", ""), files.get("sr", ""), sent_cell(study),
                                             "; ".join(result.get("output_notes") or [])])
