"""`medq results JOB --format ...`: a job's results as records, written as a table, JSON, JSON
lines, CSV or Parquet.

Every job kind has records: an inference job one per study (its family's CSV columns), a
training job one per member, combination (an ensemble's mean, median, weighted) and evaluation
set (scalar metrics; the nested ones only in ``--format json``). A report job's result is its
pages, so only ``table`` and ``json`` apply to it. Torch-free.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

import click

FORMATS = ("table", "json", "jsonl", "csv", "parquet")
RECORD_FORMATS = ("jsonl", "csv", "parquet")  # one record per line / row


def check_format(kind: str, fmt: str, failed: bool, infer_kind: str, report_kind: str) -> None:
    """Options that do not apply to the job's kind are refused, not ignored."""
    if failed and kind != infer_kind:
        raise click.UsageError(f"--failed applies to inference jobs, not to {kind} jobs")
    if failed and fmt in ("table", "json"):
        raise click.UsageError(f"--failed gives study records: use --format csv, jsonl or parquet, not {fmt}")
    if kind == report_kind and fmt not in ("table", "json"):
        raise click.UsageError(f"a report job's results are its pages: use --format table or json, not {fmt}")
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise click.UsageError("--format parquet needs pyarrow: pip install 'medq[parquet]'")


# -- the records ----------------------------------------------------------------------------------
def study_records(columns: list[str], rows: Iterable[list[Any]]) -> Iterator[dict[str, Any]]:
    """An inference job's rows (its family's ``csv_row``) as records keyed by its columns; an
    empty CSV cell is a missing value (null in JSON and Parquet). Values stay as the CSV writes
    them (coordinates as its decimal text), so every format says the same."""
    for row in rows:
        yield {c: (None if v == "" else v) for c, v in zip(columns, row)}


def training_records(view: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """A training job's results (``views.job_results``) as flat records: one per member, one per
    combination of members, one per evaluation set; the columns: the member's, then the union of
    their scalar metrics by name, then the error."""
    records: list[dict[str, Any]] = []
    for m in view["members"]:
        records.append({"row": f"seed {m['seed']}", "seed": m["seed"], "state": m["state"], "attempts": m["attempts"],
                        "preemptions": m["preemptions"], "checkpoint": m["checkpoint"], **_scalars(m["metrics"]),
                        "error": m["error"]})
    for combined in view.get("ensemble", []):
        records.append({"row": combined["aggregation"], **_scalars(combined["metrics"])})
    for evaluation in view.get("sets", []):
        records.append({"row": f"set {evaluation['name']}", **_scalars(evaluation["metrics"])})
    fixed = ["row", "seed", "state", "attempts", "preemptions", "checkpoint"]
    metrics = sorted({key for record in records for key in record} - {*fixed, "error"})  # the same on every store
    columns = fixed + metrics + ["error"]
    return columns, [{c: record.get(c) for c in columns} for record in records]


def _scalars(metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (metrics or {}).items() if v is None or isinstance(v, (int, float, str, bool))}


# -- writing them ---------------------------------------------------------------------------------
def write_records(fmt: str, columns: list[str], records: Iterable[dict[str, Any]], out: IO, batch: int = 10_000) -> int:
    """Streams ``records`` to ``out`` (text for csv and jsonl, binary for parquet); returns how many."""
    n = 0
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        for record in records:
            writer.writerow(["" if record.get(c) is None else record[c] for c in columns])
            n += 1
    elif fmt == "jsonl":
        for record in records:
            out.write(json.dumps(record, default=str) + "\n")
            n += 1
    elif fmt == "parquet":
        n = _write_parquet(columns, records, out, batch)
    else:
        raise ValueError(f"not a record format: {fmt}")
    return n


def _write_parquet(columns: list[str], records: Iterable[dict[str, Any]], out: IO, batch: int) -> int:
    """Parquet in row groups of ``batch`` records, so a million studies never sit in memory at
    once. A column's type is fixed by the first row group: text if any value there is text or
    none has a value yet, else a float (integers too: a later 1.5 is not cut to 1), else a bool.
    Later values are written as that type (as text if it is text), so every row group agrees."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, types, n, rows = None, None, 0, []

    def column_type(values: list[Any]) -> pa.DataType:
        present = [v for v in values if v is not None]
        if not present or any(isinstance(v, str) for v in present):
            return pa.string()
        if all(isinstance(v, bool) for v in present):
            return pa.bool_()
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            return pa.float64()
        return pa.string()

    def cast(value: Any, kind: pa.DataType) -> Any:
        if value is None:
            return None
        if kind == pa.string():
            return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        if kind == pa.float64():
            return float(value)
        return bool(value)

    def flush() -> None:
        nonlocal writer, types
        if types is None:
            types = {c: column_type([r.get(c) for r in rows]) for c in columns}
            writer = pq.ParquetWriter(out, pa.schema([pa.field(c, types[c]) for c in columns]))
        arrays = [pa.array([cast(r.get(c), types[c]) for r in rows], type=types[c]) for c in columns]
        writer.write_table(pa.Table.from_arrays(arrays, names=columns))

    for record in records:
        rows.append(record)
        n += 1
        if len(rows) == batch:
            flush()
            rows = []
    if rows or writer is None:
        flush()
    writer.close()
    return n
