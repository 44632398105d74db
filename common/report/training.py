"""The part of a report every training job has, whatever its family: what was trained on what
(spec, data, split, code version), where and how long each member ran (worker, device,
attempts, resumes), its learning curves from the history table, and its throughput."""

from __future__ import annotations

from medq.common.report import plots
from medq.common.report.data import JobData
from medq.common.report.page import (
    Cell, Curve, CurvePlot, Figure, Note, Section, Table, clock, duration, seconds_between,
)



def spec_table(data: JobData) -> Table:
    spec = data.job["spec"] or {}
    def text(value):  # as given: 2e-05 stays 2e-05, never rounded to 0.00
        if isinstance(value, (list, tuple)):
            return ", ".join(map(text, value))
        if isinstance(value, dict):
            return ", ".join(f"{k}={text(v)}" for k, v in value.items())
        return "–" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))

    rows = [(key, text(value)) for key, value in sorted(spec.items())]
    return Table.of("Spec (as stored on the job and in every checkpoint)", ("field", "value"), rows)


def facts_table(data: JobData, title: str) -> Table:
    plan, job = data.plan, data.job
    split = plan.get("split") or {}
    sizes = ", ".join(f"{part} {len(split[part])}" for part in ("train", "val", "test") if part in split)
    extra = [(f"test set {name.rsplit('/', 1)[-1]}", f"{n} images") for name, n in (plan.get("test_images") or {}).items()]
    rows = [("job", job["job_id"]), ("family", title), ("state", job["state"]),
            ("data folder", plan.get("data_dir", "–")), ("images", plan.get("n_images", "–")),
            ("split", sizes or "–"), *([("split by", plan["split_by"])] if "split_by" in plan else []), *extra,
            ("code version", plan.get("code_version", "not recorded (submitted by medq < 0.1.0 of this report)")),
            ("created", clock(job["created_at"])), ("started", clock(job["started_at"])),
            ("finished", clock(job["finished_at"]) if job["finished_at"] else "still running"),
            ("wall time", duration(seconds_between(job["started_at"], job["finished_at"])))]
    if job.get("error"):
        rows.append(("error", job["error"]))
    return Table.of("Job", ("", ""), rows)


def members_table(data: JobData, metric_column: str, metric_label: str) -> Table:
    rows = []
    for i, member in enumerate(data.job["members"]):
        tries = data.attempts.get(member["seed"], [])
        resumes = sum(1 for a in tries if a["start_epoch"])
        workers = sorted({a["worker"] for a in tries if a["worker"]})
        devices = sorted({a["device"] for a in tries if a["device"]})
        history = data.results["members"][i]["history"] if i < len(data.results.get("members", [])) else []
        rows.append((
            Cell(member["seed"]), Cell(member["state"]), Cell(", ".join(workers) or "–"), Cell(", ".join(devices) or "–"),
            Cell(clock(member["started_at"])), Cell(clock(member["finished_at"])),
            Cell(duration(seconds_between(member["started_at"], member["finished_at"]))),
            Cell(data.results["members"][i]["attempts"], path=f"members.{i}.attempts"), Cell(resumes),
            Cell(len(history), path=None), Cell(member.get(metric_column), 3),
            Cell(_mean([e["images_per_s"] for e in history]), 1)))
    return Table.of("Members: where and how long each ran",
                    ("seed", "state", "worker", "device", "started", "finished", "wall", "attempts", "resumes",
                     "epochs", f"best {metric_label}", "images/s"), rows,
                    note="images/s: training images per second, mean over the member's epochs (the history table). "
                         "A resume is an attempt that started from a checkpoint. Best: the validation figure of the "
                         "epoch model selection kept (while a member runs: its latest epoch's).")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _line(history: list[dict], values, label: str, style: str = "-", color: str | None = None) -> Curve | None:
    points = [(float(e["epoch"]), v) for e, v in zip(history, values) if v is not None]
    if not points:
        return None
    return Curve(label, tuple(p[0] for p in points), tuple(p[1] for p in points), style, color)


def _group(name: str) -> str:
    return f"group {name}" if name.isdigit() else name


