"""Admission in the store's contract, on SQLite and a real PostgreSQL: members wait in the store
and a launcher's round gives each free live worker the one the sharing policy picks (fair share,
quotas with borrowing, priorities), atomically, with a number that makes old messages stale."""

from __future__ import annotations

import threading
from datetime import time, timedelta

from sqlalchemy import select, update

from medq.common.sharing.policy import Sharing
from medq.common.store import admission, jobs, preemption
from medq.common.store import inference as ops
from medq.common.store.models import Chunk, Member, Worker, utcnow

NOON = time(12, 0)


def _job(store, project, seeds=1, priority="normal"):
    return jobs.create_job(store, "ensemble", {}, {"split": {}}, list(range(seeds)), 4, project=project,
                           priority=priority)


def _workers(store, n, launcher="L1"):
    names = [f"cpu{i}-1@{launcher}" for i in range(n)]
    admission.register_workers(store, launcher, [(name, f"w.{name}", "cpu") for name in names])
    return names


def _round(store, sharing=Sharing(min_run=0)):
    return admission.admit(store, sharing, NOON, ttl=15)


def _claim(store, item, owner=None):
    worker = item.queue.removeprefix("w.")
    return jobs.claim_member(store, item.member_id, owner or f"o{item.member_id}", worker, "cpu", 60, 3,
                             admission=item.admission)


def test_members_wait_for_a_live_worker_and_each_free_worker_gets_one(store):
    _, members = _job(store, "labA", seeds=3)
    assert _round(store).admitted == ()  # no worker registered: everything waits in the store
    _workers(store, 2)
    first = _round(store).admitted
    assert [a.member_id for a in first] == members[:2] and len({a.queue for a in first}) == 2
    assert [a.admission for a in first] == [1, 1]
    assert _round(store).admitted == ()  # both workers hold an admitted member
    assert _claim(store, first[0]).run
    jobs.finish_member(store, first[0].member_id, f"o{first[0].member_id}", jobs.State.SUCCEEDED)
    assert [a.member_id for a in _round(store).admitted] == [members[2]]  # the worker freed up


def test_a_launcher_that_stopped_or_went_silent_gets_nothing(store):
    _job(store, "labA", seeds=2)
    _workers(store, 1, "gone")
    admission.forget_launcher(store, "gone")
    _workers(store, 1, "silent")
    with store.session() as s:
        s.execute(update(Worker).values(seen_at=utcnow() - timedelta(seconds=60)))
    assert _round(store).admitted == ()


def test_project_b_submitted_after_a_s_ten_members_runs_before_a_s_remaining(store):
    """Fair share: A holds both workers; B's member is next when one frees up, FIFO within A."""
    _, a_members = _job(store, "labA", seeds=10)
    _workers(store, 2)
    running = list(_round(store).admitted)
    for item in running:
        assert _claim(store, item).run
    _, (b_member,) = _job(store, "labB")
    done = running[0]
    jobs.finish_member(store, done.member_id, f"o{done.member_id}", jobs.State.SUCCEEDED)
    assert [a.member_id for a in _round(store).admitted] == [b_member]
    assert [a.member_id for a in running] == a_members[:2]


def test_shares_weigh_the_choice(store):
    _workers(store, 3)
    _, a = _job(store, "labA", seeds=3)
    _, b = _job(store, "labB", seeds=3)
    admitted = [x.member_id for x in _round(store, Sharing({"labA": 2.0}, min_run=0)).admitted]
    assert sorted(admitted) == sorted(a[:2] + b[:1])  # labA counts double: two of three workers


def test_a_quota_is_exceeded_only_by_borrowing_and_the_owner_takes_it_back(store):
    sharing = Sharing(quotas={"labA": 1, "labB": 1}, min_run=0)
    _workers(store, 2)
    _, a = _job(store, "labA", seeds=3)
    first = _round(store, sharing).admitted
    assert [(x.member_id, x.borrowed) for x in first] == [(a[0], False), (a[1], True)]  # B idle: A borrows
    for item in first:
        assert _claim(store, item).run
    _, (b_member,) = _job(store, "labB")
    decided = _round(store, sharing)
    assert decided.admitted == ()
    assert [member for member, _ in decided.preempted] == [a[1]]  # the borrowed one, not A's own
    assert "reclaims" in decided.preempted[0][1]
    assert _round(store, sharing).preempted == ()  # asked once: it is on its way
    assert preemption.yield_member(store, a[1], f"o{a[1]}").queued
    assert [x.member_id for x in _round(store, sharing).admitted] == [b_member]  # B, not A's yielded member


def test_high_priority_training_makes_the_lowest_priority_member_yield(store):
    _workers(store, 2)
    _, (normal,) = _job(store, "labA")
    _, (low,) = _job(store, "labA", priority="low")
    for item in _round(store).admitted:
        assert _claim(store, item).run
    _, (urgent,) = _job(store, "labB", priority="high")
    decided = _round(store)
    assert [member for member, _ in decided.preempted] == [low]
    assert "high-priority training of project labB" in decided.preempted[0][1]
    assert preemption.yield_member(store, low, f"o{low}").queued
    assert [x.member_id for x in _round(store).admitted] == [urgent]
    _, (equal,) = _job(store, "labC")
    assert _round(store).preempted == ()  # equal priorities wait for a worker to free up


def test_an_old_message_is_stale_after_the_admission_lapses(store):
    _workers(store, 1)
    _, (member,) = _job(store, "labA")
    (first,) = _round(store).admitted
    assert admission.lapse_admissions(store, utcnow() - timedelta(seconds=60)) == []  # not yet
    assert admission.lapse_admissions(store, utcnow() + timedelta(seconds=1)) == [member]
    claim = _claim(store, first)
    assert not claim.run and "stale message" in claim.reason
    (again,) = _round(store).admitted
    assert again.admission == 2
    assert not _claim(store, first).run and _claim(store, again).run


