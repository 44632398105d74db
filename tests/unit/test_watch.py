"""`medq watch` as a person reads it: in a log (plain time-stamped lines, ETA, the worker's tag
as text, a last line saying how the job ended) and on a terminal (a tmux capture of rich's bars)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from rich.console import Console
from sqlalchemy import update

from medq.common.store import jobs, open_store
from medq.common.store.models import Job, Member, utcnow
from medq.scheduler.watch import watch_job


@pytest.fixture
def store(tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("MEDQ_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MEDQ_HOME", str(tmp_path / "home"))
    from medq.common.settings import load_settings

    return open_store(load_settings())


def _set(store, job_id, seed, **fields):
    with store.session() as s:
        s.execute(update(Member).where(Member.job_id == job_id, Member.seed == seed).values(**fields))


def _job(store, job_id, **fields):
    with store.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**fields))


def _running(store, job_id, seed, epoch, step, worker="cpu0@node-a", **more):
    _set(store, job_id, seed, state="running", epoch=epoch, total_epochs=4, step=step, steps_per_epoch=10,
         worker=worker, device="cpu", started_at=utcnow() - timedelta(minutes=5), **more)


def _follow(store, job_id, every=0.3):
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=False)
    result = {}
    thread = threading.Thread(target=lambda: result.update(state=watch_job(store, job_id, console, 0.1, every)))
    thread.start()
    return out, thread, result


def test_in_a_log_watch_prints_plain_time_stamped_lines_and_how_the_job_ended(store):
    job_id, _ = jobs.create_job(store, "ensemble", {}, {"split": {}}, [0, 1], 4)
    _job(store, job_id, state="running", started_at=utcnow() - timedelta(minutes=6))
    _running(store, job_id, 0, epoch=2, step=5, val_error_px=3.25, images_per_s=41.0)
    out, thread, result = _follow(store, job_id)
    for step in range(6, 10):  # the member moves on while watch follows it
        time.sleep(0.35)
        _set(store, job_id, 0, step=step)
    _set(store, job_id, 0, state="succeeded", epoch=4, finished_at=utcnow())
    _set(store, job_id, 1, state="failed", error="NaN loss", finished_at=utcnow())
    _job(store, job_id, state="failed", finished_at=utcnow(), error="1 of 2 members failed")
    thread.join(timeout=30)
    text = out.getvalue()
    assert result["state"] == "failed"
    lines = text.splitlines()
    assert len(lines) >= 6, text  # periodic lines, not silence until the end
    assert "\x1b[" not in text  # no terminal control codes in a log
    member = [line for line in lines if line.strip().split(" ", 1)[-1].startswith("seed 0")]
    assert member and "[cpu0]" in member[0], text  # the worker's tag, not swallowed as markup
    assert "val 3.25 px" in member[0] and re.search(r"elapsed 0:0[5-9]:", member[0]), member[0]  # since it started
    assert any("eta " in line and "steps/s" in line for line in member), text  # rich's own speed estimate
    assert re.match(rf"job {job_id} failed after 0:0[6-9]:", lines[-1]), lines[-1]
    assert "1 succeeded, 1 failed" in lines[-1] and "1 of 2 members failed" in lines[-1]


def test_a_single_model_job_is_named_by_its_family_and_hrnet_shows_mm(store):
    job_id, _ = jobs.create_job(store, "hrnet", {}, {"split": {}, "spacing_known": True}, [0], 4)
    _job(store, job_id, state="running", started_at=utcnow())
    _running(store, job_id, 0, epoch=1, step=3, val_score=2.5)
    out, thread, _ = _follow(store, job_id)
    time.sleep(0.5)
    _set(store, job_id, 0, state="succeeded", epoch=4)
    _job(store, job_id, state="succeeded", finished_at=utcnow())
    thread.join(timeout=30)
    text = out.getvalue()
    assert "seed 0" not in text and "cephalometric HRNet" in text, text
    assert "val MRE 2.50 mm" in text and " px" not in text, text
    assert text.splitlines()[-1].startswith(f"job {job_id} succeeded after")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (the CI installs it)")
def test_on_a_terminal_watch_draws_bars_with_eta_and_the_worker_tag(store, tmp_path):
    """The real `medq watch` in a tmux pane, captured as a person sees it."""
    from medq.common.settings import load_settings

    job_id, _ = jobs.create_job(store, "ensemble", {}, {"split": {}}, [0, 1], 4)
    _job(store, job_id, state="running", started_at=utcnow())
    _running(store, job_id, 0, epoch=2, step=0, val_error_px=3.25)
    _running(store, job_id, 1, epoch=1, step=0, worker="gpu3@node-b")
    # a tmux server of the test's own (-L, no config), and a clean environment: a developer's
    # tmux and MEDQ_* variables stay out of it
    tmux = ["tmux", "-L", f"medq-watch-{os.getpid()}", "-f", "/dev/null"]
    session = "watch"
    env = f"env -i PATH={os.environ['PATH']} HOME={tmp_path} TERM=xterm-256color MEDQ_HOME={load_settings().home}"

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

    def wait_for(text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while text not in (shown := screen()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return shown

    # (the short sleep: tmux sizes the pane to -x just after it starts the command)
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "200", "-y", "20",
                    f"sleep 1; {env} {sys.executable} -m medq.scheduler watch {job_id} --interval 0.2; sleep 30"],
                   check=True)
    try:
        assert "seed 1" in wait_for("seed 1"), screen()  # the first frame is drawn
        for step in range(1, 12):
            time.sleep(0.4)
            _set(store, job_id, 0, step=step)
            _set(store, job_id, 1, step=step)
        shown = wait_for("steps/s")
        assert "seed 0" in shown and "seed 1" in shown and f"job {job_id[:8]}" in shown, shown
        assert "[cpu0]" in shown and "[gpu3]" in shown, shown
        assert "━" in shown and "%" in shown, shown  # rich's bars
        assert "steps/s" in shown, shown  # rich's speed, hence its ETA column
        for seed in (0, 1):
            _set(store, job_id, seed, state="succeeded", epoch=4)
        _job(store, job_id, state="succeeded", finished_at=utcnow())
        shown = wait_for(f"job {job_id} succeeded after")
        assert f"job {job_id} succeeded after" in shown and "2 succeeded" in shown, shown
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
