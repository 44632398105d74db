"""The CT lesion family's part of a report (``Family.report_sections`` and the side-by-side
hooks), from a job's results as `medq results JOB --json` gives them: Dice and IoU per class
with both reductions named, the per-slice Dice distributions, the trained model beside the same
network untrained, and the review overlays the evaluation wrote.

Every figure of a table is a ``Cell`` with its path in those results (``sets.<i>.metrics...``).
Torch-free; imported by ``family.py`` only when a report is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medq.common import subjects
from medq.common.families.ct_lesions.schema import CLASSES, LESION_CLASSES, UNTRAINED
from medq.common.report import plots
from medq.common.report.data import find_set
from medq.common.report.page import Cell, Curve, CurvePlot, Figure, Metric, Note, PairedErrors, Section, Table

TEST = subjects.TEST_SET
THRESHOLDS = tuple(float(t) for t in np.round(np.linspace(0.0, 1.0, 101), 2))
REDUCTIONS = (("dice_per_image", "Dice, per-slice mean"), ("dice_pooled", "Dice, pooled"),
              ("iou_per_image", "IoU, per-slice mean"), ("iou_pooled", "IoU, pooled"))
OVERLAY_MIN_PX = 768  # overlays narrower than this are enlarged for the page
RULES = {"one": "counts as Dice 1 and IoU 1 (a correct \u201cnothing here\u201d)",
         "skip": "is left out of that class's per-slice mean"}


def _find(results: dict[str, Any], name: str) -> tuple[int, dict] | None:
    found = find_set(results, name)
    return None if found is None else (found[0], found[1]["metrics"])


def _classes(metrics: dict) -> list[str]:
    """Lesion classes first, then the rest (other lung, background), in the family's class order
    (not the stored one: PostgreSQL's jsonb keeps keys in an order of its own)."""
    names = list(metrics.get("per_class") or {})
    known = [c for c in (*LESION_CLASSES, *CLASSES) if c in names]
    return list(dict.fromkeys(known)) + sorted(c for c in names if c not in CLASSES)


def _pretty(name: str) -> str:
    return name.replace("_", " ")


def _rule(metrics: dict) -> str:
    return metrics.get("empty_rule") or ("skip" if "'skip'" in (metrics.get("reductions") or {}).get("per_image", "")
                                         else "one")


def _values(values) -> list[float]:
    return [float(v) for v in values or [] if v is not None]


def _at_least(values: list[float]) -> tuple[float, ...]:
    """The fraction of ``values`` at or above each threshold."""
    if not values:
        return tuple(0.0 for _ in THRESHOLDS)
    array = np.asarray(values)
    return tuple(float(v) for v in (array[None, :] >= np.asarray(THRESHOLDS)[:, None]).mean(axis=1))


# --- sections -------------------------------------------------------------------------------------


def class_table(i: int, m: dict) -> Table:
    p = f"sets.{i}.metrics"
    rows = []
    for name in _classes(m):
        row = m["per_class"][name]
        rows.append((Cell(_pretty(name)), *(Cell(row.get(k), 3, f"{p}.per_class.{name}.{k}") for k, _ in REDUCTIONS),
                     Cell(row.get("empty_images"), path=f"{p}.per_class.{name}.empty_images")))
        if name == LESION_CLASSES[-1] and "lesion_mean" in m:
            rows.append((Cell("lesion mean", bold=True),
                         *(Cell(m["lesion_mean"].get(k), 3, f"{p}.lesion_mean.{k}", bold=True) for k, _ in REDUCTIONS),
                         Cell("")))
    n = m.get("n_images")
    return Table(f"Dice and IoU per class, trained model on the {n} test slices",
                 ("class", *(label for _, label in REDUCTIONS), "slices with the class in neither mask"), tuple(rows),
                 note=f"Two reductions. Per-slice mean: the Dice (or IoU) of each test slice, then the mean over the "
                      f"slices, so every slice weighs the same. Pooled: true positive, false positive and false "
                      f"negative pixels summed over all {n} slices first, then one ratio, so large lesions weigh more. "
                      f"A slice where a class is in neither the truth nor the prediction {RULES[_rule(m)]} "
                      f"(rule '{_rule(m)}'); it adds nothing to the pooled figure. Lesion mean: the mean of the "
                      f"ground glass and consolidation figures. Dice = 2TP / (2TP + FP + FN), "
                      "IoU = TP / (TP + FP + FN); 1 is a perfect match, 0 no overlap.")


def baseline_table(results: dict[str, Any]) -> Table | Note:
    trained, untrained = _find(results, TEST), _find(results, UNTRAINED)
    if trained is None or untrained is None:
        return Note("No untrained baseline: the evaluation found no initial weights (init.pt) beside the checkpoint.",
                    "warn")
    (i, m), (j, u) = trained, untrained
    rows = []
    keys = [("per_class", name) for name in _classes(m)]
    keys.insert(len([c for c in LESION_CLASSES if c in m.get("per_class", {})]), ("lesion_mean", None))
    for group, name in keys:
        tail = f"{group}.{name}" if name else group
        a, b = (m[group][name] if name else m[group]), (u[group].get(name, {}) if name else u[group])
        cells = [Cell(_pretty(name) if name else "lesion mean", bold=name is None)]
        for key in ("dice_pooled", "dice_per_image"):
            gain = None if a.get(key) is None or b.get(key) is None else a[key] - b[key]
            cells += [Cell(a.get(key), 3, f"sets.{i}.metrics.{tail}.{key}"),
                      Cell(b.get(key), 3, f"sets.{j}.metrics.{tail}.{key}"),
                      Cell(gain, 3, bold=gain is not None and gain > 0)]
        rows.append(tuple(cells))
    return Table("Trained model beside the untrained baseline (Dice, test slices)",
                 ("class", "pooled: trained", "untrained", "gain", "per-slice mean: trained", "untrained", "gain"),
                 tuple(rows),
                 note="Untrained: the same network with its weights before the first training step, on the same test "
                      "slices; what it scores comes from class sizes and chance. Gain = trained − untrained (bold "
                      "when positive). A trained model should clear it by a wide margin, most of all on the lesions.")


def distribution_figures(results: dict[str, Any]) -> list:
    trained, untrained = _find(results, TEST), _find(results, UNTRAINED)
    if trained is None or "per_slice" not in trained[1]:
        return [Note("No per-slice Dice in this job's results (evaluated by an older medq): no distributions and no "
                     "paired test against another job.", "warn")]
    m, u = trained[1], (untrained[1] if untrained else {})
    n, rule = len(m["per_slice"]["ids"]), RULES[_rule(m)]
    figures = []
    for title, names in (("lesion classes", [c for c in _classes(m) if c in LESION_CLASSES]),
                         ("other lung and background", [c for c in _classes(m) if c not in LESION_CLASSES])):
        groups: dict[str, list[float]] = {}
        for name in names:
            groups[f"{_pretty(name)}\ntrained"] = _values(m["per_slice"]["dice"].get(name))
            if "per_slice" in u:
                groups[f"{_pretty(name)}\nuntrained"] = _values(u["per_slice"]["dice"].get(name))
        if any(groups.values()):
            figures.append(plots.boxes(
                f"Per-slice Dice, {title}: trained and untrained", groups, ylabel="Dice of one test slice",
                caption=f"Each box: the Dice of the {n} test slices for one class, the trained model beside the "
                        f"untrained baseline. Orange line: median; green triangle: mean (the per-slice mean of the "
                        f"table); box: the middle half of the slices; whiskers: up to 1.5 box lengths; circles: "
                        f"slices beyond. A slice where the class is in neither mask {rule}."))
    lines = [Curve("trained", THRESHOLDS, _at_least(_values(m["per_slice"]["lesion_dice"])))]
    if "per_slice" in u:
        lines.append(Curve("untrained", THRESHOLDS, _at_least(_values(u["per_slice"]["lesion_dice"]))))
    curve = plots.curves(CurvePlot(
        "Test slices reaching a lesion Dice", "lesion Dice threshold t", "fraction of test slices with lesion Dice ≥ t",
        tuple(lines), "Lesion Dice of a slice: the mean of its ground-glass and consolidation Dice. Read a point "
                      "(t, y) as: a fraction y of the test slices reach a lesion Dice of at least t. Higher and further "
                      "right is better; a perfect model stays at 1 up to t = 1."), ylim=(0, 1.02))
    return [*figures, curve]


def _slice_names(plan: dict[str, Any]) -> dict[int, str]:
    """Global slice index -> "<file> slice <index within it>" (the plan's sources, in order)."""
    names, start = {}, 0
    for source in plan.get("sources") or []:
        for k in range(int(source["n"])):
            names[start + k] = f"images_{source['name']}.npy slice {k}"
        start += int(source["n"])
    return names


def _overlay(title: str, path: Path, caption: str):
    """A review overlay as the job wrote it; one narrower than ``OVERLAY_MIN_PX`` enlarged by a
    whole factor (nearest neighbour: every pixel stays a visible square, nothing is smoothed)."""
    figure = plots.png_file(title, path, caption)
    if figure is None:
        return None
    import io

    from PIL import Image

    with Image.open(path) as image:
        factor = OVERLAY_MIN_PX // max(image.width, 1)
        if factor < 2:
            return figure
        buffer = io.BytesIO()
        image.resize((image.width * factor, image.height * factor), Image.NEAREST).save(buffer, format="PNG")
    return Figure(title, plots.data_uri(buffer.getvalue()), caption + f" Shown {factor}× enlarged.", title)


def overlay_blocks(results: dict[str, Any], plan: dict[str, Any]) -> list:
    found = _find(results, TEST)
    if found is None:
        return []
    i, m = found
    folder = m.get("overlays")
    files = sorted((f for f in Path(folder).glob("slice-*.png") if f.stem.split("-", 1)[1].isdigit()),
                   key=lambda f: int(f.stem.split("-", 1)[1])) if folder else []  # a stray file is not a slice
    if not files:
        why = f"the folder {folder} is gone or empty" if folder else "the evaluation wrote none"
        return [Note(f"No review overlays: {why} (they are written beside the checkpoint; a moved or cleaned "
                     "artifacts folder loses them).", "warn")]
    per_slice, names = m.get("per_slice") or {}, _slice_names(plan)
    ids = per_slice.get("ids") or []
    p = f"sets.{i}.metrics.per_slice"
    rows, figures = [], []
    for file in files:
        index = int(file.stem.split("-", 1)[1])
        cells = [Cell(index), Cell(names.get(index, "–"))]
        if index in ids:
            k = ids.index(index)
            cells += [Cell(per_slice["dice"][c][k], 3, f"{p}.dice.{c}.{k}") for c in LESION_CLASSES
                      if c in per_slice["dice"]]
            cells.append(Cell(per_slice["lesion_dice"][k], 3, f"{p}.lesion_dice.{k}", bold=True))
        else:  # results from an older medq: no per-slice Dice
            cells += [Cell(None)] * (len(LESION_CLASSES) + 1)
        rows.append(tuple(cells))
        figures.append(_overlay(f"Slice {index} ({names.get(index, 'test slice')})", file,
                                "Left to right: 1 the slice in the lung window; 2 the truth; 3 the prediction; "
                                "4 lesion agreement (yellow both, red predicted only, green missed)."))
    return [Note("The test slices with the most lesion (truth or prediction), as the evaluation drew them. Panels, "
                 "left to right: the CT slice (lung window, −1350 to 150 HU); the truth; the prediction (ground glass "
                 "orange, consolidation magenta, other lung blue); lesion agreement over the slice (yellow: lesion in "
                 "both, red: predicted only, false positive; green: missed, false negative)."),
            Table("Review overlay slices", ("slice", "file", *(f"Dice {_pretty(c)}" for c in LESION_CLASSES),
                                            "lesion Dice"), tuple(rows),
                  note="Slice: its index among all slices of the data folder, files in order."),
            *[f for f in figures if f is not None]]


def sections(data: Any) -> list[Section]:
    results = data.results
    found = _find(results, TEST)
    if found is None:
        return []
    i, m = found
    notes = []
    if m.get("split_by") == "slice":
        notes.append(Note("Split by slice (the data gave no volume ids): slices of one scan can sit in both training "
                          "and test, so these figures can be optimistic.", "warn"))
    return [Section.of("Test results: Dice and IoU per class", [*notes, class_table(i, m)], data.id),
            Section.of("Trained model beside the untrained baseline",
                       [baseline_table(results), *distribution_figures(results)], data.id),
            Section.of("Review overlays", overlay_blocks(results, data.plan), data.id)]


# --- side by side -------------------------------------------------------------------------------


def headline(results: dict[str, Any]) -> list[Metric]:
    found = _find(results, TEST)
    if found is None:
        return []
    i, m = found
    lesion = m.get("lesion_mean") or {}
    return [Metric(f"lesion {label}", lesion.get(key), f"sets.{i}.metrics.lesion_mean.{key}", 3, False)
            for key, label in (REDUCTIONS[1], REDUCTIONS[0], REDUCTIONS[3], REDUCTIONS[2])]


def paired_errors(results: dict[str, Any]) -> PairedErrors | None:
    found = _find(results, TEST)
    per_slice = (found[1].get("per_slice") if found else None) or {}
    if not per_slice.get("ids"):
        return None
    return PairedErrors("lesion Dice per test slice (mean of ground glass and consolidation)",
                        {str(k): v for k, v in zip(per_slice["ids"], per_slice["lesion_dice"]) if v is not None},
                        lower_is_better=False)


def curves(results: dict[str, Any]) -> list[CurvePlot] | None:
    found = _find(results, TEST)
    per_slice = (found[1].get("per_slice") if found else None) or {}
    if not per_slice.get("ids"):
        return None
    return [CurvePlot("Test slices reaching a lesion Dice", "lesion Dice threshold t",
                      "fraction of test slices with lesion Dice ≥ t",
                      (Curve("", THRESHOLDS, _at_least(_values(per_slice["lesion_dice"]))),),
                      "Per job: the fraction of the test slices whose lesion Dice is at least t; higher is better.")]
