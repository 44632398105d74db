"""Tables and progress bars for people (rich); --json output for scripts."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich import box
from rich.markup import escape
from rich.table import Table

STATE_STYLE = {"queued": "dim", "running": "cyan", "succeeded": "green", "failed": "red", "cancelled": "yellow"}


def _fmt(value: Any, digits: int = 2) -> str:
    """A cell. Text from the store (errors, names, folders) is escaped: rich would read a
    ``[`` in it as markup (a data folder named ``br[/x]`` made ``medq results`` crash)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))


def console(stderr: bool = False) -> Console:
    """A console; 120 columns when the output is not a terminal (a log, a pipe)."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 120)


def _worker(name: str | None) -> str:
    """'cpu1-12345@host' -> 'cpu1@host' (the launcher's pid only keeps node names unique)."""
    if not name:
        return "-"
    node, _, host = name.partition("@")
    return escape(f"{node.split('-')[0]}@{host}" if host else node)


def _state(state: str) -> str:
    return f"[{STATE_STYLE.get(state, '')}]{state}[/]"


def jobs_table(jobs: list[dict]) -> Table:
    table = Table(title="jobs", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("job", "kind", "state", "members", "created", "error"):
        table.add_column(col)
    for job in jobs:
        counts: dict[str, int] = {}
        for m in job.get("members", []):
            counts[m["state"]] = counts.get(m["state"], 0) + 1
        members = " ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        table.add_row(job["job_id"], job["kind"], _state(job["state"]), members, (job["created_at"] or "")[:19],
                      escape((job["error"] or "")[:60]))
    return table


def members_table(job: dict) -> Table:
    title = f"job {job['job_id']} ({job['kind']}): {job['state']}"
    if job.get("cancel_requested") and job["state"] == "running":
        title += " (cancelling)"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    scored = job["kind"] == "segment"  # a segmenter's validation figure is its lesion Dice, not pixels
    for col in ("seed", "state", "epoch", "loss", "val loss", "val Dice" if scored else "val px", "img/s", "try",
                "worker", "device"):
        table.add_column(col, justify="left" if col in ("state", "worker", "device") else "right", no_wrap=True)
    for m in job["members"]:
        epoch = f"{m['epoch']}/{m['total_epochs']}"
        if m["state"] == "running" and m["phase"] == "head":
            epoch += " head"
        table.add_row(str(m["seed"]), _state(m["state"]), epoch, _fmt(m["train_loss"], 4), _fmt(m["val_loss"], 4),
                      _fmt(m.get("val_score"), 3) if scored else _fmt(m["val_error_px"]),
                      _fmt(m["images_per_s"], 1), str(m["attempt"]),
                      _worker(m["worker"]), _fmt(m["device"]))
    return table


METRIC_COLUMNS = (("mean_error_px", "mean px"), ("median_error_px", "median px"), ("p95_error_px", "p95 px"),
                  ("mean_error_px_224", "mean px@224"), ("normalised_error", "norm. err"))


def results_table(results: dict) -> Table:
    table = Table(title=f"job {results['job_id']}: {results['state']} (test split)", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    table.add_column("model")
    table.add_column("state")
    for _, label in METRIC_COLUMNS:
        table.add_column(label, justify="right")
    for m in results["members"]:
        metrics = m["metrics"] or {}
        table.add_row(f"seed {m['seed']}", _state(m["state"]),
                      *(_fmt(metrics.get(key), 4 if key == "normalised_error" else 2) for key, _ in METRIC_COLUMNS))
    for e in results["ensemble"]:
        table.add_row(f"ensemble ({e['aggregation']})", "", *(
            _fmt(e["metrics"].get(key), 4 if key == "normalised_error" else 2) for key, _ in METRIC_COLUMNS),
            style="bold")
    return table


def per_category_table(results: dict) -> Table | None:
    best = next((e for e in results["ensemble"] if e["aggregation"] == "mean"), None)
    if not best or "per_category" not in best["metrics"]:
        return None
    table = Table(title="ensemble (mean) by category", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("category", "images", "mean px", "mean px@224"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for name, row in sorted(best["metrics"]["per_category"].items()):
        table.add_row(_fmt(name), str(row["n_images"]), _fmt(row["mean_error_px"]), _fmt(row["mean_error_px_224"]))
    return table


SDR_KEYS = ("sdr_2mm", "sdr_2.5mm", "sdr_3mm", "sdr_4mm")


def sets_table(results: dict) -> Table:
    """A single-model job's evaluation sets: MRE ± SD and SDR (in pixels when a spacing is unknown)."""
    table = Table(title=f"job {results['job_id']}: {results['state']}", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("set", "images", "checkpoints", "MRE ± SD", "SDR 2 mm", "2.5 mm", "3 mm", "4 mm"):
        table.add_column(col, justify="left" if col == "set" else "right")
    for entry in results["sets"]:
        m, unit = entry["metrics"], entry["metrics"].get("unit", "mm")
        table.add_row(_fmt(entry["name"]), str(m.get("n_images", "")), str(m.get("checkpoints", "")),
                      f"{_fmt(m.get(f'mre_{unit}'))} ± {_fmt(m.get(f'sd_{unit}'))} {unit}",
                      *(f"{100 * m[k]:.1f} %" if k in m else "-" for k in SDR_KEYS))
    return table


def per_landmark_table(entry: dict) -> Table:
    m = entry["metrics"]
    unit = m.get("unit", "mm")
    table = Table(title=f"{escape(entry['name'])}: per landmark", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("landmark", f"MRE {unit}", f"SD {unit}", "SDR 2 mm", "SDR 4 mm"):
        table.add_column(col, justify="left" if col == "landmark" else "right")
    for row in m.get("per_landmark", []):
        table.add_row(row["landmark"], _fmt(row.get(f"mre_{unit}")), _fmt(row.get(f"sd_{unit}")),
                      *(f"{100 * row[k]:.1f} %" if k in row else "-" for k in ("sdr_2mm", "sdr_4mm")))
    return table


SEG_COLUMNS = (("dice_per_image", "Dice (per slice)"), ("dice_pooled", "Dice (pooled)"),
               ("iou_per_image", "IoU (per slice)"), ("iou_pooled", "IoU (pooled)"))
LESION_CLASSES = ("ground_glass", "consolidation")


def seg_table(entry: dict) -> Table:
    """One evaluation set of a segmentation job: lesion classes, their mean, then lung and background."""
    m = entry["metrics"]
    split = m.get("split_by")
    title = f"{escape(entry['name'])}: {m.get('n_images', '?')} slices" + (f" (split by {split})" if split else "")
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("class")
    for _, label in SEG_COLUMNS:
        table.add_column(label, justify="right")
    table.add_column("slices empty in both", justify="right")
    per_class = m.get("per_class", {})
    for name in [*LESION_CLASSES, None, *(c for c in per_class if c not in LESION_CLASSES)]:
        if name is None:
            table.add_row("lesion mean", *(_fmt(m["lesion_mean"].get(k), 3) for k, _ in SEG_COLUMNS), "",
                          style="bold", end_section=True)
        elif name in per_class:
            row = per_class[name]
            table.add_row(name.replace("_", " "), *(_fmt(row.get(k), 3) for k, _ in SEG_COLUMNS),
                          str(row.get("empty_images", "")))
    return table


def print_seg_results(console: Console, results: dict) -> None:
    if not results["sets"]:
        console.print(f"job {results['job_id']}: {results['state']}; no results yet")
        return
    console.print(f"job {results['job_id']}: {results['state']}")
    for entry in results["sets"]:
        console.print(seg_table(entry))
    first = results["sets"][0]["metrics"]
    for name, text in first.get("reductions", {}).items():
        console.print(f"  {escape(name)}: {escape(str(text))}")
    if first.get("split_by") == "slice":
        console.print("  [yellow]split by slice (no volume ids given): slices of one scan can sit in both training "
                      "and test[/]")
    if first.get("overlays"):
        console.print(f"  review overlays (slice | truth | prediction | lesion TP yellow, FP red, FN green): "
                      f"{escape(str(first['overlays']))}")


def print_results(console: Console, results: dict) -> None:
    if results.get("kind") == "segment":
        print_seg_results(console, results)
    elif results.get("sets"):
        console.print(sets_table(results))
        console.print(per_landmark_table(results["sets"][0]))
    elif results.get("kind") == "ensemble" or results.get("ensemble"):
        console.print(results_table(results))
        extra = per_category_table(results)
        if extra is not None:
            console.print(extra)
    else:
        console.print(f"job {results['job_id']}: {results['state']}; no results yet")
    if results.get("error"):
        console.print(f"[red]{escape(results['error'])}[/]")
