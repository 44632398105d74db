"""The chest-landmark ensemble's part of a job's report, and what a side-by-side report of
several such jobs compares (torch-free: numpy, matplotlib through ``report.plots``, Pillow).

Everything is read from the job's results as `medq results JOB --json` gives them
(``members[i].metrics`` per seed, ``ensemble[j].metrics`` per aggregation, each a
``metrics.landmark_report`` with ``per_image``); only the gallery reads the data folder
(images and the annotated points of landmarks.csv). Every number that the results hold is a
``Cell`` with its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medq.common.families.chest.schema import FLIP_PAIRS, MIDLINE, N_LANDMARKS
from medq.common.report import plots, stats
from medq.common.report.page import Cell, Curve, CurvePlot, Figure, Metric, Note, PairedErrors, Section, Table

HEADLINE = "mean"  # the aggregation a report leads with, and compares across jobs
GALLERY_SIZE = 8
CED_POINTS = 400
UNIT = "px, original image"
SUMMARY = (("mean_error_px", "mean px", 2), ("median_error_px", "median px", 2), ("p95_error_px", "p95 px", 2),
           ("std_error_px", "SD px", 2), ("mean_error_px_224", "mean px@224", 2),
           ("median_error_px_224", "median px@224", 2), ("normalised_error", "error / width", 4))
GAIN = (("mean_error_px", "mean px"), ("median_error_px", "median px"), ("p95_error_px", "p95 px"),
        ("mean_error_px_224", "mean px@224"))
AGGREGATION_NOTE = ("Ensembles combine the seeds' predicted points: mean = coordinate mean, median = coordinate-wise "
                    "median, weighted = weights proportional to 1 / validation loss.")
SCALE_NOTE = ("px: Euclidean distance between predicted and annotated point in pixels of the original image; px@224: "
              "the same after resizing each image to 224 × 224 (the source project's unit: x error × 224 / width, "
              "y error × 224 / height). Statistics pool all test landmarks (images × 15); SD over them (ddof 0).")


def landmark_name(index: int) -> str:
    """0-based index to the name a reader sees: L1 ... L15, the CSV's x1,y1 ... x15,y15."""
    return f"L{index + 1}"


def _landmark_groups() -> str:
    pairs = ", ".join(f"{landmark_name(a)}/{landmark_name(b)}" for a, b in FLIP_PAIRS)
    return f"midline {', '.join(landmark_name(i) for i in MIDLINE)}; left/right pairs {pairs}"


# --- where things are in the results ------------------------------------------------------------


def subjects(results: dict[str, Any]) -> list[tuple[str, str, dict]]:
    """(label, path of its metrics, metrics) of every evaluated seed, then every ensemble."""
    found = [(f"seed {m['seed']}", f"members.{i}.metrics", m["metrics"])
             for i, m in enumerate(results.get("members") or []) if m.get("metrics")]
    found += [(f"ensemble ({e['aggregation']})", f"ensemble.{j}.metrics", e["metrics"])
              for j, e in enumerate(results.get("ensemble") or []) if e.get("metrics")]
    return found


def headline_model(results: dict[str, Any]) -> tuple[str, dict] | None:
    """(path, metrics) of the ensemble (mean), or None before the evaluation."""
    for j, entry in enumerate(results.get("ensemble") or []):
        if entry.get("aggregation") == HEADLINE and entry.get("metrics"):
            return f"ensemble.{j}.metrics", entry["metrics"]
    return None


def _seeds(results: dict[str, Any]) -> list[tuple[str, str, dict]]:
    return [s for s in subjects(results) if s[0].startswith("seed ")]


# --- tables ---------------------------------------------------------------------------------------


def summary_table(results: dict[str, Any]) -> Table:
    rows = [(Cell(label, bold=label == f"ensemble ({HEADLINE})"), Cell(m["n_images"], path=f"{path}.n_images"),
             *(Cell(m.get(key), digits, f"{path}.{key}" if key in m else None) for key, _, digits in SUMMARY))
            for label, path, m in subjects(results)]
    two = (" With two seeds the coordinate-wise median is their mean: those two rows agree."
           if len(_seeds(results)) == 2 else "")
    return Table("Test split: each seed and each ensemble", ("model", "images", *(c for _, c, _ in SUMMARY)),
                 tuple(rows), note=f"{SCALE_NOTE} error / width: px error divided by the image's width. "
                                   f"{AGGREGATION_NOTE}{two}")


