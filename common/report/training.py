"""The part of a report every training job has, whatever its family: what was trained on what
(spec, data, split, code version), where and how long each member ran (worker, device,
attempts, resumes), its learning curves from the history table, and its throughput."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from medq.common.report import plots
from medq.common.report.data import JobData
from medq.common.report.page import Cell, Curve, CurvePlot, Figure, Note, Section, Table

METRIC_LABELS = {"val_error_px": "val error (px)", "val_mre_mm": "val MRE (mm)", "val_lesion_dice": "val lesion Dice"}


def _time(value: Any) -> str:
    if value is None:
        return "–"
    value = datetime.fromisoformat(value) if isinstance(value, str) else value
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _wall(start: Any, end: Any) -> float | None:
    if not start or not end:
        return None
    start = datetime.fromisoformat(start) if isinstance(start, str) else start
    end = datetime.fromisoformat(end) if isinstance(end, str) else end
    return (end - start).total_seconds()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def spec_table(data: JobData) -> Table:
    spec = data.job["spec"] or {}
    rows = [(key, ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else
             (", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value))
            for key, value in sorted(spec.items())]
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
            ("created", _time(job["created_at"])), ("started", _time(job["started_at"])),
            ("finished", _time(job["finished_at"]) if job["finished_at"] else "still running"),
            ("wall time", _duration(_wall(job["started_at"], job["finished_at"])))]
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
            Cell(_time(member["started_at"])), Cell(_time(member["finished_at"])),
            Cell(_duration(_wall(member["started_at"], member["finished_at"]))),
            Cell(data.results["members"][i]["attempts"], path=f"members.{i}.attempts"), Cell(resumes),
            Cell(len(history), path=None), Cell(member.get(metric_column), 3),
            Cell(_mean([e["images_per_s"] for e in history]), 1)))
    return Table.of("Members: where and how long each ran",
                    ("seed", "state", "worker", "device", "started", "finished", "wall", "attempts", "resumes",
                     "epochs", f"best {metric_label}", "images/s"), rows,
                    note="images/s: training images per second, mean over the member's epochs (the history table). "
                         "A resume is an attempt that started from a checkpoint.")


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def learning_curves(data: JobData) -> list:
    """Per member: train and validation loss, the validation metric(s), the learning rate(s)."""
    blocks = []
    for i, member in enumerate(data.results.get("members", [])):
        history = member.get("history") or []
        if not history:
            blocks.append(Note(f"seed {member['seed']}: no epoch finished yet"))
            continue
        epochs = tuple(float(e["epoch"]) for e in history)

        def line(label, values):
            points = [(x, v) for x, v in zip(epochs, values) if v is not None]
            return Curve(label, tuple(p[0] for p in points), tuple(p[1] for p in points)) if points else None

        losses = [c for c in (line("train", [e["train_loss"] for e in history]),
                              line("validation", [e["val_loss"] for e in history])) if c]
        names = sorted({name for e in history for name in (e["metrics"] or {})})
        metric_lines = [c for c in (line(METRIC_LABELS.get(n, n), [(e["metrics"] or {}).get(n) for e in history])
                                    for n in names) if c]
        groups = sorted({g for e in history for g in (e["lrs"] or {})}, key=int)
        lr_lines = [c for c in (line(f"group {g}", [(e["lrs"] or {}).get(g) for e in history]) for g in groups) if c]
        phases = sorted({e["phase"] for e in history if e["phase"]}, key=[e["phase"] for e in history].index)
        panels = [CurvePlot("loss", "epoch", "loss", tuple(losses))]
        if metric_lines:
            panels.append(CurvePlot("validation metric", "epoch", "value", tuple(metric_lines)))
        if lr_lines:
            panels.append(CurvePlot("learning rate", "epoch", "lr", tuple(lr_lines)))
        blocks.append(plots.panels(
            f"Seed {member['seed']}: learning curves", panels,
            f"Per finished epoch ({len(history)}; phases {', '.join(phases) or '–'}). Loss: the training objective "
            "on the training split (mean over the epoch) and on the validation split; the validation metric is "
            "what model selection used; learning rate per optimiser parameter group at the end of the epoch.",
            logy=(False, False, True)))
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


def sections(data: JobData, title: str, metric_column: str, metric_label: str) -> list[Section]:
    return [
        Section.of(f"Training job {data.id}", [facts_table(data, title), members_table(data, metric_column, metric_label),
                                              spec_table(data)], data.id),
        Section.of("Learning curves and throughput", [*learning_curves(data), throughput(data)], data.id),
    ]

