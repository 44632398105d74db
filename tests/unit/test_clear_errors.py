"""Bad input and odd conditions end in a sentence that names the file, row or option; never a
traceback and never a hang."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medq.common.families.ceph.readers import read_ceph_csv, read_isbi
from medq.common.families.ceph.synth import synth_ceph
from medq.common.datafiles import decoded_image_size
from medq.common.errors import DataError, SpecError
from medq.common.families.ceph.spec import HRNetSpec
from medq.common.families.chest.spec import EnsembleSpec
from medq.common.families.ct_lesions.spec import SegmentSpec
from medq.common.specs import InferSpec, SplitSpec


@pytest.mark.parametrize("make, message", [
    (lambda: EnsembleSpec(lr_finetune_head=float("nan")), r"lr_finetune_head \(--lr-head\) must be a finite number"),
    (lambda: HRNetSpec(lr=float("nan")), r"lr \(--lr\) must be a finite number"),
    (lambda: HRNetSpec(sigma=float("inf")), r"sigma \(--sigma\) must be a finite number"),
    (lambda: SegmentSpec(w_ce=float("nan"), w_dice=float("nan"), w_focal=float("nan")), r"--loss-weights"),
    (lambda: SegmentSpec(w_ce=0, w_dice=0, w_focal=0), r"at least one of the loss weights"),
    (lambda: EnsembleSpec(image_size=100_000), r"image_size \(--image-size\) must be in \[32, 4096\]"),
    (lambda: EnsembleSpec(loader_workers=1000), r"loader_workers \(--loader-workers\) must be in \[0, 64\]"),
    (lambda: EnsembleSpec(lr_finetune_backbone=-1), r"--lr-backbone\) must be in \(0, 1\]"),
    (lambda: SegmentSpec(class_weights=(1, 1, float("inf"), 1)), r"class_weights \(--class-weights\)"),
    (lambda: InferSpec(archive="/a", checkpoints=("/m",), loader_workers=500), r"--loader-workers"),
    (lambda: SplitSpec(train=float("nan")), r"train must be a finite number"),
])
def test_every_spec_number_is_finite_and_bounded(make, message):
    with pytest.raises(SpecError, match=message):
        make()


def test_the_defaults_pass_their_own_bounds():
    for spec in (EnsembleSpec(), HRNetSpec(), SegmentSpec(), InferSpec(archive="/a", checkpoints=("/m",))):
        assert spec.to_dict()


@pytest.fixture
def isbi(tmp_path) -> Path:
    synth_ceph(tmp_path / "ceph", n=4, seed=1, n_test=1, width=96, height=120)
    return tmp_path / "ceph"


def test_a_decompression_bomb_in_training_data_is_refused_by_name(isbi):
    image = isbi / "RawImage" / "TrainingData" / "001.bmp"
    Image.new("1", (30000, 30000)).save(image.with_suffix(".png"))  # 30000 x 30000, 100 kB on disk
    image.unlink()
    with pytest.raises(DataError, match=r"001.png: unreadable image: image too large \(Image size \(900000000 pixels\)"):
        read_isbi(isbi)
    assert "too large" in decoded_image_size(image.with_suffix(".png"))


def _ceph_csv(isbi: Path, tmp_path: Path) -> Path:
    header = "image,spacing_mm," + ",".join(f"x{k},y{k}" for k in range(1, 20))
    points = np.loadtxt(isbi / "AnnotationsByMD" / "400_senior" / "001.txt", delimiter=",", max_rows=19)
    row = "../ceph/RawImage/TrainingData/001.bmp,0.1," + ",".join(f"{v:g}" for v in points.ravel())
    path = tmp_path / "csv" / "landmarks.csv"
    path.parent.mkdir()
    path.write_text(header + "\n" + row + "\n")
    return path


def test_a_ceph_csv_with_a_bom_reads_and_one_with_latin1_bytes_names_the_line(isbi, tmp_path):
    path = _ceph_csv(isbi, tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # saved by Excel
    assert len(read_ceph_csv(path).records) == 1
    path.write_bytes(path.read_bytes()[3:] + "# Müller\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"landmarks.csv: line 3: byte 0xfc is not UTF-8 text"):
        read_ceph_csv(path)
    path.write_text("image,spacing,x1\n")
    with pytest.raises(DataError, match=r"column 2 is 'spacing', expected 'spacing_mm'"):
        read_ceph_csv(path)


def _finishes(call, seconds: float = 10) -> bool:
    done = threading.Event()

    def run():
        try:
            call()
        except Exception:  # noqa: BLE001  (only whether it returns matters here)
            pass
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(seconds)


def test_a_fifo_in_a_data_folder_is_refused_not_waited_on(tmp_path, isbi):
    from medq.common.families.chest.csvio import validate_dataset
    from medq.common.families.ct_lesions.data import read_medseg

    seg = tmp_path / "ct"
    seg.mkdir()
    os.mkfifo(seg / "images_x.npy")
    np.save(seg / "masks_x.npy", np.zeros((1, 8, 8), dtype=np.uint8))
    assert _finishes(lambda: read_medseg(seg)), "read_medseg blocked on a FIFO"
    with pytest.raises(DataError, match=r"images_x.npy: is not a regular file \(a pipe, socket or device\)"):
        read_medseg(seg)
    chest = tmp_path / "chest"
    chest.mkdir()
    os.mkfifo(chest / "landmarks.csv")
    assert _finishes(lambda: validate_dataset(chest))
    with pytest.raises(DataError, match="landmarks.csv: is not a regular file"):
        validate_dataset(chest)
    fifo = isbi / "RawImage" / "TrainingData" / "009.bmp"
    os.mkfifo(fifo)
    assert _finishes(lambda: read_isbi(isbi))
    with pytest.raises(DataError, match=r"009.bmp: unreadable image: is not a regular file"):
        read_isbi(isbi)


def test_stored_text_with_brackets_is_printed_as_text(capsys):
    from medq.scheduler.render import console, print_results

    results = {"job_id": "abc", "kind": "ensemble", "state": "failed", "error": "data folder br[/x] [red]gone",
               "members": [], "ensemble": [], "sets": []}
    print_results(console(), results)
    assert "data folder br[/x] [red]gone" in capsys.readouterr().out


def test_flower_options_typed_with_a_space_reach_flower_as_name_equals_value():
    from medq.scheduler.flower import flower_args

    assert flower_args(["--address", "0.0.0.0", "--port", "5555"]) == ["--address=0.0.0.0", "--port=5555"]
    assert flower_args(["--port=5555"]) == ["--port=5555", "--address=127.0.0.1"]
    assert flower_args(["--persistent", "--port", "1"]) == ["--persistent", "--port=1", "--address=127.0.0.1"]


def test_an_unreachable_server_is_named_without_its_password(monkeypatch):
    import redis.exceptions
    from sqlalchemy.exc import OperationalError

    from medq.scheduler.cli_support import server_problem

    monkeypatch.setenv("MEDQ_BROKER_URL", "redis://:hunter2@redis-host:6379/0")
    monkeypatch.setenv("MEDQ_DATABASE_URL", "postgresql+psycopg://medq:s3cret@db-host:5432/medq")
    broker = server_problem(redis.exceptions.AuthenticationError("invalid password hunter2"))
    assert broker == "cannot use the broker at redis://:***@redis-host:6379/0: invalid password ***"
    database = server_problem(OperationalError("SELECT 1", {}, Exception('password authentication failed for "medq"')))
    assert database.startswith("cannot use the database at postgresql+psycopg://medq:***@db-host:5432/medq")
    assert "s3cret" not in database and server_problem(ValueError("x")) is None


def test_a_crash_loop_backs_off_but_a_crash_after_a_healthy_run_restarts_at_once(monkeypatch):
    from medq.workers.plan import WorkerPlan
    from medq.workers.supervisor import RESTART_BACKOFF, Child, Supervisor

    class Exited:
        returncode = 1

        def poll(self):
            return 1

    supervisor = Supervisor.__new__(Supervisor)
    child = Child(WorkerPlan("cpu0", ("gpu",), "cpu0@h"), process=Exited(), restarts=4, started_at=0.0)
    supervisor._check(child, now=5.0)  # died 5 s after it started: still a crash loop
    assert child.next_start == 5.0 + RESTART_BACKOFF[-1] and child.restarts == 5
    child.process, child.started_at = Exited(), 100.0
    supervisor._check(child, now=100.0 + 3600)  # ran an hour, then died: a new fault
    assert child.next_start == 3700.0 + RESTART_BACKOFF[0] and child.restarts == 1


def test_cancel_reasons_say_what_had_run():
    from medq.common.store.jobs import cancel_reason
    from medq.common.store.models import Member

    assert cancel_reason(Member(attempts=0, epoch=0)) == "cancelled before it started"
    assert "after 2 epoch(s) on 1 attempt(s)" in cancel_reason(Member(attempts=1, epoch=2))


def test_a_shutdown_that_interrupts_a_write_is_not_taken_for_the_jobs_failure():
    """billiard's SIGTERM handler raises SystemExit mid-torch.save, which then raises its own
    RuntimeError on the way out; the member must not be failed for that."""
    from medq.tasks.runtime import interrupted

    try:
        try:
            raise SystemExit(-241)
        except SystemExit:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
    except RuntimeError as exc:
        assert interrupted(exc)
    assert not interrupted(RuntimeError("a real bug"))
