"""Bulk inference through the family registry: the archive/DICOM/chunk layer imports no family,
every family states its inference (torch-free) and its CSV, the options a model cannot honour
are refused at submit before a job exists, and a weighted chest ensemble runs end to end."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medq.common import inference as inference_layer
from medq.common.families import registry
from tests.unit.infer_jobs import csv_rows, home, infer_jobs, medq, run_chunks, trained_job  # noqa: F401 (home: a fixture)
from tests.unit.test_predict import constant_member

INFERENCE_DIR = Path(inference_layer.__file__).parent
FAMILIES = "medq.common.families"


def python(code: str) -> str:
    """What a fresh interpreter prints running ``code``."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def _imported(path: Path, package: str) -> list[str]:
    """Every module a file imports (``from medq.common import families`` counts as the family package)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return found


def test_the_archive_dicom_and_chunk_layer_imports_no_family_module():
    offenders = {path.name: name for path in sorted(INFERENCE_DIR.glob("*.py"))
                 for name in _imported(path, "medq.common.inference")
                 if name == FAMILIES or name.startswith(FAMILIES + ".")}
    assert offenders == {}
    assert len(list(INFERENCE_DIR.glob("*.py"))) >= 10  # the layer was found


def test_importing_the_chunk_layer_loads_no_family():
    code = ("import sys, medq.common.inference.chunk, medq.common.inference.landmarks, medq.common.inference.archive; "
            "print([m for m in sys.modules if m.startswith('medq.common.families')])")
    assert python(code) == "[]"


def test_every_familys_inference_is_torch_free_to_import_and_to_check():
    code = ("import sys; from medq.common.families.registry import families; "
            "[(f.inference.default_chunk, f.inference.csv_columns({})) for f in families()]; "
            "print('torch' in sys.modules)")
    assert python(code) == "False"


@pytest.mark.parametrize("kind", registry.kinds())
def test_every_family_writes_a_csv_row_per_study_under_its_columns(kind):
    inference = registry.family(kind).inference
    columns = inference.csv_columns({"family": kind})
    assert columns[:4] == ["path", "key", "state", "reason"] and len(set(columns)) == len(columns)
    study = SimpleNamespace(path="a/b.dcm", path_hash="0" * 32, state="failed", reason="empty file", study_uid=None,
                            series_uid=None, sop_uid=None, source_format=None, width=None, height=None, qc_flag=None,
                            result=None)
    row = inference.csv_row(study)
    assert len(row) == len(columns) and row[:4] == ["a/b.dcm", "0" * 32, "failed", "empty file"]
    assert inference.default_chunk >= 1


# --- refused at submit, before a job exists -----------------------------------------------------


@pytest.fixture
def archive(tmp_path):
    from medq.common.families.chest.synth import synth_chest

    synth_chest(tmp_path / "synth", n=3, seed=7)
    return tmp_path / "synth" / "images"


def _hrnet_checkpoint(path: Path, **spec) -> Path:
    from medq.common.families.ceph.spec import HRNetSpec

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"spec": HRNetSpec(**spec).to_dict(), "kind": "hrnet", "model": {}}, path)
    return path


@pytest.mark.parametrize("options, said", [
    (["--aggregation", "median"], "--aggregation median: an HRNet model supports aggregation mean only"),
    (["--aggregation", "weighted"], "--aggregation weighted: an HRNet model supports aggregation mean only"),
    (["--tta", "flip"], "--tta flip: this HRNet model was trained without left/right landmark pairs"),
])
def test_an_hrnet_job_refuses_what_it_cannot_do_with_exit_code_2_and_no_job(home, archive, tmp_path, options, said):
    job_id = trained_job(home, "hrnet", [_hrnet_checkpoint(tmp_path / "seed-0" / "best-0003.pt")])
    done = medq("submit", "infer", "--archive", archive, "--model", job_id, *options)
    assert done.exit_code == 2 and said in done.stderr, done.output
    assert infer_jobs(home) == []


def test_an_hrnet_model_with_flip_pairs_takes_the_flip_test(home, archive, tmp_path):
    from medq.common.families.ceph.infer import INFERENCE

    path = _hrnet_checkpoint(tmp_path / "best-0001.pt", flip_pairs=((1, 2),))
    INFERENCE.check({"aggregation": "mean", "tta": "flip"}, [path])  # no error


def test_weighted_needs_each_members_validation_loss_and_a_segmenter_takes_no_aggregation(home, archive, tmp_path):
    from medq.common.families.chest.spec import EnsembleSpec

    bare = tmp_path / "bare.pt"
    torch.save({"spec": EnsembleSpec(image_size=64).to_dict(), "model": {}}, bare)  # no val_loss: not a best.pt
    done = medq("submit", "infer", "--archive", archive, "--model", bare, "--aggregation", "weighted")
    assert done.exit_code == 2 and "--aggregation weighted" in done.stderr and "validation loss" in done.stderr
    segmenter = tmp_path / "seg.pt"
    torch.save({"spec": {"arch": "unet"}, "kind": "segment", "model": {}}, segmenter)
    done = medq("submit", "infer", "--archive", archive, "--model", segmenter, "--aggregation", "median",
                "--out", tmp_path / "out")
    assert done.exit_code == 2 and "--aggregation median: a segmentation model supports" in done.stderr
    assert infer_jobs(home) == []


def test_a_job_that_is_not_a_trained_model_is_refused(home, archive, tmp_path):
    model = constant_member(tmp_path / "m.pt", np.full((15, 2), 0.5))
    first = medq("submit", "infer", "--archive", archive, "--model", model)
    assert first.exit_code == 0, first.output
    job_id = first.stdout.splitlines()[0]
    done = medq("submit", "infer", "--archive", archive, "--model", job_id)
    assert done.exit_code == 2 and f"job {job_id} is a infer job, not a trained model" in done.stderr
    assert infer_jobs(home) == [job_id]


# --- weighted, end to end -------------------------------------------------------------------------


def test_weighted_aggregation_runs_end_to_end_on_a_chest_ensemble_and_the_spread_limit_reaches_qc(home, archive,
                                                                                                  tmp_path):
    """Three members with every landmark at x = 0.2, 0.3, 0.7 of the width and validation losses
    1, 1, 2: weights 0.4, 0.4, 0.2 put x at 0.34 of the width (the mean would put it at 0.4).
    Their spread, sqrt(1400 / 3) % of the width, is above a 3 % limit and below a 50 % one."""
    from medq.common.families.chest.schema import N_LANDMARKS

    points = lambda x: np.tile([x, 0.5], (N_LANDMARKS, 1))  # noqa: E731
    members = [constant_member(tmp_path / f"m{k}" / "best.pt", points(x), val_loss=loss)
               for k, (x, loss) in enumerate([(0.2, 1.0), (0.3, 1.0), (0.7, 2.0)])]
    job = trained_job(home, "ensemble", members)
    by_option = {}
    for options in (["--aggregation", "weighted", "--spread-limit", "0.5"], []):
        done = medq("submit", "infer", "--archive", archive, "--model", job, "--chunk", "2", *options)
        assert done.exit_code == 0, done.output
        infer_id = done.stdout.splitlines()[0]
        assert run_chunks(home, infer_id) == ["succeeded", "succeeded"]
        by_option[options[1] if options else "mean"] = csv_rows(infer_id)
    for weighted, mean in zip(by_option["weighted"], by_option["mean"]):
        width = float(weighted["width"])
        assert weighted["state"] == "done" and weighted["x1"] and weighted["review"] == "1"
        assert float(weighted["x1"]) == pytest.approx(0.34 * width, abs=0.02)
        assert float(mean["x15"]) == pytest.approx(0.40 * width, abs=0.02)
        assert float(weighted["spread1_px"]) == pytest.approx(np.sqrt(1400 / 3) / 100 * width, abs=0.02)
        assert "ensemble spread above" not in weighted["review_reasons"]  # the 50 % limit
        assert "ensemble spread above 9.0 px at landmark 1" in mean["review_reasons"]  # 3 % of 299 px
        assert "implausible geometry" in weighted["review_reasons"]  # every landmark at one point