def test_a_member_given_back_for_a_retry_keeps_its_admission_until_then(store):
    """A transient fault: the task's retry (same admission) waits on its worker with a countdown;
    the worker stays taken meanwhile, the admission does not lapse, and the retry claims it."""
    _workers(store, 1)
    _, (member, other) = _job(store, "labA", seeds=2)
    (item,) = _round(store).admitted
    assert _claim(store, item).run
    assert jobs.release_member(store, member, f"o{member}", "transient: database away", retry_in=300)
    assert _round(store).admitted == ()  # its worker holds the retry: nothing else is admitted to it
    assert admission.lapse_admissions(store, utcnow() + timedelta(seconds=60), ttl=15) == []
    assert jobs.claim_member(store, member, "retry", "cpu0-1@L1", "cpu", 60, 3, admission=item.admission).run
    assert other not in [x.member_id for x in _round(store).admitted]  # still busy: the retry runs


def test_waiting_high_priority_inference_has_first_call_on_free_workers(store):
    _workers(store, 2)
    ops.create_infer_job(store, "urgent000001", {"archive": "/a", "checkpoints": ["/m"]}, {}, "high", None,
                         project="hospital")
    ops.add_studies(store, "urgent000001", (ops.PlannedStudy(f"/a/{i}.png") for i in range(1)), 1, None)
    with store.session() as s:
        s.execute(update(Chunk).values(state="queued"))
    _job(store, "labA", seeds=2)
    assert len(_round(store).admitted) == 1


def test_two_launchers_rounds_at_once_never_admit_a_member_twice_or_give_a_worker_two(store):
    from medq.common.store import Store

    _workers(store, 3, "L1")
    _workers(store, 3, "L2")
    _job(store, "labA", seeds=20)
    others = [Store(store.url) for _ in range(4)]
    got: list = []
    try:
        threads = [threading.Thread(target=lambda st=st: got.extend(_round(st).admitted)) for st in others]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for other in others:
            other.dispose()
    assert len(got) == 6
    assert len({x.member_id for x in got}) == 6 and len({x.queue for x in got}) == 6
    with store.session() as s:
        assert sorted(s.scalars(select(Member.admission).where(Member.admitted_at.is_not(None)))) == [1] * 6


def test_an_admission_to_a_worker_whose_launcher_went_away_lapses_at_once(store):
    _workers(store, 1, "gone")
    _, (member,) = _job(store, "labA")
    (first,) = _round(store).admitted
    assert admission.lapse_admissions(store, utcnow() - timedelta(seconds=60), ttl=15) == []  # still live
    admission.forget_launcher(store, "gone")
    assert admission.lapse_admissions(store, utcnow() - timedelta(seconds=60), ttl=15) == [member]
    _workers(store, 1, "new")
    (again,) = _round(store).admitted
    assert again.queue == "w.cpu0-1@new" and again.admission == first.admission + 1


def test_the_queue_view_says_what_runs_what_waits_and_why(store):
    from medq.common.store.queue_view import queue_view

    sharing = Sharing(quotas={"labA": 1}, min_run=0)
    _workers(store, 2)
    _, a = _job(store, "labA", seeds=3)
    for item in _round(store, sharing).admitted:
        assert _claim(store, item).run
        jobs.renew_lease(store, item.member_id, f"o{item.member_id}", 60, epoch=1)
    _job(store, "labB", priority="high")
    view = queue_view(store, sharing, NOON, ttl=15)
    groups = {(g["project"], g["priority"]): g for g in view["groups"]}
    assert (view["workers"], view["free"]) == (2, 0)
    assert [g["priority"] for g in view["groups"]] == ["high", "normal"]  # the line's order
    assert groups[("labA", "normal")] | {"next": None} == {"project": "labA", "priority": "normal", "running": 2,
                                                           "borrowed": 1, "waiting": 1, "held": 0, "next": None}
    assert "holds its quota of 1" in groups[("labA", "normal")]["next"]["why"]
    assert groups[("labB", "high")]["next"]["why"].startswith(f"next: member {a[1]} yields its worker")
    assert groups[("labB", "high")]["next"]["expected_start"] is not None  # from the running members' progress


def test_a_send_that_failed_gives_the_member_back_at_once(store):
    _workers(store, 1)
    _, (member,) = _job(store, "labA")
    (item,) = _round(store).admitted
    assert admission.withdraw(store, member, item.admission)
    assert not admission.withdraw(store, member, item.admission)  # once
    (again,) = _round(store).admitted
    assert again.member_id == member and again.admission == item.admission + 1


def test_a_member_asked_to_yield_still_counts_for_its_project_until_it_has(store):
    """Quota labA=1: while A's member yields to high-priority training, A gets no second worker."""
    sharing = Sharing(quotas={"labA": 1}, min_run=0)
    _workers(store, 2)
    _, (a0,) = _job(store, "labA", priority="low")
    _, (b0,) = _job(store, "labB")
    for item in _round(store, sharing).admitted:
        assert _claim(store, item).run
    _, (urgent,) = _job(store, "labC", priority="high")
    _, (a1,) = _job(store, "labA")
    decided = _round(store, sharing)
    assert [m for m, _ in decided.preempted] == [a0]
    assert _round(store, sharing).preempted == () and _round(store, sharing).admitted == ()
    with store.session() as s:
        assert s.get(Member, a0).preempt_for == "training"
    assert preemption.yield_member(store, a0, f"o{a0}").queued
    assert [x.member_id for x in _round(store, sharing).admitted] == [urgent]
