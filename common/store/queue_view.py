"""What `medq queue` shows: per project and priority, what runs, what waits and why, and when
the next waiting member is expected to start. The reasons are the admission policy's own
(common/sharing/policy.py), computed from the same rows the dispatcher reads, so the view says
what the next round will do; inference chunks held by a closed window say so.

Expected start: a waiting member that the next round admits starts "now"; the k-th in line
behind busy workers starts when the k-th of the running members is expected to end (its
progress so far, extrapolated over its epochs); unknown when no running member has progress.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import datetime, time, timedelta

from sqlalchemy import func, select

from medq.common.sharing.policy import RANK, Sharing, plan
from medq.common.specs import INFER_KIND
from medq.common.store import admission
from medq.common.store.db import Store
from medq.common.store.models import Chunk, Job, Member, State, utcnow
from medq.common.windows import window_open


def queue_view(store: Store, sharing: Sharing, now_local: time, ttl: float = 15.0) -> dict:
    now = utcnow()
    with store.session() as s:
        waiting = admission._waiting_members(s)
        runs, yielding = admission._runs(s, now, sharing.min_run)
        workers = admission.live_workers(s, now, ttl)
        free = admission._free_workers(s, now, ttl, now_local)
        # min_run is already in each run's ``preemptible`` (as in admission.admit)
        decided = plan(waiting, list(runs.values()), len(free), replace(sharing, min_run=0), now.timestamp(),
                       yielding=yielding)
        ends = _expected_ends(s, now)
        chunks = _chunk_groups(s, now_local)
    groups: dict[tuple[str, str], dict] = defaultdict(lambda: {"running": 0, "borrowed": 0, "waiting": 0, "held": 0,
                                                                 "next": None})
    for run in runs.values():
        groups[(run.project, run.priority)]["running"] += 1
        groups[(run.project, run.priority)]["borrowed"] += int(run.borrowed)
    by_key = {item.key: item for item in waiting}
    line = [a.key for a in decided.admit] + [key for key in decided.waits if key in by_key]
    for position, key in enumerate(line):
        item = by_key[key]
        group = groups[(item.project, item.priority)]
        group["waiting"] += 1
        if group["next"] is not None:
            continue
        if position < len(decided.admit):
            why, start = "admitted at the next round: a worker is free", now
        else:
            behind = position - len(decided.admit)
            why, start = decided.waits[key], (ends[behind] if behind < len(ends) else None)
        group["next"] = {"member": int(key.split()[1]), "why": why,
                         "expected_start": start.isoformat() if start else None}
    for (project, priority), numbers in chunks.items():
        group = groups[(project, priority)]
        group["waiting"] += numbers["queued"]
        group["held"] += numbers["held"]
        if group["next"] is None and (numbers["queued"] or numbers["held"]):
            why = (f"window {numbers['window']} closed" if numbers["held"] and not numbers["queued"]
                   else f"inference chunks in the shared infer.{priority} queue: the first free worker takes one")
            group["next"] = {"member": None, "why": why, "expected_start": None}
    rows = [{"project": project, "priority": priority, **values}
            for (project, priority), values in sorted(groups.items(), key=lambda kv: (_rank(kv[0][1]), kv[0][0]))]
    return {"as_of": now.isoformat(), "workers": len(workers), "free": len(free), "yielding": yielding,
            "shares": dict(sharing.shares), "quotas": dict(sharing.quotas), "groups": rows}


def _rank(priority: str) -> int:
    return RANK.get(priority, len(RANK))


def _expected_ends(s, now: datetime) -> list[datetime]:
    """When each running member is expected to end, soonest first (those with progress only)."""
    rows = s.execute(select(Member.started_at, Member.epoch, Member.total_epochs, Member.step,
                            Member.steps_per_epoch)
                     .where(Member.state == State.RUNNING.value, Member.lease_expires_at > now)).all()
    ends = []
    for started, epoch, total, step, per_epoch in rows:
        done = (epoch or 0) + ((step or 0) / per_epoch if per_epoch else 0)
        if not started or not total or done <= 0:
            continue
        elapsed = (now - started).total_seconds()
        ends.append(now + timedelta(seconds=max(0.0, elapsed / done * (total - done))))
    return sorted(ends)


def _chunk_groups(s, now_local: time) -> dict[tuple[str, str], dict]:
    """Queued and window-held inference chunks by (project, priority)."""
    found: dict[tuple[str, str], dict] = {}
    for project, priority, window, lifted, state, n in s.execute(
            select(Job.project, Job.priority, Job.window, Job.window_lifted, Chunk.state, func.count())
            .join(Chunk, Chunk.job_id == Job.id)
            .where(Job.kind == INFER_KIND, Job.cancel_requested.is_(False), Chunk.state.in_(["queued", "waiting"]))
            .group_by(Job.project, Job.priority, Job.window, Job.window_lifted, Chunk.state)).all():
        entry = found.setdefault((project or "default", priority or "normal"), {"queued": 0, "held": 0, "window": window})
        if lifted or window_open(window, now_local):
            entry["queued"] += n
        else:
            entry["held"] += n
    return found
