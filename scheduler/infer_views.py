"""Output of inference jobs: the per-study CSV, the failure list, the progress summary."""

from __future__ import annotations

import csv
from typing import IO, Iterable

from medq.common.families.chest.schema import N_LANDMARKS

STUDY_FIELDS = ["path", "key", "state", "reason", "study_uid", "series_uid", "sop_uid", "format", "width", "height",
                "review", "review_reasons"]


def csv_fields(n_landmarks: int = N_LANDMARKS) -> list[str]:
    """The header: the study's columns, then x1, y1, ... in px, in mm, and the spread per landmark."""
    return (STUDY_FIELDS
            + [f"{axis}{i}" for i in range(1, n_landmarks + 1) for axis in ("x", "y")]
            + [f"{axis}{i}_mm" for i in range(1, n_landmarks + 1) for axis in ("x", "y")]
            + [f"spread{i}_px" for i in range(1, n_landmarks + 1)])


def study_csv_row(study, n_landmarks: int = N_LANDMARKS) -> list:
    result = study.result or {}
    px = result.get("landmarks_px") or [[None, None]] * n_landmarks
    mm = result.get("landmarks_mm") or [[None, None]] * n_landmarks
    spread = result.get("spread_px") or [None] * n_landmarks
    fmt = lambda v: "" if v is None else (round(v, 2) if isinstance(v, float) else v)  # noqa: E731
    return ([study.path, study.path_hash, study.state, study.reason or "", study.study_uid or "",
             study.series_uid or "", study.sop_uid or "", study.source_format or "", fmt(study.width),
             fmt(study.height), "" if study.qc_flag is None else int(study.qc_flag),
             "; ".join(result.get("qc_reasons") or [])]
            + [fmt(v) for point in px for v in point] + [fmt(v) for point in mm for v in point]
            + [fmt(v) for v in spread])


def write_csv(out: IO[str], studies: Iterable, n_landmarks: int = N_LANDMARKS) -> int:
    """One row per study; ``n_landmarks`` is the model's (15 for the chest, 19 cephalometric)."""
    writer = csv.writer(out)
    writer.writerow(csv_fields(n_landmarks))
    n = 0
    for study in studies:
        writer.writerow(study_csv_row(study, n_landmarks))
        n += 1
    return n


SEG_LESIONS = ("ground_glass", "consolidation")
SEG_CLASSES = (*SEG_LESIONS, "other_lung", "background")
SEG_FIELDS = (["path", "key", "state", "reason", "study_uid", "series_uid", "format", "slices", "width", "height",
               "spacing_slice_mm", "spacing_row_mm", "spacing_column_mm", "mask"]
              + [f"{name}_ml" for name in SEG_LESIONS] + ["lesion_total_ml", "lung_involvement_pct"]
              + [f"{name}_voxels" for name in SEG_CLASSES])


def seg_csv_row(study) -> list:
    """A segmentation study: its mask file (relative to --out), lesion millilitres per class
    (empty without a spacing), the percentage of lung involved, and voxels per class."""
    m = study.result or {}
    fmt = lambda v: "" if v is None else (float(f"{v:.6g}") if isinstance(v, float) else v)  # noqa: E731
    spacing = m.get("spacing_mm") or [None, None, None]
    ml, voxels = m.get("lesion_ml") or {}, m.get("voxels") or {}
    return ([study.path, study.path_hash, study.state, study.reason or "", study.study_uid or "",
             study.series_uid or "", study.source_format or "", fmt(m.get("slices")), fmt(study.width),
             fmt(study.height), *(fmt(v) for v in spacing), m.get("mask", "")]
            + [fmt(ml.get(name)) for name in SEG_LESIONS]
            + [fmt(m.get("lesion_total_ml")), fmt(m.get("lung_involvement_pct"))]
            + [fmt(voxels.get(name)) for name in SEG_CLASSES])


def write_seg_csv(out: IO[str], studies: Iterable) -> int:
    writer = csv.writer(out)
    writer.writerow(SEG_FIELDS)
    n = 0
    for study in studies:
        writer.writerow(seg_csv_row(study))
        n += 1
    return n


def summary_lines(view: dict) -> list[str]:
    s = view["studies"]
    lines = [f"job {view['job_id']} (infer, priority {view['priority']}"
             + (f", window {view['window']}" + (" lifted" if view["window_lifted"] else "") if view["window"] else "")
             + f"): {view['state']}",
             f"studies: {s['total']} total, {s['done']} done, {s['failed']} failed, {s['skipped']} skipped, "
             f"{s['remaining']} remaining; {s['review']} flagged for review",
             "chunks: " + ", ".join(f"{n} {state}" for state, n in sorted(view["chunks"].items()))]
    if view["studies_per_s"]:
        line = f"throughput: {view['studies_per_s']:.1f} studies/s"
        if view["eta_s"] is not None:
            minutes, seconds = divmod(int(view["eta_s"]), 60)
            line += f", about {minutes}m{seconds:02d}s left"
        lines.append(line)
    for chunk in view.get("failed_chunks", []):
        lines.append(f"chunk {chunk['chunk']} failed ({chunk['studies']} studies not run): {chunk['error']}")
    if view["error"]:
        lines.append(f"error: {view['error']}")
    return lines