def gain_table(results: dict[str, Any]) -> Table | None:
    found = headline_model(results)
    seeds = _seeds(results)
    if found is None or not seeds:
        return None
    path, ensemble = found
    rows = []
    for key, label in GAIN:
        mean, sd = stats.mean_sd([m.get(key) for _, _, m in seeds])
        value = ensemble.get(key)
        gain = None if mean is None or value is None else mean - value
        rows.append((Cell(label), Cell(mean), Cell(sd), Cell(value, 2, f"{path}.{key}"),
                     Cell(gain, bold=bool(gain and gain > 0)),
                     Cell(None if gain is None or not mean else 100.0 * gain / mean, 1)))
    return Table(f"Ensemble ({HEADLINE}) against its {len(seeds)} seeds",
                 ("metric", "mean over seeds", "SD over seeds", f"ensemble ({HEADLINE})", "gain (px)", "gain (%)"),
                 tuple(rows),
                 note="Mean and SD (sample SD, n − 1) of the seeds' figures above. Gain = mean over seeds − ensemble: "
                      "positive (bold) when the ensemble's error is lower than a typical single seed's; % of the "
                      "mean over seeds.")


def quality_table(results: dict[str, Any]) -> Table | None:
    rows, labels = [], None
    for label, path, m in subjects(results):
        if "quality_buckets" in m:
            buckets = [(b["bucket"], b["fraction"], f"{path}.quality_buckets.{k}.fraction")
                       for k, b in enumerate(m["quality_buckets"])]
        elif "quality" in m:  # evaluated before the list existed: the dict's keys hold dots, no path
            buckets = [(name, value, None) for name, value in m["quality"].items()]
        else:
            continue
        labels = labels or [name for name, _, _ in buckets]
        rows.append((Cell(label), *(Cell(value, 3, where) for _, value, where in buckets)))
    if not rows:
        return None
    return Table("Quality buckets: fraction of test landmarks per error range", ("model", *map(_bucket_label, labels)),
                 tuple(rows),
                 note="Each cell: the fraction (0–1) of all test landmarks (images × 15) whose error in original px "
                      "falls in the range; a row sums to 1; an error on an edge counts in the upper range. "
                      "≥ 15 px is the range a person should review.")


def _bucket_label(name: str) -> str:
    return (name.replace("<", "< ").replace(">=", "≥ ").replace("-", "–").replace("px", " px")
            .replace("  ", " "))


def landmark_table(path: str, metrics: dict) -> Table:
    keys = (("mean_error_px", "mean px"), ("median_error_px", "median px"), ("std_error_px", "SD px"),
            ("mean_error_px_224", "mean px@224"))
    rows = [(Cell(landmark_name(int(row["landmark"]))),
             *(Cell(row.get(key), 2, f"{path}.per_landmark.{i}.{key}" if key in row else None) for key, _ in keys))
            for i, row in enumerate(metrics["per_landmark"])]
    return Table(f"Per landmark, ensemble ({HEADLINE})", ("landmark", *(label for _, label in keys)), tuple(rows),
                 note=f"Over the {metrics['n_images']} test images; SD over images (ddof 0). "
                      f"Landmarks: {_landmark_groups()}.")


def category_table(results: dict[str, Any]) -> Table | None:
    found = subjects(results)
    head = headline_model(results)
    if head is None or not head[1].get("per_category"):
        return None
    path, metrics = head
    columns = ["category", "images", *(f"{label}: mean px" for label, _, _ in found),
               f"ensemble ({HEADLINE}): mean px@224"]
    rows = []
    for name in sorted(metrics["per_category"]):
        def at(where: str, key: str) -> str | None:  # a category whose name holds a dot has no path
            return None if "." in name else f"{where}.per_category.{name}.{key}"

        row = [Cell(name), Cell(metrics["per_category"][name]["n_images"], path=at(path, "n_images"))]
        for _, where, m in found:
            value = (m.get("per_category") or {}).get(name, {}).get("mean_error_px")
            row.append(Cell(value, 2, at(where, "mean_error_px") if value is not None else None))
        row.append(Cell(metrics["per_category"][name]["mean_error_px_224"], 2, at(path, "mean_error_px_224")))
        rows.append(tuple(row))
    return Table("Per image category (test split)", tuple(columns), tuple(rows),
                 note="Mean radial error over every landmark of the category's test images, per seed and ensemble. "
                      "The category is the part of the image stem before its last '-'.")


