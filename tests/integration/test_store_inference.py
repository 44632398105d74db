"""The inference half of the store's contract, on SQLite and a real PostgreSQL."""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path

import pytest

from medq.common.store import inference as ops
from medq.common.store import jobs, recovery
from medq.common.store.models import utcnow
from medq.common.store.views import infer_view

OPEN, CLOSED = time(23, 0), time(12, 0)
WINDOW = "22:00-06:00"


def _job(store, n=10, chunk=4, window=None, job_id="job000000001"):
    ops.create_infer_job(store, job_id, {"archive": "/a", "checkpoints": ["/m"]}, {}, "normal", window)
    studies = [ops.PlannedStudy(f"p{i}.png") for i in range(n)] + [ops.PlannedStudy("x", "failed", "empty file")]
    return job_id, ops.add_studies(store, job_id, iter(studies), chunk)


def _chunk_ids(store, job_id):
    from sqlalchemy import select

    from medq.common.store.models import Chunk

    with store.session() as s:
        return list(s.scalars(select(Chunk.id).where(Chunk.job_id == job_id).order_by(Chunk.index)))


def test_planning_numbers_chunks_and_records_refused_files(store):
    job_id, (n_studies, n_chunks) = _job(store)
    assert (n_studies, n_chunks) == (11, 3)
    assert ops.study_counts(store, job_id) == {"pending": 10, "failed": 1}
    assert [len(ops.pending_studies(store, job_id, i)) for i in range(3)] == [4, 4, 2]


def test_the_window_holds_chunks_and_resume_lifts_it(store):
    job_id, _ = _job(store, window=WINDOW)
    sent = []
    assert ops.dispatch_chunks(store, CLOSED, lambda c, p: sent.append((c, p))) == 0
    assert ops.dispatch_chunks(store, OPEN, lambda c, p: sent.append((c, p))) == 3
    assert {p for _, p in sent} == {"normal"}
    # The window closed before a queued chunk started: it waits for the next night.
    claim = ops.claim_chunk(store, sent[0][0], "o", "w", "cpu", 60, 3, CLOSED)
    assert not claim.run and "window" in claim.reason
    assert infer_view(store, job_id)["chunks"] == {"waiting": 1, "queued": 2}
    ops.resume_job(store, job_id)
    assert ops.claim_chunk(store, sent[0][0], "o", "w", "cpu", 60, 3, CLOSED).run


def test_a_redelivered_chunk_does_only_what_is_left_and_writes_nothing_twice(store):
    job_id, _ = _job(store)
    first = _chunk_ids(store, job_id)[0]
    ops.dispatch_chunks(store, OPEN, lambda c, p: None)
    assert ops.claim_chunk(store, first, "dead", "w1", "cpu", -1, 3, OPEN).run
    items = ops.pending_studies(store, job_id, 0)
    ops.record_studies(store, [{"study_id": sid, "state": "done", "result": {"landmarks_px": []}}
                               for sid, *_ in items[:2]])
    assert recovery.reap_lapsed_chunks(store, lambda c, p: None) == [first]
    assert ops.claim_chunk(store, first, "alive", "w2", "cpu", 60, 3, OPEN).run
    left = ops.pending_studies(store, job_id, 0)
    assert left == items[2:]
    # A late write from the dead attempt does not overwrite what is done.
    assert ops.record_studies(store, [{"study_id": items[0][0], "state": "failed", "reason": "late"}]) == 0


def test_the_job_ends_when_its_chunks_end_and_resume_retries_a_failed_chunk(store):
    job_id, _ = _job(store, n=4, chunk=2)
    ops.dispatch_chunks(store, OPEN, lambda c, p: None)
    a, b = _chunk_ids(store, job_id)
    for chunk, state in ((a, "succeeded"), (b, "failed")):
        assert ops.claim_chunk(store, chunk, f"o{chunk}", "w", "cpu", 60, 3, OPEN).run
        if state == "succeeded":
            ops.record_studies(store, [{"study_id": s, "state": "done"} for s, *_ in ops.pending_studies(store, job_id, 0)])
        ops.finish_chunk(store, chunk, f"o{chunk}", state, "disk error" if state == "failed" else None)
    view = infer_view(store, job_id)
    assert view["state"] == "failed" and "resume" in view["error"]
    assert ops.resume_job(store, job_id) == 1
    assert infer_view(store, job_id)["state"] == "queued"


def test_cancel_ends_waiting_chunks(store):
    job_id, _ = _job(store, window=WINDOW)
    jobs.request_cancel(store, job_id)
    view = infer_view(store, job_id)
    assert view["state"] == "cancelled" and view["chunks"] == {"cancelled": 3}


