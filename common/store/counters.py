"""Cluster-wide event counters (the ``counters`` table): bumped inside the transaction that
records the event, so a rolled-back event is never counted and every launcher and `medq
metrics` read the same totals. Names are the Prometheus counters' without ``medq_`` and
``_total`` (workers/metrics.py)."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from medq.common.store.db import Store
from medq.common.store.models import Counter

# name -> what it counts (the metric's help text), and the kinds it is counted by
COUNTERS = {
    "lease_reaps": ("Leases that lapsed (their worker died or hung) and were reaped", ("member", "chunk")),
    "redeliveries": ("Members and chunks started again after an earlier attempt ended unfinished", ("member", "chunk")),
    "resends": ("Work sent again because the broker lost it (or nobody took it in time)",
                ("member", "chunk", "evaluation")),
    "transient_retries": ("Tasks retried after a transient fault (a store or broker away)", ("member", "chunk")),
    "preemptions": ("Training members that yielded their worker to more urgent work", ("member",)),
}


def bump(s, name: str, kind: str, n: int = 1) -> None:
    """Add ``n`` to a counter within the session ``s`` (the event's own transaction)."""
    if n <= 0:
        return
    if name not in COUNTERS or kind not in COUNTERS[name][1]:
        raise ValueError(f"unknown counter {name}/{kind}")
    if s.execute(update(Counter).where(Counter.name == name, Counter.kind == kind)
                 .values(value=Counter.value + n).execution_options(synchronize_session=False)).rowcount:
        return
    insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    s.execute(insert(Counter).values(name=name, kind=kind, value=n)
              .on_conflict_do_update(index_elements=["name", "kind"], set_={"value": Counter.value + n}))


def read_counters(source: Store | Session) -> dict[tuple[str, str], int]:
    """Every counter's value, zero for the ones that never moved (from a store, or within a session)."""
    if isinstance(source, Store):
        with source.read_session() as s:
            return read_counters(s)
    values = {(name, kind): 0 for name, (_, kinds) in COUNTERS.items() for kind in kinds}
    for name, kind, value in source.execute(select(Counter.name, Counter.kind, Counter.value)):
        if (name, kind) in values:
            values[(name, kind)] = int(value)
    return values
