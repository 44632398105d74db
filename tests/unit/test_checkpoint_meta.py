"""The CLI reads a checkpoint's spec without torch and without running code from the file."""

from __future__ import annotations

import pickle
import zipfile

import pytest
import torch

from medq.common.checkpoint_meta import checkpoint_kind, checkpoint_spec, checkpoint_value
from medq.common.errors import SpecError
from medq.common.families.registry import family_of_checkpoint, family_of_spec
from medq.common.families.ceph.spec import HRNetSpec
from medq.common.families.chest.spec import EnsembleSpec
from medq.common.families.ct_lesions.spec import SegmentSpec


def test_the_spec_of_a_torch_checkpoint_is_read_and_names_its_family(tmp_path):
    path = tmp_path / "best.pt"
    torch.save({"spec": SegmentSpec(encoder="resnet18").to_dict(), "model": {"w": torch.ones(3)},
                "hu": {"mean": -500.0}, "val_loss": 0.25}, path)
    spec = checkpoint_spec(path)
    assert checkpoint_value(path, "val_loss") == 0.25 and checkpoint_value(path, "epoch") is None
    assert spec["encoder"] == "resnet18" and checkpoint_kind(path) is None  # written before checkpoints kept it
    assert family_of_checkpoint(path).kind == "segment"  # the one family whose spec takes every field
    assert family_of_spec(HRNetSpec().to_dict()).kind == "hrnet"
    assert family_of_spec(EnsembleSpec().to_dict()).kind == "ensemble"
    torch.save({"spec": {"anything": 1}, "kind": "weights", "job_kind": "hrnet", "model": {}}, path)
    assert family_of_checkpoint(path).kind == "hrnet"  # a checkpoint that records its kind


def test_a_spec_no_family_takes_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"spec": {"backbone": "resnet18", "width": "w32"}, "model": {}}, path)
    with pytest.raises(SpecError, match="odd.pt: its spec fits 0 model families"):
        family_of_checkpoint(path)


class _Boom:
    def __reduce__(self):
        import os

        return os.system, ("touch should-not-exist",)


def test_a_hostile_pickle_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"spec": {"arch": "unet"}, "payload": _Boom()}))
    assert checkpoint_spec(path) == {"arch": "unet"}
    assert not (tmp_path / "should-not-exist").exists()


def test_a_file_that_is_no_checkpoint_is_refused_by_name(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("hello")
    with pytest.raises(SpecError, match="model.pt: not a medq checkpoint"):
        checkpoint_spec(path)


def test_a_foreign_zip_is_refused_not_a_traceback(tmp_path):
    path = tmp_path / "other.pt"
    with zipfile.ZipFile(path, "w") as archive:  # a pickle whose objects need real classes to build
        archive.writestr("x/data.pkl", pickle.dumps({"spec": {"a": 1}, "obj": zipfile.ZipInfo("n")}))
    with pytest.raises(SpecError, match="other.pt: not a medq checkpoint"):
        checkpoint_spec(path)