def test_skip_done_marks_files_an_earlier_job_did(store):
    job_id, _ = _job(store, n=3)
    ops.record_studies(store, [{"study_id": s, "state": "done"} for s, *_ in ops.pending_studies(store, job_id, 0)][:2])
    ops.create_infer_job(store, "job000000002", {"archive": "/a", "checkpoints": ["/m"]}, {}, "normal", None)
    lookup = ops.done_by_earlier_jobs(store, "/a", ["/m"], "job000000002")
    total, chunks = ops.add_studies(store, "job000000002", iter([ops.PlannedStudy(f"p{i}.png") for i in range(4)]),
                                    10, lookup)
    assert (total, chunks) == (4, 1)
    assert ops.study_counts(store, "job000000002") == {"skipped": 2, "pending": 2}


def test_an_ensemble_job_id_resolves_to_its_succeeded_members_checkpoints(store, tmp_path):
    from medq.common.errors import SpecError
    from medq.scheduler.infer_plan import resolve_model

    job_id, (m0, m1) = jobs.create_job(store, "ensemble", {}, {"data_dir": "/d"}, [0, 1])
    import torch

    best = tmp_path / "best.pt"
    torch.save({"spec": {"backbone": "resnet18"}, "model": {"w": torch.zeros(2)}}, best)
    for member, owner, state in ((m0, "a", jobs.State.SUCCEEDED), (m1, "b", jobs.State.FAILED)):
        jobs.claim_member(store, member, owner, "w", "cpu", 60, 3)
        jobs.finish_member(store, member, owner, state, artifacts={f"seed-{0 if member == m0 else 1}/best": str(best)})
    checkpoints, model_job, family = resolve_model(store, job_id)
    assert (checkpoints, model_job, family.kind) == ([str(best)], job_id, "ensemble")
    checkpoints, model_job, family = resolve_model(store, str(best))
    assert (checkpoints, model_job, family.kind) == ([str(best.resolve())], None, "ensemble")
    garbage = tmp_path / "notes.pt"
    garbage.write_bytes(b"x")
    with pytest.raises(SpecError, match="notes.pt: not a medq checkpoint"):
        resolve_model(store, str(garbage))
    with pytest.raises(SpecError, match="neither a checkpoint file nor a training job id"):
        resolve_model(store, "feedfeedfeed")


def test_an_hrnet_job_id_resolves_to_its_best_k_checkpoints(store, tmp_path):
    from medq.scheduler.infer_plan import resolve_model

    job_id, (member,) = jobs.create_job(store, "hrnet", {}, {"data_dir": "/d"}, [0])
    folder = tmp_path / "seed-0"
    folder.mkdir()
    for name in ("best-0012.pt", "best-0009.pt", "last.pt", "init.pt"):
        (folder / name).write_bytes(b"x")
    jobs.claim_member(store, member, "a", "w", "cpu", 60, 3)
    jobs.finish_member(store, member, "a", jobs.State.SUCCEEDED, artifacts={"seed-0/best": str(folder / "best-0012.pt")})
    checkpoints, model_job, family = resolve_model(store, job_id)
    assert (checkpoints, model_job, family.kind) == ([str(folder / "best-0009.pt"), str(folder / "best-0012.pt")],
                                                     job_id, "hrnet")


def test_two_files_of_one_name_get_distinct_keys_and_the_second_is_skipped(store):
    ops.create_infer_job(store, "dupjob000001", {"archive": "/a", "checkpoints": ["/m"]}, {}, "normal", None)
    names = ["a.png", "b.png", "a.png"] + [f"x{i}.png" for i in range(ops.BATCH)] + ["b.png"]  # across batches too
    total, chunks = ops.add_studies(store, "dupjob000001", iter([ops.PlannedStudy(n) for n in names]), 500)
    assert total == len(names)
    rows = list(ops.iter_studies(store, "dupjob000001"))
    assert len({r.path_hash for r in rows}) == len(names)
    dups = [r for r in rows if r.state == "skipped"]
    assert [r.path for r in dups] == ["a.png", "b.png"] and all("duplicate name" in r.reason for r in dups)
    assert ops.study_counts(store, "dupjob000001")["pending"] == len(names) - 2


