"""Projects, shares and quotas, and the pure sharing policy (common/sharing/)."""

from __future__ import annotations

import pytest

from medq.common.errors import SpecError
from medq.common.sharing.policy import Running, Sharing, Waiting, plan
from medq.common.sharing.projects import check_project, default_project, parse_quotas, parse_shares

NOW = 100_000.0
LONG_AGO = NOW - 3600


def waiting(project: str, n: int, priority: str = "normal", t0: float = 0.0, **kw) -> list[Waiting]:
    return [Waiting(f"{project}-{i}", project, priority, t0 + i, **kw) for i in range(n)]


def running(project: str, n: int, priority: str = "normal", started: float = LONG_AGO, **kw) -> list[Running]:
    return [Running(f"run-{project}-{priority}-{i}", project, priority, started + i, preemptible=True, **kw)
            for i in range(n)]


def admitted(result) -> list[str]:
    return [a.key for a in result.admit]


# --- settings and names --------------------------------------------------------------------

def test_shares_and_quotas_parse():
    assert parse_shares("labA=2, labB=1,") == {"labA": 2.0, "labB": 1.0}
    assert parse_shares("") == {} and parse_quotas(None) == {}
    assert parse_quotas("labA=4,hospital.ct=0") == {"labA": 4, "hospital.ct": 0}


@pytest.mark.parametrize("text, named", [
    ("labA", "'labA' must look like NAME=NUMBER"),
    ("labA=", "'labA=' must look like NAME=NUMBER"),
    ("labA=two", "the share of labA must be a positive number, got 'two'"),
    ("labA=0", "the share of labA must be a positive number, got '0'"),
    ("labA=-1", "the share of labA must be a positive number"),
    ("labA=nan", "the share of labA must be a positive number"),
    ("labA=inf", "the share of labA must be a positive number"),
    ("labA=1,labA=2", "labA given more than once"),
    ("lab A=1", "'lab A' is not a project name"),
])
def test_a_share_string_that_does_not_parse_names_its_entry(text, named):
    with pytest.raises(SpecError, match="^MEDQ_SHARES") as caught:
        parse_shares(text)
    assert named in str(caught.value)


@pytest.mark.parametrize("text, named", [
    ("labA=1.5", "the quota of labA must be a whole number of GPUs, got '1.5'"),
    ("labA=-2", "the quota of labA must be a whole number of GPUs, got '-2'"),
    ("=3", "'' is not a project name"),
])
def test_a_quota_string_that_does_not_parse_names_its_entry(text, named):
    with pytest.raises(SpecError, match="^MEDQ_QUOTAS") as caught:
        parse_quotas(text)
    assert named in str(caught.value)


@pytest.mark.parametrize("name", ["", "-lab", "lab/a", "lab a", "ü", "x" * 64, "a;drop"])
def test_a_project_name_is_checked(name):
    with pytest.raises(SpecError, match="is not a project name"):
        check_project(name)


def test_the_default_project_is_medq_project_or_the_user(monkeypatch):
    assert default_project("labA") == "labA"
    with pytest.raises(SpecError, match="MEDQ_PROJECT: 'lab A'"):
        default_project("lab A")
    monkeypatch.setattr("getpass.getuser", lambda: "dr.o'brien")
    assert default_project() == "dr.o-brien"
    monkeypatch.setattr("getpass.getuser", lambda: "...")
    assert default_project() == "default"


def test_settings_refuse_a_bad_project_or_a_negative_wait():
    from medq.common.settings import load_settings

    assert load_settings({"MEDQ_PREEMPT_MIN_RUN": "0"}).sharing == Sharing(min_run=0.0)
    for env, message in [({"MEDQ_PROJECT": "a b"}, "MEDQ_PROJECT: 'a b' is not a project name"),
                         ({"MEDQ_PREEMPT_MIN_RUN": "-1"}, "MEDQ_PREEMPT_MIN_RUN must be 0 or more"),
                         ({"MEDQ_PREEMPT_GRACE": "soon"}, "MEDQ_PREEMPT_GRACE: 'soon' is not a valid float")]:
        with pytest.raises(SpecError, match=message):
            load_settings(env)


# --- admission -----------------------------------------------------------------------------

def test_priority_first_then_fifo_within_a_project():
    queue = [Waiting("n1", "labA", "normal", 1), Waiting("n0", "labA", "normal", 0), Waiting("low", "labA", "low", -5),
             Waiting("n2", "labA", "normal", 2), Waiting("high", "labA", "high", 50)]
    assert admitted(plan(queue, [], free=5, sharing=Sharing(), now=NOW)) == ["high", "n0", "n1", "n2", "low"]


