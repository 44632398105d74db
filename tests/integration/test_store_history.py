"""The training history on the real SQLite store and a real PostgreSQL server: written with the
heartbeat and the member's end by the lease owner only, an epoch finished again overwrites its
row, and `medq results --json` reads it back per member."""

from __future__ import annotations

from medq.common.store import jobs, views


def _epoch(epoch: int, loss: float, attempt: int = 1) -> dict:
    return {"epoch": epoch, "phase": "head", "train_loss": loss, "val_loss": loss / 2,
            "metrics": {"val_error_px": loss * 10}, "lrs": {"0": 1e-3}, "images_per_s": 50.0, "wall_s": 2.5,
            "attempt": attempt}


def _claimed(store):
    job_id, (member_id,) = jobs.create_job(store, "ensemble", {"loss": "mse"}, {"data_dir": "/d", "split": {}},
                                           [0], total_epochs=3)
    assert jobs.claim_member(store, member_id, "owner-a", "w1", "cpu", lease_seconds=60, max_attempts=3).run
    return job_id, member_id


def test_epochs_land_with_the_heartbeat_and_a_repeated_epoch_overwrites(store):
    job_id, member_id = _claimed(store)
    assert jobs.renew_lease(store, member_id, "owner-a", 60, epochs=[_epoch(1, 0.9), _epoch(2, 0.8)], epoch=2)
    # the worker dies after epoch 2's checkpoint was lost: a second attempt repeats epoch 2
    assert jobs.renew_lease(store, member_id, "owner-a", 60, epochs=[_epoch(2, 0.7, attempt=2)])
    assert jobs.finish_member(store, member_id, "owner-a", jobs.State.SUCCEEDED, epochs=[_epoch(3, 0.6, attempt=2)])
    history = views.job_results(store, job_id)["members"][0]["history"]
    assert [e["epoch"] for e in history] == [1, 2, 3]
    assert [e["attempt"] for e in history] == [1, 2, 2]
    assert history[1]["train_loss"] == 0.7 and history[1]["metrics"] == {"val_error_px": 7.0}
    assert history[0]["lrs"] == {"0": 1e-3} and history[0]["wall_s"] == 2.5


def test_an_owner_that_lost_its_lease_writes_no_history(store):
    job_id, member_id = _claimed(store)
    assert not jobs.renew_lease(store, member_id, "someone-else", 60, epochs=[_epoch(1, 0.9)])
    assert not jobs.finish_member(store, member_id, "someone-else", jobs.State.SUCCEEDED, epochs=[_epoch(1, 0.9)])
    assert views.job_results(store, job_id)["members"][0]["history"] == []


def test_a_member_given_back_keeps_the_epochs_it_finished(store):
    job_id, member_id = _claimed(store)
    assert jobs.release_member(store, member_id, "owner-a", "transient", epochs=[_epoch(1, 0.9)])
    assert [e["epoch"] for e in views.job_results(store, job_id)["members"][0]["history"]] == [1]


def test_epochs_of_an_attempt_that_lost_its_lease_are_kept_once(store):
    """The attempt checkpointed epoch 1 and then lost its lease: the next attempt resumes after
    epoch 1 and will not run it again, so the stale attempt's record is the history's."""
    job_id, member_id = _claimed(store)
    assert jobs.record_epochs(store, member_id, [_epoch(1, 0.9)]) == 1
    assert jobs.record_epochs(store, member_id, [_epoch(1, 0.9)]) == 1  # its exit writes it again: still one row
    assert [e["epoch"] for e in views.job_results(store, job_id)["members"][0]["history"]] == [1]
