"""The morning report of a bulk inference job: what became of the night's studies, why some
failed, which need a human look, how fast it ran, and what the model measured.

Everything is aggregated by the database, in constant memory whatever the archive's size:
counts with GROUP BY, throughput in time buckets grouped in SQL, each distribution a fixed-bin
histogram computed in SQL from its min and max; only the first few flagged studies are read as
rows. SQLite and PostgreSQL spell epoch seconds, the floor and a JSON list's largest value
differently: the small SQL constructs below say how. Figures that ``medq results JOB --json``
also gives (``views.infer_view``) are Cells with their paths. Studies are named by key (the hash
of their archive path) and DICOM UIDs only: a file path may name a patient and never appears.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

from sqlalchemy import Float, Integer, func, literal, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from medq.common.report import plots
from medq.common.report.data import JobData
from medq.common.report.page import Cell, Figure, Note, Section, Table, clock, duration, seconds_between
from medq.common.store.db import Store
from medq.common.store.models import Chunk, Study

FLAGGED_SHOWN = 50  # rows of the review list; the CSV has every one
REASONS_SHOWN = 25
BINS = 30
MAX_BUCKETS = 720  # throughput: one bucket a minute up to 12 hours of studies, wider beyond
CHUNK_STATES = ("succeeded", "running", "queued", "waiting", "failed", "cancelled")


# --- the SQL that SQLite and PostgreSQL spell differently ------------------------------------------


class epoch_seconds(FunctionElement):
    """Seconds since 1970 of a timestamp column (stored as naive UTC), as a float."""

    type = Float()
    inherit_cache = True
    name = "epoch_seconds"


@compiles(epoch_seconds)
def _epoch_sqlite(element, compiler, **kw) -> str:  # julianday keeps the fractions of a second
    return f"((julianday({compiler.process(element.clauses, **kw)}) - 2440587.5) * 86400.0)"


@compiles(epoch_seconds, "postgresql")
def _epoch_postgres(element, compiler, **kw) -> str:
    return f"CAST(extract(epoch from {compiler.process(element.clauses, **kw)}) AS double precision)"


class floor_int(FunctionElement):
    """The integer below a non-negative number (a bin or bucket index)."""

    type = Integer()
    inherit_cache = True
    name = "floor_int"


@compiles(floor_int)
def _floor_sqlite(element, compiler, **kw) -> str:  # truncation is the floor of a number >= 0
    return f"CAST({compiler.process(element.clauses, **kw)} AS INTEGER)"


@compiles(floor_int, "postgresql")
def _floor_postgres(element, compiler, **kw) -> str:  # a plain CAST would round
    return f"CAST(floor({compiler.process(element.clauses, **kw)}) AS INTEGER)"


class json_list_max(FunctionElement):
    """The largest number of the JSON list under a key of a JSON column: one parse per row."""

    type = Float()
    inherit_cache = True
    name = "json_list_max"


@compiles(json_list_max)
def _list_max_sqlite(element, compiler, **kw) -> str:
    column, key = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"(SELECT max(value) FROM json_each({column}, '$.' || {key}))"


@compiles(json_list_max, "postgresql")
def _list_max_postgres(element, compiler, **kw) -> str:
    column, key = (compiler.process(clause, **kw) for clause in element.clauses)
    return (f"(SELECT max(CAST(item AS double precision)) "
            f"FROM jsonb_array_elements_text({column} -> CAST({key} AS TEXT)) AS item)")  # jsonb since 0010


@dataclass(frozen=True)
class Histogram:
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    n: int
    mean: float
    low: float
    high: float


def histogram(s, x: ColumnElement, where: Sequence[Any], bins: int = BINS) -> Histogram | None:
    """Equal-width bins of ``x`` from its min to its max over the rows of ``where`` (the max goes
    in the last bin, as in numpy's histogram): two queries, no row read. None: no value."""
    # OFFSET 0 keeps both databases from merging the subquery into the outer query, where x (a
    # JSON parse) would be computed once per aggregate; the subquery streams, nothing is stored
    values = select(x.label("v")).where(*where).offset(0).subquery()
    v = values.c.v
    n, low, high, mean = s.execute(select(func.count(v), func.min(v), func.max(v), func.avg(v))).one()
    if not n:
        return None
    low, high, mean = float(low), float(high), float(mean)
    if high <= low:  # one value: one bin around it
        return Histogram((low - 0.5, low + 0.5), (int(n),), int(n), mean, low, high)
    width = (high - low) / bins
    # v - low >= 0 for every row; the max (index == bins) goes in the last bin
    inner = select(floor_int((v - low) / width).label("bin")).where(v.is_not(None)).subquery()
    counts = [0] * bins
    for b, c in s.execute(select(inner.c.bin, func.count()).group_by(inner.c.bin)):
        counts[min(int(b), bins - 1)] += int(c)
    return Histogram(tuple(low + i * width for i in range(bins + 1)), tuple(counts), int(n), mean, low, high)


def study_value(s, job_id: str, key: str) -> ColumnElement | None:
    """The SQL value of ``key`` in a done study's result: the number, or the largest of a list of
    numbers (one look at one study tells which); None: no such value."""
    done = (Study.job_id == job_id, Study.state == "done")
    sample = s.scalar(select(Study.result[key]).where(*done, Study.result[key].as_string().is_not(None)).limit(1))
    if isinstance(sample, (int, float)) and not isinstance(sample, bool):
        return Study.result[key].as_float()
    if isinstance(sample, list) and sample and all(isinstance(v, (int, float)) for v in sample):
        return json_list_max(Study.result, literal(key))
    return None


# --- what the database says ----------------------------------------------------------------------


def _reasons(s, job_id: str, state: str) -> tuple[list[tuple[str, int]], int]:
    """The most frequent reasons of the job's studies in ``state``, and how many reasons in all."""
    where = (Study.job_id == job_id, Study.state == state)
    n = func.count().label("n")
    rows = s.execute(select(Study.reason, n).where(*where).group_by(Study.reason)
                     .order_by(n.desc(), Study.reason).limit(REASONS_SHOWN)).all()
    distinct = s.scalar(select(func.count(func.distinct(func.coalesce(Study.reason, "")))).where(*where))
    return [(reason or "(no reason recorded)", int(count)) for reason, count in rows], int(distinct or 0)


def _flagged(s, job_id: str) -> list[tuple[Any, ...]]:
    return list(s.execute(select(Study.path_hash, Study.study_uid, Study.series_uid, Study.sop_uid,
                                 Study.result["qc_reasons"])
                          .where(Study.job_id == job_id, Study.qc_flag.is_(True))
                          .order_by(Study.id).limit(FLAGGED_SHOWN)).all())


@dataclass(frozen=True)
class Rate:
    starts: tuple[datetime, ...]  # each bucket's start (UTC)
    width_s: int
    per_state: dict[str, tuple[int, ...]]  # studies per bucket, by the state they ended in


def _rate(s, job_id: str) -> Rate | None:
    """Studies recorded by workers per time bucket (a minute, wider for a run of many hours)."""
    t = epoch_seconds(Study.updated_at)
    where = (Study.job_id == job_id, Study.chunk_index >= 0, Study.state != "pending", Study.updated_at.is_not(None))
    n, first, last = s.execute(select(func.count(), func.min(t), func.max(t)).where(*where)).one()
    if not n:
        return None
    first, last = float(first), float(last)
    width = 60 * max(1, math.ceil((last - first) / 60 / MAX_BUCKETS))
    start = math.floor(first / width) * width  # buckets on whole minutes of the clock
    n_buckets = int((last - start) // width) + 1
    inner = select(floor_int((t - start) / width).label("bucket"), Study.state.label("state")).where(*where).subquery()
    per_state: dict[str, list[int]] = {}
    for bucket, state, count in s.execute(select(inner.c.bucket, inner.c.state, func.count())
                                          .group_by(inner.c.bucket, inner.c.state)):
        per_state.setdefault(state, [0] * n_buckets)[min(int(bucket), n_buckets - 1)] += int(count)
    starts = tuple(datetime.fromtimestamp(start + i * width, timezone.utc) for i in range(n_buckets))
    return Rate(starts, width, {state: tuple(v) for state, v in sorted(per_state.items())})


def _chunk_seconds(s, job_id: str) -> Histogram | None:
    duration = epoch_seconds(Chunk.finished_at) - epoch_seconds(Chunk.started_at)
    return histogram(s, duration, (Chunk.job_id == job_id, Chunk.state == "succeeded",
                                   Chunk.started_at.is_not(None), Chunk.finished_at.is_not(None)))


# --- the page ----------------------------------------------------------------------------------------


def _percent(part: Any, whole: Any) -> float | None:
    return 100.0 * part / whole if isinstance(part, int) and whole else None


def overview(view: dict[str, Any], family_title: str) -> list[Table | Note]:
    studies, spec = view["studies"], view.get("spec") or {}
    rows = [(Cell(label), Cell(studies[key], path=f"studies.{key}"), Cell(_percent(studies[key], of), 1))
            for label, key, of in (("in the archive", "total", studies["total"]),
                                   ("done", "done", studies["total"]), ("failed", "failed", studies["total"]),
                                   ("skipped", "skipped", studies["total"]),
                                   ("not run yet (remaining)", "remaining", studies["total"]),
                                   ("done and flagged for review", "review", studies["done"]))]
    counts = Table("Studies", ("", "studies", "%"), tuple(rows),
                   note="%: of the studies in the archive; for the flagged, of the done studies. Failed: the study "
                        "was read but could not be predicted; skipped: refused before prediction (not an image of "
                        "this model, a duplicate name, done by an earlier job); remaining: not run yet, or its "
                        "chunk failed as a whole (below).")
    checkpoints = spec.get("checkpoints") or []
    window = view.get("window")
    job = Table("Job", ("", ""), (
        (Cell("state"), Cell(view["state"], path="state")),
        (Cell("model"), Cell(f"{family_title}; {len(checkpoints)} checkpoint(s)"
                             + (f" of training job {spec['model_job']}" if spec.get("model_job") else ""))),
        (Cell("aggregation, test-time augmentation"), Cell(f"{spec.get('aggregation', '–')}, {spec.get('tta', '–')}")),
        (Cell("archive"), Cell(spec.get("archive", "–"), path="spec.archive" if "archive" in spec else None)),
        (Cell("priority"), Cell(view.get("priority"), path="priority")),
        (Cell("window (local time)"), Cell(window or "none: runs at once", path="window" if window else None)),
        (Cell("window lifted by medq resume"), Cell(view.get("window_lifted"), path="window_lifted")),
        (Cell("created"), Cell(clock(view.get("created_at")))), (Cell("started"), Cell(clock(view.get("started_at")))),
        (Cell("finished"), Cell(clock(view["finished_at"]) if view.get("finished_at") else "not yet")),
        (Cell("wall time"), Cell(duration(seconds_between(view.get("started_at"), view.get("finished_at"))))),
        (Cell("throughput (studies / s, since it last started)"), Cell(view.get("studies_per_s"), 2, "studies_per_s")),
        (Cell("time left (s)"), Cell(view.get("eta_s"), 0, "eta_s"))))
    chunks = view.get("chunks") or {}
    states = [state for state in CHUNK_STATES if state in chunks] + sorted(set(chunks) - set(CHUNK_STATES))
    chunk_table = Table("Chunks (the units workers run)", ("state", "chunks"),
                        tuple((Cell(state), Cell(chunks[state], path=f"chunks.{state}")) for state in states))
    blocks: list[Table | Note] = [counts, job, chunk_table]
    if view.get("error"):
        blocks.append(Note(view["error"], "error"))
    return blocks


def failures(view: dict[str, Any], failed: tuple[list, int], skipped: tuple[list, int]) -> list[Table | Note]:
    blocks: list[Table | Note] = []
    for state, (rows, distinct), what in (("failed", failed, "Failed studies"), ("skipped", skipped, "Skipped studies")):
        if not rows:
            blocks.append(Note(f"No study {state}."))
            continue
        total = view["studies"][state]
        more = distinct - len(rows)
        blocks.append(Table(f"{what} by reason", ("reason", "studies", f"% of {state}"),
                            tuple((Cell(reason), Cell(n), Cell(_percent(n, total), 1)) for reason, n in rows),
                            note=(f"The {len(rows)} most frequent of {distinct} reasons. " if more > 0 else "")
                            + f"Every {state} study with its reason: medq results {view['job_id']} --failed."))
    chunks = view.get("failed_chunks") or []
    if chunks:
        blocks.append(Table("Chunks that failed as a whole (their studies were not run)", ("chunk", "studies", "why"),
                            tuple((Cell(c["chunk"], path=f"failed_chunks.{i}.chunk"),
                                   Cell(c["studies"], path=f"failed_chunks.{i}.studies"),
                                   Cell(c["error"] or "–", path=f"failed_chunks.{i}.error" if c["error"] else None))
                                  for i, c in enumerate(chunks)),
                            note=f"medq resume {view['job_id']} runs their studies again (and only those)."))
    return blocks


def review(view: dict[str, Any], flagged: list[tuple[Any, ...]]) -> list[Table | Note]:
    if not flagged:
        return [Note("No study is flagged for review.")]
    rows = tuple((Cell(key), Cell(" ".join(uid or "–" for uid in (study, series, sop))),
                  Cell("; ".join(reasons or []) or "–")) for key, study, series, sop, reasons in flagged)
    shown = (f"The first {len(rows)} in archive order; all of them: " if view["studies"]["review"] > len(rows)
             else "All of them, in archive order; also in ")
    return [Table("Studies flagged for review", ("key", "study, series and SOP instance UIDs", "why"), rows,
                  note=shown + f"medq results {view['job_id']} --csv (column review = 1). Key: the hash of the "
                              "study's archive path (the path itself may name a patient and is not shown).")]


def rate_figure(rate: Rate) -> Figure:
    import matplotlib.dates as mdates
    import numpy as np

    fig, ax = plots.plt.subplots(figsize=plots.SIZE)
    per_minute = 60.0 / rate.width_s
    from datetime import timedelta

    edges = [*rate.starts, rate.starts[-1] + timedelta(seconds=rate.width_s)]  # each bucket drawn to its end
    for state, counts in rate.per_state.items():
        ax.step(edges, np.append(counts, counts[-1]) * per_minute, where="post", label=state)
    ax.set_xlim(edges[0], edges[-1])
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel("studies per minute")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, title="studies that ended", title_fontsize=8)
    done = rate.per_state.get("done", ())
    busy = sum(1 for i in range(len(rate.starts)) if any(counts[i] for counts in rate.per_state.values()))
    bucket = "minute" if rate.width_s == 60 else f"{rate.width_s // 60} minutes"
    return plots.finish(fig, "Throughput over the night",
                f"Studies recorded by the workers per {bucket} (shown per minute), by how they ended: "
                f"{sum(done) * per_minute / max(busy, 1):.0f} done per minute on average while it ran, "
                f"{max(done, default=0) * per_minute:.0f} at the peak. A gap is a closed window, a stopped worker "
                "or a job waiting in the queue; a drop, a slower device or a busy host.")


def chunk_figure(h: Histogram, chunk_size: Any) -> Figure:
    minutes = h.high > 180
    scale, unit = (60.0, "min") if minutes else (1.0, "s")
    return plots.histogram(
        "Chunk durations", [e / scale for e in h.edges], h.counts, xlabel=f"wall time of a chunk ({unit})",
        ylabel="chunks",
        caption=f"{h.n} chunks that succeeded (of up to {chunk_size} studies each), from the first start on a "
                f"worker to the end, retries included: mean {h.mean / scale:.3g} {unit}, longest {h.high / scale:.3g} "
                f"{unit}. A long tail is a chunk that was retried or ran on a slower worker.")


def distribution_figure(label: str, h: Histogram) -> Figure:
    return plots.histogram(
        label[0].upper() + label[1:], h.edges, h.counts, xlabel=label, ylabel="studies",
        caption=f"Every done study with this value ({h.n}), in {len(h.counts)} bins of equal width: mean "
                f"{h.mean:.2f}, smallest {h.low:.2f}, largest {h.high:.2f}. Look at the right tail: those studies "
                "are the ones to check first.")


def _family(data: JobData):
    from medq.common.errors import MedqError
    from medq.common.families.registry import family

    kind = data.plan.get("family")
    try:
        return family(kind) if kind else None
    except MedqError:
        return None


@dataclass(frozen=True)
class Night:
    """All the report reads from the store besides ``infer_view``: aggregates, and the first
    flagged studies."""

    failed: tuple[list[tuple[str, int]], int]
    skipped: tuple[list[tuple[str, int]], int]
    flagged: list[tuple[Any, ...]]
    rate: Rate | None
    chunks: Histogram | None
    distributions: list[tuple[str, Histogram | None]]  # (axis label, its histogram)


def gather(store: Store, job_id: str, keys: Sequence[tuple[str, str]]) -> Night:
    """Every query of the report, in one transaction; ``keys``: the family's report_distributions."""
    with store.session() as s:
        distributions = []
        for key, label in keys:
            value = study_value(s, job_id, key)
            distributions.append((label, histogram(s, value, (Study.job_id == job_id, Study.state == "done"))
                                  if value is not None else None))
        return Night(_reasons(s, job_id, "failed"), _reasons(s, job_id, "skipped"), _flagged(s, job_id),
                     _rate(s, job_id), _chunk_seconds(s, job_id), distributions)


def inference_sections(store: Store, data: JobData) -> list[Section]:
    """The sections of an inference job's report. ``data.results`` is ``views.infer_view``."""
    view, job_id = data.results, data.id
    fam = _family(data)
    keys = fam.inference.report_distributions if fam is not None and fam.inference_ref else ()
    night = gather(store, job_id, keys)
    title = fam.title if fam is not None else f"model family {data.plan.get('family', 'unknown')}"
    timing = [rate_figure(night.rate) if night.rate else Note("No study recorded by a worker yet."),
              chunk_figure(night.chunks, (view.get("spec") or {}).get("chunk", "–")) if night.chunks
              else Note("No chunk finished yet.")]
    shown = [distribution_figure(label, h) if h else Note(f"{label}: no done study has this value yet.")
             for label, h in night.distributions]
    if not keys:
        shown = [Note(f"The {title} names no per-study result to draw.")]
    return [
        Section.of(f"Inference job {job_id}: the studies", overview(view, title), job_id),
        Section.of("Failed and skipped studies, by reason", failures(view, night.failed, night.skipped), job_id),
        Section.of("Flagged for review", review(view, night.flagged), job_id),
        Section.of("Throughput and chunks", timing, job_id),
        Section.of(f"What the model measured ({title})", shown, job_id),
    ]