# --- figures --------------------------------------------------------------------------------------


def ced_plot(results: dict[str, Any], only_headline: bool = False) -> CurvePlot | None:
    """Cumulative error distribution: for r from 0 to the largest error, the fraction of test
    landmarks within r px, of every seed and ensemble (or of the ensemble (mean) only)."""
    chosen = [(label, m) for label, _, m in subjects(results) if "per_image" in m
              and (not only_headline or label == f"ensemble ({HEADLINE})")]
    if not chosen:
        return None
    errors = [np.asarray(m["per_image"]["errors_px"], dtype=float) for _, m in chosen]
    top = max(float(np.nanmax(e)) if e.size else 0.0 for e in errors)
    radii = np.linspace(0.0, max(np.ceil(top), 1.0), CED_POINTS)
    merged: dict[tuple, list[str]] = {}  # identical curves (the median of two seeds is their mean) drawn once
    for (label, _), e in zip(chosen, errors):
        merged.setdefault(tuple(stats.cumulative_fraction(e, radii).tolist()), []).append(label)
    lines = tuple(Curve(" = ".join(labels), tuple(radii.tolist()), y) for y, labels in merged.items())
    n = errors[0].shape[0]
    return CurvePlot("Cumulative error distribution (test split)", f"radius r ({UNIT})",
                     "fraction of landmarks with error ≤ r", lines,
                     f"For each radius r: the fraction of all {n} × {N_LANDMARKS} test landmarks whose predicted "
                     "point lies within r pixels of the annotated one. A curve further up and to the left is better; "
                     "where a curve reaches 0.5 is the median error, where it reaches 1 the largest error.")


def landmark_bars(path: str, metrics: dict) -> Figure:
    rows = metrics["per_landmark"]
    errors = metrics.get("per_image", {}).get("errors_px")
    sds = ([row["std_error_px"] for row in rows] if all("std_error_px" in row for row in rows) else
           np.asarray(errors, dtype=float).std(axis=0).tolist() if errors else None)
    return plots.bars(f"Per-landmark error, ensemble ({HEADLINE})", [landmark_name(int(r["landmark"])) for r in rows],
                      [r["mean_error_px"] for r in rows], sds, ylabel=f"radial error ({UNIT})",
                      caption=f"Bar: mean radial error of each landmark over the {metrics['n_images']} test images; "
                              f"whisker: ± 1 SD over those images. L1–L15 are the landmark columns of landmarks.csv "
                              f"(x1,y1 … x15,y15): {_landmark_groups()}. The numbers are in the table below.")


def gallery(data, path: str, metrics: dict) -> list:
    """The worst test images of the ensemble (mean): a table of their errors, then each image
    with the annotated and the predicted points."""
    per = metrics.get("per_image") or {}
    if "pred_px" not in per:
        return [Note("No gallery: these results were evaluated before medq kept per-image predictions; "
                     "evaluate the job again to see its worst images.", "warn")]
    worst = np.argsort(-np.asarray(per["mean_error_px"], dtype=float), kind="stable")[:GALLERY_SIZE]
    rows = []
    for rank, k in enumerate(worst, start=1):
        errors = per["errors_px"][k]
        j = int(np.argmax(errors))
        stem = per["stems"][k]
        rows.append((Cell(f"#{rank}"), Cell(stem),
                     Cell(per["mean_error_px"][k], 2, f"{path}.per_image.mean_error_px.{k}"),
                     Cell(landmark_name(j)), Cell(errors[j], 2, f"{path}.per_image.errors_px.{k}.{j}")))
    table = Table(f"The {len(rows)} test images with the largest mean error, ensemble ({HEADLINE})",
                  ("rank", "image", "mean px", "worst landmark", "its error px"), tuple(rows),
                  note="Mean over the image's 15 landmarks, in original px; the images are drawn below in this order.")
    return [table, *_tiles(data, per, worst)]