def test_a_failed_chunk_is_shown_with_its_reason_and_its_studies_listed_as_not_run(store):
    from medq.scheduler.infer_views import summary_lines

    job_id, _ = _job(store, n=4, chunk=2)
    ops.dispatch_chunks(store, OPEN, lambda c, p: None)
    a, _ = _chunk_ids(store, job_id)
    assert ops.claim_chunk(store, a, "o", "w", "cpu", 60, 3, OPEN).run
    ops.finish_chunk(store, a, "o", "failed", "--out /x cannot be written: Read-only file system")
    view = infer_view(store, job_id)
    assert view["failed_chunks"] == [{"chunk": 0, "studies": 2, "error": "--out /x cannot be written: Read-only "
                                                                         "file system"}]
    assert any("chunk 0 failed (2 studies not run): --out /x" in line for line in summary_lines(view))
    listed = list(ops.iter_unsuccessful(store, job_id))
    assert [(r.path, r.state) for r in listed] == [("x", "failed"), ("p0.png", "pending"), ("p1.png", "pending")]
    assert listed[1].reason.startswith("not run: its chunk 0 failed (--out /x")


def test_a_job_that_could_not_be_enqueued_ends_its_chunks_too(store):
    job_id, _ = _job(store, n=4, chunk=2)
    jobs.fail_job(store, job_id, "could not enqueue: broker down")
    view = infer_view(store, job_id)
    assert view["state"] == "failed" and view["chunks"] == {"failed": 2}
    assert recovery.resend_queued_chunks(store, "normal", utcnow() + timedelta(seconds=1), lambda c, p: None) == []


def test_out_is_refused_inside_the_archive_under_a_file_and_where_it_cannot_be_written(tmp_path):
    from medq.common.errors import SpecError
    from medq.common.inference.archive import open_archive
    from medq.scheduler.infer_plan import check_out_dir

    archive = tmp_path / "export"
    archive.mkdir()
    (tmp_path / "afile").write_text("x")
    folder = open_archive(archive)
    with pytest.raises(SpecError, match="is inside the archive"):
        check_out_dir(archive / "overlays", folder)
    with pytest.raises(SpecError, match="cannot be written: Not a directory"):
        check_out_dir(tmp_path / "afile" / "out", folder)
    with pytest.raises(SpecError, match="cannot be written"):
        check_out_dir(Path("/proc/medq-out"), folder)
    check_out_dir(tmp_path / "out", folder)
    assert (tmp_path / "out").is_dir() and list((tmp_path / "out").iterdir()) == []


def test_a_chunk_held_for_a_retry_is_taken_by_nobody_else_and_claimed_back_without_an_attempt(store):
    """After a transient fault the task holds its chunk (hold_chunk) for its retry's countdown:
    the reaper leaves it, another worker's claim sees a live lease, the retry (same owner) gets
    it back with the attempt count unchanged and its recorded studies stay done."""
    from sqlalchemy import select

    from medq.common.store.models import Chunk

    job_id, _ = _job(store, n=4, chunk=4)
    (chunk_id,) = _chunk_ids(store, job_id)
    ops.dispatch_chunks(store, OPEN, lambda c, p: None)
    claim = ops.claim_chunk(store, chunk_id, "task-1", "w1", "cpu", 60, 3, OPEN)
    assert claim.run and claim.plan == {}
    first, *_ = ops.pending_studies(store, job_id, 0)
    ops.record_studies(store, [{"study_id": first[0], "state": "done", "result": {"a": 1}}])
    assert ops.hold_chunk(store, chunk_id, "task-1", 600, "transient fault 1: OperationalError; trying again in 10 s")
    assert not ops.hold_chunk(store, chunk_id, "someone-else", 600, "x")
    assert recovery.reap_lapsed_chunks(store, lambda c, p: None) == []
    assert "live lease" in ops.claim_chunk(store, chunk_id, "task-2", "w2", "cpu", 60, 3, OPEN).reason
    again = ops.claim_chunk(store, chunk_id, "task-1", "w1", "cpu", 60, 3, OPEN)
    assert again.run and again.job_id == job_id
    with store.session() as s:
        chunk = s.get(Chunk, chunk_id)
        assert (chunk.attempts, chunk.state) == (1, "running") and chunk.error.startswith("transient fault 1")
        assert s.scalar(select(Chunk.lease_expires_at).where(Chunk.id == chunk_id)) < utcnow() + timedelta(seconds=61)
    assert len(ops.pending_studies(store, job_id, 0)) == 3
    assert ops.finish_chunk(store, chunk_id, "task-1", "succeeded")
    with store.session() as s:
        assert s.get(Chunk, chunk_id).error is None


def test_an_inference_jobs_spec_and_plan_name_its_family(store):
    ops.create_infer_job(store, "famjob000001", {"archive": "/a", "checkpoints": ["/m"]}, {"family": "hrnet"},
                         "normal", None)
    assert ops.job_spec_and_plan(store, "famjob000001") == ({"archive": "/a", "checkpoints": ["/m"]},
                                                           {"family": "hrnet"})
