"""Output of inference jobs: the per-study rows (``medq results``' CSV, JSON lines, Parquet), the failure list."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from medq.common.families.base import Family


def job_family(spec: dict, plan: dict) -> Family:
    """The family of an inference job's model: as planned, else read from its first checkpoint."""
    from medq.common.families import registry

    kind = plan.get("family")
    return registry.family(kind) if kind else registry.family_of_checkpoint(Path(spec["checkpoints"][0]))


def study_rows(studies: Iterable, family: Family, sends_of=None) -> Iterator[list]:
    """Each study's row under the family's columns, streamed. ``sends_of(study ids)``: each
    study's sends to the PACS, attached as ``study.sends``, asked once per thousand studies."""
    for batch in _batches(studies, 1000):
        found = sends_of([study.id for study in batch]) if sends_of else {}
        for study in batch:
            study.sends = found.get(study.id, [])
            yield family.inference.csv_row(study)


def _batches(items: Iterable, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def summary_lines(view: dict, timezone: str = "") -> list[str]:
    """The lines of `medq status JOB` for an inference job; ``timezone``: the zone its window is read in."""
    s = view["studies"]
    zone = f" {timezone}" if timezone else ""
    lines = [f"job {view['job_id']} (infer, priority {view['priority']}"
             + (f", window {view['window']}{zone}" + (" lifted" if view["window_lifted"] else "")
                if view["window"] else "")
             + f"): {view['state']}",
             f"studies: {s['total']} total, {s['done']} done, {s['failed']} failed, {s['skipped']} skipped, "
             f"{s['remaining']} remaining; {s['review']} flagged for review",
             "chunks: " + ", ".join(f"{n} {state}" for state, n in sorted(view["chunks"].items()))]
    if view.get("send_to"):
        sent = view.get("sends") or {}
        lines.append(f"sent to {view['send_to']}: {sent.get('accepted', 0)} accepted, {sent.get('failed', 0)} failed, "
                     f"{sent.get('pending', 0)} pending (DICOM outputs)")
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
