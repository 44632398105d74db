"""The cephalometric family's part of a report (``Family.report_sections`` and the side-by-side
hooks), from a job's results as `medq results JOB --json` gives them: MRE ± SD and SDR per
evaluation set (the test split, each extra test set, the untrained model), the SDR curves over
0–10 mm, the per-landmark error of the test split, and its best and worst images drawn.

Every figure of a table is a ``Cell`` with its path in those results (``sets.<i>.metrics...``).
Torch-free; imported by ``family.py`` only when a report is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medq.common import subjects
from medq.common.families.ceph.schema import UNTRAINED
from medq.common.report import plots, stats
from medq.common.report.data import find_set
from medq.common.report.page import Cell, Curve, CurvePlot, Figure, Metric, Note, PairedErrors, Section, Table

TEST = subjects.TEST_SET
SDR_CURVE_MM = tuple(float(r) for r in np.round(np.arange(0.0, 10.0001, 0.1), 1))
SDR_LABELS = ("SDR 2 mm", "2.5 mm", "3 mm", "4 mm")
FEW_IMAGES = 10  # below this many test images, say that SD, SDR and the paired test are rough
HOW_SDR_READS = ("Successful detection rate (SDR) at r mm: the percentage of landmarks whose prediction lies within r "
                 "mm of the truth (the ISBI 2015 challenge measure).")


# --- the evaluation sets ------------------------------------------------------------------------


def _ordered_sets(results: dict[str, Any]) -> list[tuple[int, dict]]:
    """(index in ``results["sets"]``, entry): the test split, the extra test sets, the untrained model."""
    sets = list(enumerate(results.get("sets") or []))
    rank = {TEST: 0, UNTRAINED: 2}
    return sorted(sets, key=lambda pair: (rank.get(pair[1]["name"], 1), pair[1]["name"]))


def _label(name: str) -> str:
    if name == TEST:
        return "test split (held out from training)"
    if name == UNTRAINED:
        return "untrained model, test split"
    return f"{name} (extra test set)"


def _find(results: dict[str, Any], name: str = TEST) -> tuple[int, dict] | None:
    return find_set(results, name)


def _unit(metrics: dict) -> str:
    return metrics.get("unit", "mm")


def _errors(metrics: dict) -> np.ndarray | None:
    """Every radial error of the set, flat; None when the evaluation did not keep them."""
    per_image = metrics.get("per_image") or {}
    rows = per_image.get(f"errors_{_unit(metrics)}")
    return np.asarray(rows, dtype=float).ravel() if rows else None


def _sdr_curve(metrics: dict) -> tuple[float, ...] | None:
    errors = _errors(metrics)
    if errors is None or _unit(metrics) != "mm":
        return None
    return tuple(float(v) for v in 100 * stats.cumulative_fraction(errors, SDR_CURVE_MM))


# --- sections -------------------------------------------------------------------------------------


def summary_table(results: dict[str, Any]) -> Table:
    rows = []
    for i, entry in _ordered_sets(results):
        m, p, unit = entry["metrics"], f"sets.{i}.metrics", _unit(entry["metrics"])
        sdr = m.get("sdr") or []
        rows.append((Cell(_label(entry["name"]), bold=entry["name"] == TEST),
                     Cell(m.get("n_images"), path=f"{p}.n_images"),
                     Cell(m.get("checkpoints"), path=f"{p}.checkpoints"),
                     Cell(m.get(f"mre_{unit}"), 2, f"{p}.mre_{unit}", bold=entry["name"] == TEST),
                     Cell(m.get(f"sd_{unit}"), 2, f"{p}.sd_{unit}"),
                     *(Cell(sdr[j]["percent"], 1, f"{p}.sdr.{j}.percent") if j < len(sdr) else Cell(None)
                       for j in range(len(SDR_LABELS)))))
    unit = _unit(results["sets"][0]["metrics"])
    return Table("MRE ± SD and SDR per evaluation set",
                 ("evaluation set", "images", "checkpoints averaged", f"MRE ({unit})", f"SD ({unit})",
                  *(f"{label} (%)" for label in SDR_LABELS)), tuple(rows),
                 note=f"MRE: mean radial error, the distance between predicted and true landmark over all 19 landmarks "
                      f"of every image, in {unit} (each image's own pixel spacing); SD: its standard deviation over "
                      f"those same errors. {HOW_SDR_READS} Checkpoints averaged: the best epochs whose heatmaps are "
                      "averaged. The untrained model is the same network before its first training step, on the same "
                      "test images: the floor a trained model must clear.")


def sdr_figure(results: dict[str, Any]) -> Figure | Note:
    lines = []
    for _, entry in _ordered_sets(results):
        curve = _sdr_curve(entry["metrics"])
        if curve is not None:
            lines.append(Curve(_label(entry["name"]), SDR_CURVE_MM, curve))
    if not lines:
        return Note("No SDR curve: the evaluation kept no per-image errors in mm (a pixel spacing is unknown, or "
                    "the job was evaluated by an older medq).", "warn")
    return plots.curves(CurvePlot(
        "SDR curve per evaluation set", "radius r (mm)", "landmarks within r of the truth (%)", tuple(lines),
        "Each line: the percentage of all landmarks of that set (19 per image) predicted within r mm of the truth, "
        "for r from 0 to 10 mm. Higher and further left is better. Drawn from the per-image errors as stored (to "
        "0.01 mm), so at 2, 2.5, 3 and 4 mm a line can differ from the table's SDR columns (from unrounded errors) "
        "by a landmark or two. The untrained model's line is the floor the trained model must clear."), ylim=(0, 100))


def landmark_blocks(results: dict[str, Any]) -> list:
    found = _find(results)
    if found is None:
        return []
    i, entry = found
    m, unit = entry["metrics"], _unit(entry["metrics"])
    landmarks = m.get("per_landmark") or []
    if not landmarks:
        return []
    names = [row["landmark"] for row in landmarks]
    figure = plots.bars(
        "Mean radial error per landmark, test split", names, [row[f"mre_{unit}"] for row in landmarks],
        [row[f"sd_{unit}"] for row in landmarks], ylabel=f"mean radial error ({unit})", horizontal=True,
        caption=f"Bar: the landmark's mean radial error over the {m.get('n_images')} test image(s); whisker: ± one "
                "standard deviation of its errors (zero with one image). Long bars are the landmarks to check first.")
    p = f"sets.{i}.metrics.per_landmark"
    rows = [(Cell(k + 1), Cell(row["landmark"]), Cell(row[f"mre_{unit}"], 2, f"{p}.{k}.mre_{unit}"),
             Cell(row[f"sd_{unit}"], 2, f"{p}.{k}.sd_{unit}"),
             *(Cell(row["sdr"][j]["percent"], 1, f"{p}.{k}.sdr.{j}.percent") if len(row.get("sdr") or []) > j
               else Cell(None) for j in (0, 3)))
            for k, row in enumerate(landmarks)]
    table = Table("Per landmark, test split", ("#", "landmark", f"MRE ({unit})", f"SD ({unit})", "SDR 2 mm (%)",
                                               "SDR 4 mm (%)"), tuple(rows),
                  note="Landmarks numbered as in the ISBI 2015 challenge; SDR r mm: the percentage of this landmark's "
                       "predictions within r mm of the truth.")
    return [figure, table]


def _load_grey(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))
    except (OSError, ValueError):
        return None


def _case_row(p: str, per_image: dict, names: list[str], which: str, k: int, case: dict, unit: str) -> tuple:
    """A gallery image's rank, stem, mean radial error and its landmark furthest off (from the
    per-image errors when the image is among them)."""
    stems = per_image.get("stems") or []
    furthest = (Cell("–"), Cell(None))
    if case["stem"] in stems:
        j = stems.index(case["stem"])
        errors = per_image[f"errors_{unit}"][j]
        worst = int(np.argmax(errors))
        furthest = (Cell(names[worst] if worst < len(names) else f"L{worst + 1}"),
                    Cell(errors[worst], 2, f"{p}.per_image.errors_{unit}.{j}.{worst}"))
    return (Cell(f"{which} {k + 1}"), Cell(case["stem"]),
            Cell(case[f"mre_{unit}"], 2, f"{p}.cases.{which}.{k}.mre_{unit}"), *furthest)


def case_blocks(results: dict[str, Any], annotator: str) -> list:
    """Per trained evaluation set: its best and worst images, a table of their errors and the
    images with truth and prediction drawn (read again from the data folder or test folder)."""
    blocks = []
    for i, entry in _ordered_sets(results):
        m, unit = entry["metrics"], _unit(entry["metrics"])
        cases = m.get("cases")
        if entry["name"] == UNTRAINED or not cases:
            continue
        p, per_image = f"sets.{i}.metrics", m.get("per_image") or {}
        names = [row["landmark"] for row in m.get("per_landmark") or []]
        rows, tiles, missing = [], [], []
        for which in ("worst", "best"):
            for k, case in enumerate(cases.get(which, [])):
                rows.append(_case_row(p, per_image, names, which, k, case, unit))
                image = _load_grey(Path(case["image"]))
                if image is None:
                    missing.append(case["image"])
                    continue
                tiles.append(plots.image_with_points(f"#{k + 1} {which}: image {case['stem']}", image,
                                                     np.asarray(case["truth"]), np.asarray(case["pred"])))
        blocks.append(Table(f"{_label(entry['name'])}: worst and best images",
                            ("case", "image", f"mean radial error ({unit})", "landmark furthest off",
                             f"its error ({unit})"), tuple(rows),
                            note="Ranked by the image's mean radial error over its 19 landmarks; worst first."))
        if tiles:
            blocks.append(Note(f"Below, each image with the truth ({annotator} annotator) as green circles and the "
                               "prediction as red crosses; a yellow line joins each landmark's pair, so a long yellow "
                               "line is a large error."))
        blocks += tiles
        if missing:
            blocks.append(Note(f"{len(missing)} of these images are no longer where the evaluation read them "
                               f"({', '.join(sorted(set(str(Path(x).parent) for x in missing)))}): the data folder "
                               "moved or was deleted, so they are not drawn.", "warn"))
    return blocks


def sections(data: Any) -> list[Section]:
    results = data.results
    if not results.get("sets"):
        return []
    test = _find(results)
    notes = []
    if test is not None and (test[1]["metrics"].get("n_images") or 0) < FEW_IMAGES:
        notes.append(Note(f"Only {test[1]['metrics'].get('n_images')} test image(s): the SD, the SDR and any paired "
                          "test between jobs are rough at this size.", "warn"))
    if test is not None and "per_image" not in test[1]["metrics"]:
        notes.append(Note("This job was evaluated by an older medq that kept no per-image errors: no SDR curve, no "
                          "best and worst images, and no paired test against another job.", "warn"))
    if test is not None and _unit(test[1]["metrics"]) == "px":
        notes.append(Note("An image's pixel spacing is unknown, so every error is in pixels of the original image and "
                          "no SDR is given (its radii are millimetres).", "warn"))
    annotator = (data.job.get("spec") or {}).get("annotator", "senior")
    return [Section.of("Test results: MRE and SDR", [*notes, summary_table(results), sdr_figure(results)], data.id),
            Section.of("Per landmark", landmark_blocks(results), data.id),
            Section.of("Best and worst test images", case_blocks(results, annotator), data.id)]


# --- side by side -------------------------------------------------------------------------------


def headline(results: dict[str, Any]) -> list[Metric]:
    found = _find(results)
    if found is None:
        return []
    i, entry = found
    m, unit, p = entry["metrics"], _unit(entry["metrics"]), f"sets.{i}.metrics"
    sdr = m.get("sdr") or []  # none without a pixel spacing (or from an older medq): no SDR rows then
    return [Metric(f"MRE ({unit})", m.get(f"mre_{unit}"), f"{p}.mre_{unit}"),
            Metric(f"SD ({unit})", m.get(f"sd_{unit}"), f"{p}.sd_{unit}"),
            *(Metric(f"SDR {sdr[j]['mm']:g} mm (%)", sdr[j]["percent"], f"{p}.sdr.{j}.percent", 1, False)
              for j in (0, 3) if j < len(sdr))]


def paired_errors(results: dict[str, Any]) -> PairedErrors | None:
    found = _find(results)
    per_image = (found[1]["metrics"].get("per_image") if found else None) or {}
    unit = _unit(found[1]["metrics"]) if found else "mm"
    if not per_image.get(f"mre_{unit}"):
        return None
    return PairedErrors(f"mean radial error ({unit}) per test image",
                        dict(zip(per_image["stems"], per_image[f"mre_{unit}"])), lower_is_better=True)


def curves(results: dict[str, Any]) -> list[CurvePlot] | None:
    found = _find(results)
    curve = _sdr_curve(found[1]["metrics"]) if found else None
    if curve is None:
        return None
    return [CurvePlot("SDR curve, test split", "radius r (mm)", "landmarks within r of the truth (%)",
                      (Curve("", SDR_CURVE_MM, curve),),
                      "Per job: the percentage of the test split's landmarks predicted within r mm; higher is better.")]