def test_a_later_project_starts_before_the_first_projects_remaining_members():
    """A submitted ten members first and holds two workers; B's one job submitted after them
    takes the next free worker."""
    queue = waiting("labA", 10, t0=0) + waiting("labB", 1, t0=500)
    result = plan(queue, running("labA", 2), free=1, sharing=Sharing(), now=NOW)
    assert admitted(result) == ["labB-0"]
    assert list(result.waits)[:2] == ["labA-0", "labA-1"]


def test_shares_weight_the_fair_share():
    queue = waiting("labA", 6, t0=0) + waiting("labB", 6, t0=0)
    result = plan(queue, [], free=6, sharing=Sharing(shares={"labA": 2, "labB": 1}), now=NOW)
    projects = [key.split("-")[0] for key in admitted(result)]
    assert projects.count("labA") == 4 and projects.count("labB") == 2


def test_a_project_at_its_quota_only_borrows_workers_nobody_else_wants():
    sharing = Sharing(quotas={"labA": 1})
    queue = waiting("labA", 2, t0=0) + waiting("labB", 1, t0=10)
    one = plan(queue, running("labA", 1), free=1, sharing=sharing, now=NOW)
    assert admitted(one) == ["labB-0"]
    assert one.waits["labA-0"] == "project labA holds its quota of 1; it may borrow a worker that falls idle"
    two = plan(queue, running("labA", 1), free=3, sharing=sharing, now=NOW)
    assert [(a.key, a.borrowed) for a in two.admit] == [("labB-0", False), ("labA-0", True), ("labA-1", True)]


def test_held_work_waits_for_its_own_reason_and_is_never_admitted():
    queue = waiting("hospital", 2, held="window 22:00-06:00 opens at 22:00") + waiting("labA", 1)
    result = plan(queue, [], free=4, sharing=Sharing(), now=NOW)
    assert admitted(result) == ["labA-0"]
    assert result.waits == {"hospital-0": "window 22:00-06:00 opens at 22:00",
                            "hospital-1": "window 22:00-06:00 opens at 22:00"}


def test_why_work_waits_when_every_worker_is_busy():
    queue = waiting("labA", 2, "normal") + [Waiting("urgent", "labA", "high", 9)]
    result = plan(queue, running("labA", 2, "high"), free=0, sharing=Sharing(), now=NOW)
    assert result.preempt == ()  # the runs are of the highest priority: nobody yields
    assert list(result.waits.items()) == [("urgent", "next when a worker is free"),
                                          ("labA-0", "behind 1 waiting of higher priority"),
                                          ("labA-1", "behind 1 waiting of higher priority")]


# --- preemption ----------------------------------------------------------------------------

def test_higher_priority_work_makes_the_lowest_priority_run_yield():
    runs = running("labA", 1, "normal") + running("labA", 1, "low") + running("labB", 1, "low", started=LONG_AGO + 60)
    result = plan(waiting("hospital", 1, "high"), runs, free=0, sharing=Sharing(), now=NOW)
    assert result.preempt == (("run-labB-low-0", "hospital-0"),)  # low first; of the lows, the latest started
    assert result.waits["hospital-0"] == "next: run-labB-low-0 yields its worker at its next checkpoint"


def test_one_run_yields_per_waiting_item_and_never_twice():
    runs = running("labA", 4, "low")
    result = plan(waiting("hospital", 2, "high"), runs, free=0, sharing=Sharing(), now=NOW)
    assert len(result.preempt) == 2 and len({victim for victim, _ in result.preempt}) == 2
    assert {waiter for _, waiter in result.preempt} == {"hospital-0", "hospital-1"}


def test_equal_priority_and_inference_runs_never_yield():
    chunks = [Running("chunk-1", "hospital", "low", LONG_AGO, preemptible=False)]
    result = plan(waiting("labA", 1, "high"), chunks + running("labB", 1, "high"), free=0, sharing=Sharing(), now=NOW)
    assert result.preempt == ()


def test_a_run_is_not_preempted_before_min_run():
    fresh = running("labA", 1, "low", started=NOW - 599)
    assert plan(waiting("h", 1, "high"), fresh, 0, Sharing(min_run=600), NOW).preempt == ()
    assert plan(waiting("h", 1, "high"), fresh, 0, Sharing(min_run=0), NOW).preempt == (("run-labA-low-0", "h-0"),)


def test_borrowed_workers_are_given_back_when_the_owner_needs_them():
    sharing = Sharing(quotas={"labA": 1})
    runs = running("labA", 1) + [Running("borrowed", "labA", "normal", LONG_AGO, preemptible=True, borrowed=True)]
    result = plan(waiting("labB", 1, t0=NOW), runs, free=0, sharing=sharing, now=NOW)
    assert result.preempt == (("borrowed", "labB-0"),)
    # labA's own extra work does not reclaim from itself
    assert plan(waiting("labA", 1), runs, 0, sharing, NOW).preempt == ()


