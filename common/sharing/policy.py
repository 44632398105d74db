"""What runs next on a pool of interchangeable workers, and what yields: one pure function.

The rules, in the order they apply:

1. Work held for a reason of its own (a closed window) waits whatever the GPUs.
2. A free worker goes first to work whose project is under its quota (or has none); only when
   none such waits may a project over its quota *borrow* the idle worker.
3. Among those, the highest priority first; then the project using the fewest workers relative
   to its share (fair share); then the oldest submission (FIFO within a project).
4. When work still waits and no worker is free, a preemptible run yields to it if it has run at
   least ``min_run`` seconds and it is of a lower priority, or it was borrowed from a project
   whose quota the waiting work is under, or the waiting work was submitted with ``--preempt``
   (an inference window: every training run yields to it). The lowest priority yields first,
   then borrowed runs, then the most recently started. Runs of equal priority never preempt one
   another for fair share: that is settled as workers free up.

Keys are opaque ("member 12", "chunk 40"): the store builds the inputs and acts on the plan.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from medq.common.specs import PRIORITIES

RANK = {name: rank for rank, name in enumerate(PRIORITIES)}  # high 0, normal 1, low 2


@dataclass(frozen=True)
class Waiting:
    key: str
    project: str
    priority: str
    submitted_at: float  # seconds since the epoch: FIFO within a project
    held: str | None = None  # why it cannot run now whatever the workers (a closed window)
    preempts: bool = False  # submitted with --preempt: training yields to it


@dataclass(frozen=True)
class Running:
    key: str
    project: str
    priority: str
    started_at: float  # when this run began: ``min_run`` counts from here
    preemptible: bool  # training members are; inference chunks and reports are not
    borrowed: bool = False  # admitted beyond its project's quota


@dataclass(frozen=True)
class Sharing:
    shares: Mapping[str, float] = field(default_factory=dict)  # absent: 1
    quotas: Mapping[str, int] = field(default_factory=dict)  # absent: no quota
    min_run: float = 600.0  # seconds a run is safe from preemption

    def share(self, project: str) -> float:
        return self.shares.get(project, 1.0)

    def under_quota(self, project: str, used: int) -> bool:
        quota = self.quotas.get(project)
        return quota is None or used < quota


@dataclass(frozen=True)
class Admit:
    key: str
    borrowed: bool


@dataclass(frozen=True)
class Plan:
    admit: tuple[Admit, ...]
    preempt: tuple[tuple[str, str], ...]  # (running key, the waiting key it yields to)
    waits: Mapping[str, str]  # waiting key -> why it waits, in the order it would be admitted


def plan(waiting: Sequence[Waiting], running: Sequence[Running], free: int, sharing: Sharing,
         now: float) -> Plan:
    used = Counter(run.project for run in running)
    waits = {item.key: item.held for item in waiting if item.held}
    todo = [item for item in waiting if not item.held]
    admitted: list[Admit] = []
    while todo and len(admitted) < free:
        item, borrowed = _next(todo, used, sharing)
        admitted.append(Admit(item.key, borrowed))
        used[item.project] += 1
        todo.remove(item)
    preempt = _victims(todo, running, used, sharing, now)
    yielding_to = {waiter: victim for victim, waiter in preempt}
    ordered = _ordered(todo, used, sharing)
    for position, item in enumerate(ordered):
        waits[item.key] = _why(item, position, ordered, used, sharing, yielding_to.get(item.key))
    return Plan(tuple(admitted), tuple(preempt), dict(sorted(waits.items(), key=lambda kv: _position(kv[0], ordered))))


def _order_key(item: Waiting, used: Counter, sharing: Sharing) -> tuple:
    return (RANK[item.priority], used[item.project] / sharing.share(item.project), item.submitted_at, item.key)


def _ordered(todo: Sequence[Waiting], used: Counter, sharing: Sharing) -> list[Waiting]:
    """The order of admission if workers freed up one by one, usage counted as each is admitted."""
    left, out, counts = list(todo), [], Counter(used)
    while left:
        item, _ = _next(left, counts, sharing)
        out.append(item)
        counts[item.project] += 1
        left.remove(item)
    return out


def _next(todo: Sequence[Waiting], used: Counter, sharing: Sharing) -> tuple[Waiting, bool]:
    within = [item for item in todo if sharing.under_quota(item.project, used[item.project])]
    pool = within or list(todo)
    return min(pool, key=lambda item: _order_key(item, used, sharing)), not within


def _may_yield(run: Running, to: Waiting, used: Counter, sharing: Sharing, now: float) -> bool:
    if not run.preemptible or now - run.started_at < sharing.min_run:
        return False
    reclaim = run.borrowed and run.project != to.project and sharing.under_quota(to.project, used[to.project])
    return RANK[run.priority] > RANK[to.priority] or reclaim or to.preempts


def _victims(todo: Sequence[Waiting], running: Sequence[Running], used: Counter, sharing: Sharing,
             now: float) -> list[tuple[str, str]]:
    chosen: list[tuple[str, str]] = []
    taken: set[str] = set()
    counts = Counter(used)
    for item in _ordered(todo, used, sharing):
        candidates = [run for run in running if run.key not in taken and _may_yield(run, item, counts, sharing, now)]
        if not candidates:
            continue
        victim = max(candidates, key=lambda run: (RANK[run.priority], run.borrowed, run.started_at, run.key))
        chosen.append((victim.key, item.key))
        taken.add(victim.key)
        counts[victim.project] -= 1
        counts[item.project] += 1
    return chosen


def _why(item: Waiting, position: int, ordered: Sequence[Waiting], used: Counter, sharing: Sharing,
         victim: str | None) -> str:
    if victim:
        return f"next: {victim} yields its worker at its next checkpoint"
    quota = sharing.quotas.get(item.project)
    if quota is not None and used[item.project] >= quota:
        return f"project {item.project} holds its quota of {quota}; it may borrow a worker that falls idle"
    higher = sum(1 for other in ordered[:position] if RANK[other.priority] < RANK[item.priority])
    if higher:
        return f"behind {higher} waiting of higher priority"
    if position == 0:
        return "next when a worker is free"
    return f"every worker busy; {position} ahead of it"


def _position(key: str, ordered: Sequence[Waiting]) -> int:
    for position, item in enumerate(ordered):
        if item.key == key:
            return position
    return -1  # held work first: its reason is its own
