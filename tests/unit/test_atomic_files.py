"""A full disk: nothing partial is left behind, and the error says where and how much."""

from __future__ import annotations

import pytest
import torch

from medq.common.atomic_files import DiskFull, remove_partial_files, write_atomic
from medq.common.training.checkpoint import checkpoint_bytes, prepare_workdir, save_atomic
from tests.conftest import tmpfs


@pytest.fixture
def tiny_fs(tmp_path):
    with tmpfs(tmp_path / "tiny", 4) as mount:
        yield mount


def _big(megabytes: int) -> dict:
    return {"model": {"w": torch.zeros(megabytes * 1024 * 1024 // 4)}, "epoch": 3}


def test_a_checkpoint_larger_than_the_free_space_is_refused_before_writing(tiny_fs):
    with pytest.raises(DiskFull, match=rf"no space left on {tiny_fs} \(writing last.pt needs ~9 MB, [0-4] MB free\)"):
        save_atomic(_big(8), tiny_fs / "last.pt")
    assert list(tiny_fs.iterdir()) == []


def test_a_write_that_runs_out_of_space_leaves_no_partial_file_and_says_so(tiny_fs):
    """torch's own error ("unexpected pos") becomes the sentence; the .tmp file is gone."""
    with pytest.raises(DiskFull, match=rf"no space left on {tiny_fs}"):
        write_atomic(tiny_fs / "last.pt", lambda handle: torch.save(_big(8), handle))  # no size given: no pre-check
    assert list(tiny_fs.iterdir()) == []
    with pytest.raises(DiskFull):
        write_atomic(tiny_fs / "mask.npz", lambda handle: handle.write(b"x" * (6 * 1024 * 1024)))
    assert list(tiny_fs.iterdir()) == []


def test_a_member_is_refused_before_it_trains_when_its_checkpoints_cannot_fit(tiny_fs):
    model = torch.nn.Linear(1024, 1024)  # 4 MiB of weights: ~16 MiB of checkpoints
    (tiny_fs / "seed-0").mkdir()
    (tiny_fs / "seed-0" / "last.pt.tmp").write_bytes(b"partial")
    with pytest.raises(DiskFull, match="writing a member's checkpoints needs ~17 MB"):
        prepare_workdir(tiny_fs / "seed-0", model)
    assert not (tiny_fs / "seed-0" / "last.pt.tmp").exists()  # a killed attempt's leftovers went first


def test_the_size_estimate_follows_the_tensors(tmp_path):
    assert checkpoint_bytes(_big(2)) == 3 * 1024 * 1024
    (tmp_path / "a.tmp").write_bytes(b"x")
    assert remove_partial_files(tmp_path) == 1