def test_a_preempting_window_takes_every_training_worker():
    runs = running("labA", 2, "normal") + running("labB", 1, "high")
    chunks = waiting("hospital", 5, "normal", preempts=True)
    result = plan(chunks, runs, free=0, sharing=Sharing(), now=NOW)
    assert {victim for victim, _ in result.preempt} == {r.key for r in runs}
    assert result.waits["hospital-3"] == "every worker busy; 3 ahead of it"


# --- settings: shares and quotas are refused when the settings load -------------------------

@pytest.mark.parametrize("env, named", [
    ({"MEDQ_QUOTAS": "labA=four"}, "MEDQ_QUOTAS: the quota of labA must be a whole number of GPUs, got 'four'"),
    ({"MEDQ_QUOTAS": "labA"}, "MEDQ_QUOTAS: 'labA' must look like NAME=NUMBER"),
    ({"MEDQ_SHARES": "lab A=2"}, "MEDQ_SHARES entry 'lab A=2': 'lab A' is not a project name"),
    ({"MEDQ_SHARES": "labA=-1"}, "MEDQ_SHARES: the share of labA must be a positive number"),
    ({"MEDQ_ADMIT_INTERVAL": "0"}, "MEDQ_ADMIT_INTERVAL must be more than 0"),
])
def test_bad_shares_quotas_and_admission_settings_are_refused_at_load(env, named):
    from medq.common.settings import load_settings

    with pytest.raises(SpecError, match=named.replace("(", r"\(").replace(")", r"\)")):
        load_settings(env)


def test_the_settings_give_the_policy_its_shares_and_quotas():
    from medq.common.settings import load_settings

    sharing = load_settings({"MEDQ_SHARES": "labA=2", "MEDQ_QUOTAS": "labA=3,labB=1",
                             "MEDQ_PREEMPT_MIN_RUN": "30"}).sharing
    assert (sharing.share("labA"), sharing.share("other"), dict(sharing.quotas), sharing.min_run) == \
        (2.0, 1.0, {"labA": 3, "labB": 1}, 30.0)


def test_medq_queue_refuses_a_quota_that_does_not_parse_with_one_line(tmp_path):
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "medq.scheduler", "queue"], capture_output=True, text=True,
                         env={**os.environ, "MEDQ_HOME": str(tmp_path), "MEDQ_QUOTAS": "labA=1,labA=2"})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == "error: MEDQ_QUOTAS: labA given more than once"


def test_the_line_is_fast_with_thousands_waiting():
    """Each choice looks at the groups' heads only: 5 000 waiting in 10 projects, planned at once."""
    import time

    items = [w for p in range(10) for w in waiting(f"lab{p}", 500, t0=p)]
    started = time.perf_counter()
    result = plan(items, running("lab0", 4), free=16, sharing=Sharing(quotas={"lab1": 2}), now=NOW)
    assert time.perf_counter() - started < 2.0
    assert len(result.admit) == 16 and len(result.waits) == len(items) - 16
    assert admitted(result)[0] == "lab1-0"  # lab0 holds four workers: every other project comes first


def test_no_ping_pong_between_a_high_priority_borrower_and_a_low_priority_owner():
    """A at its quota (one own run) waits with high priority; B's low-priority member runs within
    B's quota on the worker A gave back: A may not take it (the worker would go to B again)."""
    sharing = Sharing(quotas={"labA": 1, "labB": 1}, min_run=0)
    runs = [Running("a1", "labA", "high", LONG_AGO, preemptible=True),
            Running("b1", "labB", "low", LONG_AGO, preemptible=True)]
    result = plan([Waiting("a2", "labA", "high", 0.0)], runs, free=0, sharing=sharing, now=NOW)
    assert result.preempt == () and "holds its quota of 1" in result.waits["a2"]


def test_a_borrowed_run_is_reclaimed_only_while_its_project_is_over_its_quota():
    sharing = Sharing(quotas={"labA": 2, "labB": 1}, min_run=0)
    borrowed_within = [Running("a1", "labA", "normal", LONG_AGO, preemptible=True, borrowed=True),
                       Running("a2", "labA", "normal", LONG_AGO, preemptible=True)]
    assert plan([Waiting("b1", "labB", "normal", 0.0)], borrowed_within, 0, sharing, NOW).preempt == ()
    over = borrowed_within + [Running("a3", "labA", "normal", LONG_AGO + 1, preemptible=True, borrowed=True)]
    assert plan([Waiting("b1", "labB", "normal", 0.0)], over, 0, sharing, NOW).preempt == (("a3", "b1"),)
