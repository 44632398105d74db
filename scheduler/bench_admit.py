"""`medq bench admit`: what an admission round costs per member it admits, on the store a user
gives (SQLite by default), against the least any atomic admission costs: one guarded UPDATE
per member in a transaction of its own, measured on the same store in the same run.

Members of several projects wait; ``--workers`` live workers are registered; each round admits
onto the free ones (the policy, fair share, quotas), then the admitted members are claimed and
finished (not timed) so the next round finds the workers free again. Also measured: a round
with members waiting and no worker free (what every launcher pays each MEDQ_ADMIT_INTERVAL
while the pool is busy), and a round with nothing waiting.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import click

from medq.common.settings import load_settings


@click.command("admit")
@click.option("--members", default=2000, show_default=True, help="members waiting, over --projects projects")
@click.option("--workers", default=16, show_default=True, help="live workers: members admitted per round")
@click.option("--projects", default=4, show_default=True)
@click.option("--database-url", default="", help="a store to measure on (default: a fresh SQLite file); "
                                                 "its tables are created, and the rows added are removed after")
def bench_admit(members: int, workers: int, projects: int, database_url: str) -> None:
    """Admission latency per member: the dispatcher's rounds against bare guarded UPDATEs."""
    url = database_url or f"sqlite:///{Path(tempfile.mkdtemp(prefix='medq-bench-admit-')) / 'store.sqlite'}"
    click.echo(json.dumps(run(url, members, workers, projects), indent=2))


def run(url: str, members: int, workers: int, projects: int) -> dict:
    from sqlalchemy import delete

    from medq.common.sharing.policy import Sharing
    from medq.common.store import Store, admission, jobs
    from medq.common.store.models import Job, Worker

    store = Store(url)
    store.ensure_schema()
    launcher = f"bench-{time.time_ns()}"
    names = [f"bench{i}-{launcher}" for i in range(workers)]
    admission.register_workers(store, launcher, [(name, f"w.{name}", "cpu") for name in names])
    sharing = Sharing(quotas={"p0": max(1, workers // 2)}, min_run=600)
    job_ids = []
    try:
        per = members // projects
        for p in range(projects):
            job_id, _ = jobs.create_job(store, "ensemble", {}, {"split": {}}, list(range(per)), 1, project=f"p{p}")
            job_ids.append(job_id)
        now_local = load_settings().local_time()
        busy_round = _rounds_with_nothing_free(store, sharing, now_local, names, launcher)
        rounds, admitted = [], 0
        while True:
            started = time.perf_counter()
            decided = admission.admit(store, sharing, now_local, ttl=600)
            rounds.append((time.perf_counter() - started, len(decided.admitted)))
            if not decided.admitted:
                break
            admitted += len(decided.admitted)
            _run_and_finish(store, decided.admitted)
            admission.register_workers(store, launcher, [(name, f"w.{name}", "cpu") for name in names])
        idle = _timed(lambda: admission.admit(store, sharing, now_local, ttl=600), 50)
        bare = _bare_updates(store, job_ids[:1], min(500, per))
    finally:
        with store.session() as s:
            s.execute(delete(Job).where(Job.id.in_(job_ids)))
            s.execute(delete(Worker).where(Worker.launcher == launcher))
        store.dispose()
    timed = [(seconds, n) for seconds, n in rounds if n]
    per_member = sum(seconds for seconds, _ in timed) / max(1, sum(n for _, n in timed))
    return {
        "store": url.split(":", 1)[0].split("+")[0], "members": members, "workers": workers, "projects": projects,
        "admitted": admitted, "rounds": len(timed),
        "admission_ms_per_member": round(per_member * 1000, 3),
        "round_ms_median": round(statistics.median(s for s, _ in timed) * 1000, 2),
        "round_ms_nothing_free": round(busy_round * 1000, 2),
        "round_ms_nothing_waiting": round(idle * 1000, 3),
        "bare_guarded_update_ms_per_member": round(bare * 1000, 3),
        "ratio_to_bare": round(per_member / bare, 2) if bare else None,
    }


def _run_and_finish(store, admitted) -> None:
    """Each admitted member claimed by its worker and finished at once, freeing the worker."""
    from medq.common.store import jobs

    for item in admitted:
        owner = f"bench-{item.member_id}"
        claim = jobs.claim_member(store, item.member_id, owner, item.queue.removeprefix("w."), "cpu", 60, 3,
                                  admission=item.admission)
        if claim.run:
            jobs.finish_member(store, item.member_id, owner, jobs.State.SUCCEEDED)


def _rounds_with_nothing_free(store, sharing, now_local, names, launcher) -> float:
    """The median round with members waiting and no worker free (none registered: the policy
    still runs, as it does each interval on a busy pool)."""
    from medq.common.store import admission

    admission.register_workers(store, launcher, [])  # no live worker: members wait, the policy still runs
    try:
        return _timed(lambda: admission.admit(store, sharing, now_local, ttl=600), 20)
    finally:
        admission.register_workers(store, launcher, [(name, f"w.{name}", "cpu") for name in names])


def _timed(work, n: int) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _bare_updates(store, job_ids, n: int) -> float:
    """One guarded UPDATE per member, each in its own transaction: the floor of any atomic
    admission. The rows are set back after."""
    from sqlalchemy import select, update

    from medq.common.store.models import Member, utcnow

    with store.session() as s:
        ids = list(s.scalars(select(Member.id).where(Member.job_id.in_(job_ids)).limit(n)))
        s.execute(update(Member).where(Member.id.in_(ids)).values(state="queued", admitted_at=None))
    started = time.perf_counter()
    for member_id in ids:
        with store.session() as s:
            s.execute(update(Member).where(Member.id == member_id, Member.admitted_at.is_(None))
                      .values(admitted_at=utcnow()).execution_options(synchronize_session=False))
    return (time.perf_counter() - started) / max(1, len(ids))