def _tiles(data, per: dict, worst) -> list:
    from PIL import Image

    from medq.common.families.chest.csvio import CSV_NAME, IMAGES_DIR, read_landmark_csv
    from medq.common.errors import DataError

    if not data.plan.get("data_dir"):
        return [Note("No images: the job does not record its data folder.", "warn")]
    folder = Path(data.plan["data_dir"])
    try:
        truth = {r.stem: np.asarray(r.points, dtype=float) for r in read_landmark_csv(folder / CSV_NAME)}
    except (OSError, DataError) as exc:
        return [Note(f"No images: the data folder {folder} cannot be read any more ({_reason(exc)}); the table above "
                     "still holds the worst images' errors.", "warn")]
    blocks: list = [Note("Green circles: the annotated landmarks (landmarks.csv); red crosses: the ensemble (mean) "
                         "prediction; a yellow line joins each annotated point to its prediction. Titles: rank and "
                         "image stem, as in the table above.")]
    missing = []
    for rank, k in enumerate(worst, start=1):
        stem = per["stems"][k]
        try:
            with Image.open(folder / IMAGES_DIR / f"{stem}.png") as image:
                pixels = np.asarray(image.convert("L"))
        except OSError:
            missing.append(stem)
            continue
        blocks.append(plots.image_with_points(f"#{rank} {stem}", pixels, truth.get(stem),
                                              np.asarray(per["pred_px"][k], dtype=float)))
    if missing:
        blocks.append(Note(f"Not drawn, image missing or unreadable in {folder / IMAGES_DIR}: {', '.join(missing)}",
                           "warn"))
    return blocks


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# --- the family's hooks -------------------------------------------------------------------------


def sections(data) -> list[Section]:
    results = data.results or {}
    if not subjects(results):
        state = results.get("evaluation") or "pending"
        why = ("it was skipped: no member succeeded or the job was cancelled" if state == "skipped" else
               f"the evaluation ended without them ({results.get('error') or 'no reason recorded'})"
               if state == "done" else f"evaluation not run yet (evaluation: {state}); it runs once every seed has ended")
        return [Section.of("Test results", [Note(f"No test results: {why}. The training part above shows the "
                                                 "learning curves so far.")], data.id)]
    blocks: list = [summary_table(results), gain_table(results)]
    ced = ced_plot(results)
    found = headline_model(results)
    out = [Section.of("Test results: seeds and ensemble", blocks, data.id)]
    if ced is not None:
        out.append(Section.of("Cumulative error distribution",
                              [plots.curves(ced, ylim=(0.0, 1.02)), quality_table(results)], data.id))
    else:
        out.append(Section.of("Quality buckets", [quality_table(results)], data.id))
    if found is not None:
        path, metrics = found
        out.append(Section.of("Per landmark and per category", [landmark_bars(path, metrics),
                                                                landmark_table(path, metrics),
                                                                category_table(results)], data.id))
        out.append(Section.of("Worst test images", gallery(data, path, metrics), data.id))
    return out


def headline(results: dict[str, Any]) -> list[Metric]:
    found = headline_model(results or {})
    path, metrics = found if found else (None, {})
    label = f"ensemble ({HEADLINE})"
    out = [Metric(f"{label}: {name} error (px)", metrics.get(key), f"{path}.{key}" if key in metrics else None)
           for key, name in (("mean_error_px", "mean"), ("median_error_px", "median"), ("p95_error_px", "p95"))]
    out.append(Metric(f"{label}: mean error (px@224)", metrics.get("mean_error_px_224"),
                      f"{path}.mean_error_px_224" if "mean_error_px_224" in metrics else None))
    # a figure of the report, not of the results: no path
    out.append(Metric("mean over seeds: mean error (px)",
                      stats.mean_sd([m.get("mean_error_px") for _, _, m in _seeds(results or {})])[0], None))
    return out


def paired_errors(results: dict[str, Any]) -> PairedErrors | None:
    found = headline_model(results or {})
    per = (found[1].get("per_image") if found else None) or {}
    if not per.get("stems"):
        return None
    return PairedErrors(f"mean radial error (px) per test image, ensemble ({HEADLINE})",
                        dict(zip(per["stems"], per["mean_error_px"])))


def curves(results: dict[str, Any]) -> list[CurvePlot] | None:
    plot = ced_plot(results or {}, only_headline=True)
    return [plot] if plot is not None else None
