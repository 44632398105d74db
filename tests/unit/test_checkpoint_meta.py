"""The CLI reads a checkpoint's spec without torch and without running code from the file."""

from __future__ import annotations

import pickle
import zipfile

import pytest
import torch

from medq.common.checkpoint_meta import checkpoint_spec, checkpoint_value
from medq.common.families.registry import family_of_checkpoint, family_of_spec
from medq.common.errors import SpecError


def test_the_spec_of_a_torch_checkpoint_is_read_and_names_the_family(tmp_path):
    path = tmp_path / "best.pt"
    torch.save({"spec": {"arch": "unetplusplus", "encoder": "resnet18", "scale": (0.9, 1.1)},
                "model": {"w": torch.ones(3)}, "hu": {"mean": -500.0}, "val_loss": 0.25}, path)
    spec = checkpoint_spec(path)
    assert spec["encoder"] == "resnet18" and family_of_checkpoint(path).kind == "segment"
    assert checkpoint_value(path, "val_loss") == 0.25 and checkpoint_value(path, "epoch") is None
    assert family_of_spec({"width": "w32"}).kind == "hrnet" and family_of_spec({"backbone": "resnet18"}).kind == "ensemble"


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
