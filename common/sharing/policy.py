"""What runs next on a pool of interchangeable workers, and what yields: one pure function.

The rules, in the order they apply:

1. Work held for a reason of its own (a closed window) waits whatever the GPUs.
2. A free worker goes first to work whose project is under its quota (or has none); only when
   none such waits may a project over its quota *borrow* the idle worker.
3. Among those, the highest priority first; then the project using the fewest workers relative
   to its share (fair share); then the oldest submission (FIFO within a project).
4. When work still waits and no worker is free, a preemptible run yields to it if it has run at
   least ``min_run`` seconds and, the waiting work being under its own quota, the run is of a
   lower priority or was borrowed by a project still over its quota; or if the waiting work was
   submitted with ``--preempt``
   (an inference window: every training run yields to it). The lowest priority yields first,
   then borrowed runs, then the most recently started. Runs of equal priority never preempt one
   another for fair share: that is settled as workers free up.

Keys are opaque ("member 12", "chunk 40"): the store builds the inputs and acts on the plan.
"""

from __future__ import annotations

from collections import Counter, deque
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
         now: float, *, yielding: int = 0, explain: bool = True) -> Plan:
    """``yielding``: runs already asked to yield, each on its way to one of the first waiting
    items in line (those are not given another victim). ``explain``: also say why each waiting
    item waits (``Plan.waits``; an admission round does without, it only acts)."""
    used = Counter(run.project for run in running)
    waits = {item.key: item.held for item in waiting if item.held}
    line = _Line([item for item in waiting if not item.held])
    admitted: list[Admit] = []
    while line and len(admitted) < free:
        item, borrowed = line.pop_next(used, sharing)
        admitted.append(Admit(item.key, borrowed))
        used[item.project] += 1
    if not explain and not _victims_possible(line, running):
        return Plan(tuple(admitted), (), waits)
    ordered = line.ordered(used, sharing)
    preempt = _victims(ordered[yielding:], running, used, sharing, now)
    if not explain:
        return Plan(tuple(admitted), tuple(preempt), waits)
    yielding_to = {waiter: victim for victim, waiter in preempt}
    ahead = Counter()  # waiting items of each priority rank ahead in the line
    for position, item in enumerate(ordered):
        higher = sum(n for rank, n in ahead.items() if rank < RANK[item.priority])
        victim = yielding_to.get(item.key) or ("a member already asked" if position < yielding else None)
        waits[item.key] = _why(item, position, higher, used, sharing, victim)
        ahead[RANK[item.priority]] += 1
    return Plan(tuple(admitted), tuple(preempt), waits)  # held work first, then the line's order


class _Line:
    """The waiting work by (priority, project), FIFO within each: the next to admit is always
    one of the groups' heads, so each choice looks at a few heads, not at every waiting item."""

    def __init__(self, todo: Sequence[Waiting]):
        self.order = {item.key: index for index, item in enumerate(todo)}  # ties keep the caller's order
        groups: dict[tuple[str, str], list[Waiting]] = {}
        for item in sorted(todo, key=lambda item: (item.submitted_at, self.order[item.key])):
            groups.setdefault((item.priority, item.project), []).append(item)
        self.groups = {key: deque(items) for key, items in groups.items()}

    def __bool__(self) -> bool:
        return any(self.groups.values())

    def pop_next(self, used: Counter, sharing: Sharing) -> tuple[Waiting, bool]:
        heads = [group[0] for group in self.groups.values() if group]
        within = [item for item in heads if sharing.under_quota(item.project, used[item.project])]
        item = min(within or heads, key=lambda item: (*_order_key(item, used, sharing), self.order[item.key]))
        self.groups[(item.priority, item.project)].popleft()
        return item, not within

    def ordered(self, used: Counter, sharing: Sharing) -> list[Waiting]:
        """The order of admission if workers freed up one by one, usage counted as each is
        admitted; the line itself is left as it was."""
        saved = {key: deque(group) for key, group in self.groups.items()}
        counts, out = Counter(used), []
        while self:
            item, _ = self.pop_next(counts, sharing)
            out.append(item)
            counts[item.project] += 1
        self.groups = saved
        return out


def _order_key(item: Waiting, used: Counter, sharing: Sharing) -> tuple:
    return (RANK[item.priority], used[item.project] / sharing.share(item.project), item.submitted_at)


def _may_yield(run: Running, to: Waiting, used: Counter, sharing: Sharing, now: float) -> bool:
    """Only for work that would take the freed worker: a waiter over its own quota would not
    (the worker goes to work under its quota first), so it makes nobody yield unless it was
    submitted with --preempt; a borrowed run is reclaimed only while its project is still over
    its quota. (Without these two rules a high-priority borrower and a low-priority owner would
    take the worker from each other for ever.)"""
    if not run.preemptible or now - run.started_at < sharing.min_run:
        return False
    if to.preempts:
        return True
    if not sharing.under_quota(to.project, used[to.project]):
        return False
    quota = sharing.quotas.get(run.project)
    reclaim = run.borrowed and run.project != to.project and quota is not None and used[run.project] > quota
    return RANK[run.priority] > RANK[to.priority] or reclaim


def _victims_possible(line: "_Line", running: Sequence[Running]) -> bool:
    """Cheap: can any waiting item make any run yield? (Mostly not: equal priorities, nothing borrowed.)"""
    runs = [run for run in running if run.preemptible]
    if not runs or not line:
        return False
    if any(run.borrowed for run in runs):
        return True
    worst = max(RANK[run.priority] for run in runs)
    return any(item.preempts or RANK[item.priority] < worst for group in line.groups.values() for item in group)


def _victims(ordered: Sequence[Waiting], running: Sequence[Running], used: Counter, sharing: Sharing,
             now: float) -> list[tuple[str, str]]:
    chosen: list[tuple[str, str]] = []
    left = [run for run in running if run.preemptible]
    counts = Counter(used)
    for item in ordered:
        if not left:
            break
        candidates = [run for run in left if _may_yield(run, item, counts, sharing, now)]
        if not candidates:
            continue
        victim = max(candidates, key=lambda run: (RANK[run.priority], run.borrowed, run.started_at, run.key))
        chosen.append((victim.key, item.key))
        left.remove(victim)
        counts[victim.project] -= 1
        counts[item.project] += 1
    return chosen


def _why(item: Waiting, position: int, higher: int, used: Counter, sharing: Sharing, victim: str | None) -> str:
    if victim:
        return f"next: {victim} yields its worker at its next checkpoint"
    quota = sharing.quotas.get(item.project)
    if quota is not None and used[item.project] >= quota:
        return f"project {item.project} holds its quota of {quota}; it may borrow a worker that falls idle"
    if higher:
        return f"behind {higher} waiting of higher priority"
    if position == 0:
        return "next when a worker is free"
    return f"every worker busy; {position} ahead of it"