def learning_curves(data: JobData, labels: dict[str, str] | None = None) -> list:
    """Every member in one figure, one colour per seed: training (solid) and validation (dashed)
    loss, each validation metric, and the learning rate of each parameter group."""
    members = [(m["seed"], m.get("history") or []) for m in data.results.get("members", [])]
    blocks = [Note(f"seed {seed}: no epoch finished yet") for seed, history in members if not history]
    members = [(seed, history) for seed, history in members if history]
    if not members:
        return blocks
    losses, metrics, rates = [], {}, []
    for i, (seed, history) in enumerate(members):
        color = f"C{i % 10}"
        losses += [_line(history, [e["train_loss"] for e in history], f"seed {seed} train", "-", color),
                   _line(history, [e["val_loss"] for e in history], f"seed {seed} val", "--", color)]
        for name in sorted({n for e in history for n in (e["metrics"] or {})}):
            metrics.setdefault(name, []).append(
                _line(history, [(e["metrics"] or {}).get(name) for e in history], f"seed {seed}", "-", color))
        groups = sorted({g for e in history for g in (e["lrs"] or {})}, key=lambda g: (not g.isdigit(), g.zfill(4)))
        if i == 0 or [e["lrs"] for e in history] != [e["lrs"] for e in members[0][1]][:len(history)]:
            rates += [_line(history, [(e["lrs"] or {}).get(g) for e in history],
                            f"seed {seed} {_group(g)}" if i else _group(g), ("-", "--", ":")[j % 3],
                            color) for j, g in enumerate(groups)]
    panels = [CurvePlot("loss (solid: train, dashed: validation)", "epoch", "loss", tuple(c for c in losses if c))]
    labels = labels or {}
    panels += [CurvePlot(labels.get(name, name), "epoch", labels.get(name, name),
                         tuple(c for c in lines if c)) for name, lines in metrics.items()]
    rates = [Curve(c.label, *zip(*[(x, y) for x, y in zip(c.x, c.y) if y > 0]), c.style, c.color)
             for c in rates if c and any(y > 0 for y in c.y)]  # a log axis: a schedule that ends at 0 loses that point
    if rates:
        panels.append(CurvePlot("learning rate", "epoch", "learning rate", tuple(rates)))
    n_epochs = max(len(history) for _, history in members)
    phases: list[str] = []
    for _, history in members:
        for e in history:
            if e["phase"] and e["phase"] not in phases:
                phases.append(e["phase"])
    blocks.append(plots.panels(
        "Learning curves", panels,
        f"Every finished epoch of every member (up to {n_epochs}; phases: {', '.join(phases) or '–'}), one colour "
        "per seed. Loss is the training objective: mean over the epoch's training batches (solid) and on the "
        "validation split after the epoch (dashed). The validation metric is the one model selection used. "
        "Learning rate per optimiser parameter group (by the family's name for it, e.g. head and backbone) at the end "
        "of each epoch (log scale; drawn once when every "
        "seed shares it).",
        logy=(False, *(False,) * len(metrics), bool(rates))))
    return blocks


def throughput(data: JobData) -> Figure | None:
    curves = []
    for member in data.results.get("members", []):
        history = member.get("history") or []
        points = [(float(e["epoch"]), e["images_per_s"]) for e in history if e["images_per_s"] is not None]
        if points:
            curves.append(Curve(f"seed {member['seed']}", tuple(p[0] for p in points), tuple(p[1] for p in points)))
    if not curves:
        return None
    return plots.curves(CurvePlot("Training throughput", "epoch", "training images / s", tuple(curves),
                                  "Images per second of training steps in each epoch (validation not counted), "
                                  "per member; a drop marks a slower device or a shared host."), markers=True)


def sections(data: JobData, title: str, metric_column: str, metric_label: str,
             history_labels: dict[str, str] | None = None) -> list[Section]:
    return [
        Section.of(f"Training job {data.id}", [facts_table(data, title), members_table(data, metric_column, metric_label),
                                              spec_table(data)], data.id),
        Section.of("Learning curves and throughput", [*learning_curves(data, history_labels), throughput(data)], data.id),
    ]

