"""A trained segmenter's outputs through the one chunk loop: what --outputs chooses, a fractional
DICOM SEG of a real CT series read back with highdicom, and the reason on a study whose input
cannot have an output asked for by name."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medq.common.inference.archive import open_archive
from tests.unit.test_seg_volumes import write_series

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from medq.common.families.registry import family
    from medq.common.training.kit import TrainHooks

    folder = tmp_path_factory.mktemp("seg")
    kind = family("segment")
    example = kind.example(folder / "example")
    return kind.train(example.spec, kind.plan(example.spec, example.data_dir), 0, folder / "m", TrainHooks()).checkpoints["best"]


def run(checkpoint, studies, out, **options):
    from medq.common.families.registry import family
    from medq.common.inference.chunk import run_chunk
    from medq.common.specs import InferSpec

    kind = family("segment")
    spec = InferSpec(archive=str(studies), checkpoints=(str(checkpoint),), out_dir=str(out), **options)
    archive = open_archive(studies)
    items = [(k, entry.path) for k, entry in enumerate(kind.inference.studies(archive))]
    outcomes = []
    predictor = kind.inference.predictor(spec)
    try:
        run_chunk(items, archive, predictor, 0, outcomes.extend)
    finally:
        predictor.close()
    return {path: o for (_, path), o in zip(items, sorted(outcomes, key=lambda o: o.study_id))}


def test_a_fractional_seg_of_a_series_holds_each_class_s_probability(checkpoint, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    sources = write_series(studies, 3, gap_mm=2.5)
    out = tmp_path / "out"
    (done,) = run(checkpoint, studies, out, outputs=("seg", "sr"), seg_type="fractional").values()
    assert done.state == "done" and set(done.result["outputs"]) == {"seg", "sr"}  # nothing else was asked for
    assert not (out / "masks").exists() and not (out / "overlays").exists()
    seg = hd.seg.segread(out / done.result["outputs"]["seg"])
    assert seg.SegmentationType == "FRACTIONAL" and int(seg.NumberOfFrames) == 3 * 3
    assert seg.SOPInstanceUID == done.result["dicom"]["seg"]
    uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in sources]
    probabilities = seg.get_pixels_by_source_instance(uids, combine_segments=False, rescale_fractional=True)
    assert probabilities.shape == (3, 128, 128, 3) and 0 <= probabilities.min() and probabilities.max() <= 1
    # the three segments' probabilities with background's make 1 (within 8-bit rounding)
    assert (probabilities.sum(axis=-1) <= 1 + 3 / 255).all()
    sr = hd.sr.srread(out / done.result["outputs"]["sr"])
    assert sr.SOPInstanceUID == done.result["dicom"]["sr"]


def test_outputs_a_study_cannot_have_are_noted_and_the_rest_written(checkpoint, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    np.save(studies / "scan.npy", np.full((2, 64, 64), -800, dtype=np.float32))
    out = tmp_path / "out"
    (done,) = run(checkpoint, studies, out, outputs=("npz", "seg")).values()
    assert done.result["outputs"] == {"npz": f"masks/{done.study_id}.npz"}
    assert done.result["output_notes"] == ["seg not written: the source is npy, not a DICOM series"]
    (default,) = run(checkpoint, studies, tmp_path / "out2").values()  # defaults: what the input allows, no notes
    assert set(default.result["outputs"]) == {"npz", "overlay"} and "output_notes" not in default.result


def test_the_same_study_done_again_writes_objects_with_the_same_uids(checkpoint, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    write_series(studies, 2, gap_mm=2.5)
    first = next(iter(run(checkpoint, studies, tmp_path / "a", outputs=("seg", "sr")).values()))
    again = next(iter(run(checkpoint, studies, tmp_path / "b", outputs=("seg", "sr")).values()))
    assert first.result["dicom"] == again.result["dicom"]  # a resend after a crash replaces, never duplicates


def test_a_series_that_cannot_be_a_seg_is_still_done_with_the_reason_beside_its_other_outputs(checkpoint, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    for path in write_series(studies, 3, gap_mm=2.5):
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID  # a SEG must share its source's frame of reference
        ds.save_as(path)
    (done,) = run(checkpoint, studies, tmp_path / "out").values()
    assert done.state == "done" and set(done.result["outputs"]) == {"npz", "overlay"}
    notes = done.result["output_notes"]
    assert len(notes) == 2 and notes[0].startswith("seg not written:") and "FrameOfReferenceUID" in notes[0]
    assert notes[1] == "sr not written: the lesion SR references the SEG"
