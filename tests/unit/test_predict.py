"""Bulk inference: the chest ensemble's predictor, one chunk of studies, quality control, overlays.

Tiny and on the CPU: members are ResNet-18s at image_size 64, either randomly initialised or
"constant" (the last layer's weights zeroed and its bias set, so every image gets the same,
hand-chosen landmarks, which makes aggregation, spread and the flip test hand-computable).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from medq import common
from medq.common.errors import SpecError
from medq.common.training.checkpoint import save_atomic
from medq.common.families.chest.infer_bench import bare_inference_throughput
from medq.common.families.chest.model import build_model
from medq.common.families.chest.predict import EnsemblePredictor
from medq.common.families.chest.qc import image_left_members, qc_flags
from medq.common.inference import images as images_module
from medq.common.inference.archive import open_archive
from medq.common.inference.chunk import run_chunk
from medq.common.inference.outcome import StudyOutcome
from medq.common.inference.overlay import FLAGGED_COLOUR, PASSED_COLOUR, write_overlay
from medq.common.inference.types import DecodedImage
from medq.common.families.chest.schema import FLIP_PAIRS, MIDLINE, N_LANDMARKS
from medq.common.families.chest.synth import real_shapes, synth_chest
from medq.common.families.chest.spec import EnsembleSpec

SPEC = EnsembleSpec(image_size=64)
S = SPEC.image_size
MEAN_SHAPE = real_shapes()[0].mean(axis=0)  # (15, 2) px of the 299-px originals


def save_member(path: Path, model: torch.nn.Module, spec: EnsembleSpec = SPEC, val_loss: float = 0.01,
                seed: int = 0) -> Path:
    """A best.pt as train_member writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"model": model.state_dict(), "spec": spec.to_dict(), "seed": seed, "epoch": 1,
                 "val_loss": val_loss, "val_error_px": 1.0, "code_version": common.__version__}, path)
    return path


def random_member(path: Path, seed: int, spec: EnsembleSpec = SPEC) -> Path:
    torch.manual_seed(seed)
    return save_member(path, build_model(spec), spec, seed=seed)


def constant_member(path: Path, points: np.ndarray, val_loss: float = 0.01) -> Path:
    """A member whose output is ``points`` (15, 2), normalised by the model size, for any image."""
    model = build_model(SPEC)
    last = model.head[-2]
    values = torch.tensor(np.asarray(points, dtype=np.float64).ravel())
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.logit(values).float())
    return save_member(path, model, val_loss=val_loss)


def at(x: float, y: float) -> np.ndarray:
    return np.tile([x, y], (N_LANDMARKS, 1))


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("members")
    return [random_member(folder / f"seed{k}" / "best.pt", seed=k) for k in range(2)]


@pytest.fixture(scope="module")
def predictor(members) -> EnsemblePredictor:
    return EnsemblePredictor.from_checkpoints(members)


def ensemble(members, batch: int, **options) -> EnsemblePredictor:
    """The members as a predictor taking ``batch`` studies at a time."""
    return EnsemblePredictor.from_checkpoints(members, studies_per_batch=batch, **options)


# --- the predictor -----------------------------------------------------------------------------


def test_landmarks_come_back_in_pixels_of_each_original_image(predictor):
    image = torch.rand(1, 1, S, S, generator=torch.Generator().manual_seed(0))
    batch = image.repeat(3, 1, 1, 1)
    landmarks, spread = predictor.locate(batch, np.array([[299, 299], [598, 598], [598, 299]]))
    assert landmarks.shape == (3, N_LANDMARKS, 2) and spread.shape == (3, N_LANDMARKS)
    np.testing.assert_allclose(landmarks[1], 2 * landmarks[0], rtol=1e-6)
    np.testing.assert_allclose(spread[1], 2 * spread[0], rtol=1e-6)
    np.testing.assert_allclose(landmarks[2], landmarks[0] * [2, 1], rtol=1e-6)  # only x doubles
    assert np.all(spread[0] > 0)  # two different random members disagree


def test_identical_members_have_zero_spread_and_the_single_members_landmarks(members):
    single = EnsemblePredictor.from_checkpoints(members[:1])
    twice = EnsemblePredictor.from_checkpoints([members[0], members[0]])
    batch, sizes = torch.rand(2, 1, S, S), np.array([[299, 299], [400, 300]])
    one_landmarks, one_spread = single.locate(batch, sizes)
    two_landmarks, two_spread = twice.locate(batch, sizes)
    np.testing.assert_array_equal(one_spread, 0.0)
    np.testing.assert_array_equal(two_spread, 0.0)
    np.testing.assert_allclose(two_landmarks, one_landmarks, rtol=1e-9)


@pytest.fixture(scope="module")
def three_constant(tmp_path_factory) -> list[Path]:
    """x = 0.2, 0.3, 0.7 of the width (y = 0.5) with validation losses 1, 1, 2."""
    folder = tmp_path_factory.mktemp("constant")
    return [constant_member(folder / f"{k}.pt", at(x, 0.5), val_loss=loss)
            for k, (x, loss) in enumerate([(0.2, 1.0), (0.3, 1.0), (0.7, 2.0)])]


@pytest.mark.parametrize("how, expected_x", [("mean", 40.0), ("median", 30.0), ("weighted", 34.0)])
def test_aggregations_on_hand_computed_members(three_constant, how, expected_x):
    """Members at x = 20, 30, 70 px of a 100-px image: mean 40, median 30, and weights
    1/loss = 1, 1, 0.5 -> 0.4, 0.4, 0.2 give 8 + 12 + 14 = 34. Spread: deviations -20, -10, 30
    -> sqrt((400 + 100 + 900) / 3) = 21.602 px."""
    ensemble = EnsemblePredictor.from_checkpoints(three_constant, aggregation=how, device="cpu")
    landmarks, spread = ensemble.locate(torch.rand(1, 1, S, S), np.array([[100, 80]]))
    np.testing.assert_allclose(landmarks[0], at(expected_x, 40.0), atol=1e-4)
    np.testing.assert_allclose(spread[0], np.sqrt(1400 / 3), atol=1e-4)


def test_flip_test_unflips_x_and_swaps_the_pairs_back(tmp_path):
    """Member output: landmark k at x = 0.1 + 0.05 k, y = 0.1 + 0.04 k (of 64 px). With the flip
    test, landmark 2 (plain: 12.8, 11.52 px) = mean of itself and mirrored landmark 3 (16.0,
    14.08 px): x (12.8 + 63 - 16.0) / 2 = 29.9, y (11.52 + 14.08) / 2 = 12.8; landmark 3 gets
    x (16.0 + 63 - 12.8) / 2 = 33.1; a midline landmark's x lands on the mirror axis, 63 / 2."""
    k = np.arange(N_LANDMARKS)
    points = np.column_stack([0.1 + 0.05 * k, 0.1 + 0.04 * k])
    path = constant_member(tmp_path / "m.pt", points)
    on_cpu = {"device": "cpu"}  # hand-computed float32 values; tests/gpu compares CUDA with these
    plain = EnsemblePredictor.from_checkpoints([path], **on_cpu).locate(torch.rand(1, 1, S, S),
                                                                        np.array([[S, S]]))[0][0]
    flipped = EnsemblePredictor.from_checkpoints([path], tta="flip", **on_cpu).locate(torch.rand(1, 1, S, S),
                                                                                       np.array([[S, S]]))[0][0]
    np.testing.assert_allclose(plain[2], [12.8, 11.52], atol=1e-4)
    np.testing.assert_allclose(flipped[2], [29.9, 12.8], atol=1e-4)
    np.testing.assert_allclose(flipped[3], [33.1, 12.8], atol=1e-4)
    np.testing.assert_allclose(flipped[list(MIDLINE), 0], 31.5, atol=1e-4)


def test_flip_test_gives_a_mirror_symmetric_shape_for_a_mirror_symmetric_image(members):
    half = torch.rand(1, 1, S, S, generator=torch.Generator().manual_seed(4))
    symmetric = (half + torch.flip(half, dims=(3,))) / 2
    width = 299
    axis = (S - 1) / S * width  # x -> S - 1 - x at model scale, in original pixels
    plain, _ = EnsemblePredictor.from_checkpoints(members).locate(symmetric, np.array([[width, width]]))
    tta, _ = EnsemblePredictor.from_checkpoints(members, tta="flip").locate(symmetric, np.array([[width, width]]))
    left, right = np.array(FLIP_PAIRS).T
    np.testing.assert_allclose(tta[0, left, 0] + tta[0, right, 0], axis, atol=1e-3)
    np.testing.assert_allclose(tta[0, left, 1], tta[0, right, 1], atol=1e-3)
    np.testing.assert_allclose(tta[0, list(MIDLINE), 0], axis / 2, atol=1e-3)
    assert np.abs(plain[0, left, 0] + plain[0, right, 0] - axis).max() > 0.1  # random members alone are not


@pytest.mark.parametrize("option, name, listed", [("aggregation", "mode", "mean, median, weighted"),
                                                  ("tta", "rotate", "flip, none")])
def test_unknown_option_names_list_the_valid_ones(members, option, name, listed):
    with pytest.raises(SpecError, match=listed):
        EnsemblePredictor.from_checkpoints(members, **{option: name})


def test_members_trained_at_different_sizes_are_refused(members, tmp_path):
    other = random_member(tmp_path / "big.pt", seed=5, spec=EnsembleSpec(image_size=96))
    with pytest.raises(SpecError, match="member 0: 64 px, member 1: 96 px"):
        EnsemblePredictor.from_checkpoints([members[0], other])


# --- one chunk of studies ----------------------------------------------------------------------


class WorkerOnlyReads:
    """An archive whose ``read`` refuses to run in the test's own process: it proves that the
    DataLoader worker processes read (and so decode) the studies."""

    def __init__(self, archive, main_pid: int):
        self.archive, self.main_pid = archive, main_pid

    def read(self, path: str) -> bytes:
        if os.getpid() == self.main_pid:
            raise RuntimeError("read in the main process")
        return self.archive.read(path)


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory) -> tuple[Path, list[tuple[int, str]]]:
    """6 synthetic radiographs (one enlarged 2x to 598 px), a zero-byte file and a text file,
    in folders named after (fictitious) patients."""
    root = tmp_path_factory.mktemp("archive")
    synth = tmp_path_factory.mktemp("synth")
    synth_chest(synth, 5, seed=1)
    names = []
    for k, png in enumerate(sorted((synth / "images").glob("*.png"))):
        name = f"Patient Doe {k}/image.png"
        (root / name).parent.mkdir(parents=True)
        (root / name).write_bytes(png.read_bytes())
        names.append(name)
    with Image.open(root / names[0]) as first:
        (root / "Patient Big").mkdir()
        first.resize((598, 598), Image.Resampling.NEAREST).save(root / "Patient Big/image.png")
    names.append("Patient Big/image.png")
    (root / "Patient Empty.png").write_bytes(b"")
    (root / "Patient Notes.png").write_text("not an image at all\n")
    names += ["Patient Empty.png", "Patient Notes.png"]
    return root, [(100 + k, name) for k, name in enumerate(names)]


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_chunk_predicts_good_studies_and_lists_bad_ones_with_reasons(members, study_folder, tmp_path, kind):
    root, items = study_folder
    if kind == "zip":
        with zipfile.ZipFile(tmp_path / "export.zip", "w") as zf:
            for _, name in items:
                zf.write(root / name, name)
    archive = open_archive(root if kind == "folder" else tmp_path / "export.zip")
    calls: list[list[StudyOutcome]] = []
    stats = run_chunk(items, WorkerOnlyReads(archive, os.getpid()), ensemble(members, 3, out_dir=tmp_path),
                      loader_workers=2, on_results=calls.append)

    assert [len(call) for call in calls] == [3, 3, 2]
    outcomes = [o for call in calls for o in call]
    assert [o.study_id for o in outcomes] == [study_id for study_id, _ in items]
    assert (stats.done, stats.failed, stats.skipped, stats.stopped) == (6, 2, 0, False)
    assert stats.studies_per_s > 0
    done = [o for o in outcomes if o.state == "done"]
    for o in done:
        assert sorted(o.result) == ["landmarks_mm", "landmarks_px", "outputs", "qc_reasons", "spacing_source", "spread_px"]
        # run without the task's study keys: named by the row id (a PNG source: no DICOM SR)
        assert o.result["outputs"] == {"overlay": f"overlays/{o.study_id}.png"}
        assert np.asarray(o.result["landmarks_px"]).shape == (N_LANDMARKS, 2)
        assert np.asarray(o.result["spread_px"]).shape == (N_LANDMARKS,)
        assert o.result["landmarks_mm"] is None  # PNG has no pixel spacing
        assert o.source_format == "png"
        with Image.open(tmp_path / o.result["outputs"]["overlay"]) as overlay:
            assert overlay.mode == "RGB" and overlay.size == o.image_size
    assert done[5].image_size == (598, 598) and done[0].image_size == (299, 299)
    # the 2x-enlarged copy of the first study: landmarks twice as far from the origin
    np.testing.assert_allclose(done[5].result["landmarks_px"], 2 * np.asarray(done[0].result["landmarks_px"]),
                               atol=1.0)
    empty, text = outcomes[6:]
    assert (empty.state, text.state) == ("failed", "failed")
    assert "empty" in empty.reason and "unrecognised" in text.reason
    assert all("Patient" not in o.reason and o.result is None for o in (empty, text))
    json.dumps([o.to_row() for o in outcomes])  # every record is JSON


def test_chunk_gives_millimetres_and_uids_of_a_dicom_study(members, tmp_path):
    """CT_small.dcm (pydicom's fixture), saved without an extension: 0.661468 mm/px both ways."""
    (tmp_path / "Patient Scan").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    outcomes: list[StudyOutcome] = []
    run_chunk([(7, "Patient Scan")], open_archive(tmp_path), ensemble(members, 4), 0, outcomes.extend)
    (o,) = outcomes
    assert (o.state, o.source_format, o.image_size) == ("done", "dicom", (128, 128))
    assert o.uids["StudyInstanceUID"] == "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    np.testing.assert_allclose(o.result["landmarks_mm"], np.asarray(o.result["landmarks_px"]) * 0.661468, rtol=1e-6)


def test_chunk_multiplies_x_by_the_column_and_y_by_the_row_spacing(members, study_folder, monkeypatch):
    """Spacing (row, column) = (0.5, 0.25) mm/px: x mm = x px * 0.25, y mm = y px * 0.5."""
    root, items = study_folder
    real_decode = images_module.decode_image

    def with_spacing(data: bytes) -> DecodedImage:
        return DecodedImage(real_decode(data).pixels, "dicom", (0.5, 0.25), {"StudyInstanceUID": "1.2.3"}, "CR")

    monkeypatch.setattr(images_module, "decode_image", with_spacing)
    outcomes: list[StudyOutcome] = []
    run_chunk(items[:2], open_archive(root), ensemble(members, 2), 0, outcomes.extend)
    assert len(outcomes) == 2
    for o in outcomes:
        np.testing.assert_allclose(o.result["landmarks_mm"], np.asarray(o.result["landmarks_px"]) * [0.25, 0.5],
                                   rtol=1e-12)
        assert o.uids == {"StudyInstanceUID": "1.2.3"} and o.source_format == "dicom"


def test_a_stop_request_ends_the_chunk_between_batches(members, study_folder):
    root, items = study_folder
    calls: list[list[StudyOutcome]] = []
    stats = run_chunk(items, open_archive(root), ensemble(members, 3), loader_workers=0,
                      on_results=calls.append, should_stop=lambda: len(calls) >= 1)
    assert len(calls) == 1 and stats.stopped and stats.done + stats.failed == 3


def test_bare_inference_loop_measures_images_per_second(members, study_folder):
    root, items = study_folder
    pngs = [root / name for _, name in items[:6]]
    assert bare_inference_throughput(members, pngs, batch_size=4) > 0


# --- quality control ---------------------------------------------------------------------------

def test_no_real_annotated_shape_is_flagged():
    shapes, _ = real_shapes()
    assert qc_flags(MEAN_SHAPE, np.zeros(N_LANDMARKS), (299, 299)) == []
    flagged = [k for k, shape in enumerate(shapes) if qc_flags(shape, np.zeros(N_LANDMARKS), (299, 299))]
    assert flagged == []


def test_the_image_left_member_of_each_pair_comes_from_the_real_annotations():
    assert image_left_members() == FLIP_PAIRS  # the lower index has the smaller x in every image


def test_spread_above_the_limit_is_flagged_per_landmark():
    spread = np.zeros(N_LANDMARKS)
    spread[4] = 9.0  # the default limit at 299 px is 0.03 * 299 = 8.97 px
    assert qc_flags(MEAN_SHAPE, spread, (299, 299)) == ["ensemble spread above 9.0 px at landmark 5"]
    spread[4] = 8.9
    assert qc_flags(MEAN_SHAPE, spread, (299, 299)) == []
    spread[[4, 7]] = 5.5
    assert qc_flags(MEAN_SHAPE, spread, (299, 299), spread_limit_px=5.0) == [
        "ensemble spread above 5.0 px at landmark 5", "ensemble spread above 5.0 px at landmark 8"]


def test_landmark_outside_the_image_is_flagged():
    shape = MEAN_SHAPE.copy()
    shape[7, 0] = 305.0
    assert qc_flags(shape, np.zeros(N_LANDMARKS), (299, 299)) == ["landmark outside the image: landmark 8"]


def test_swapped_left_right_pair_is_flagged():
    shape = MEAN_SHAPE.copy()
    shape[[4, 5]] = shape[[5, 4]]
    assert qc_flags(shape, np.zeros(N_LANDMARKS), (299, 299)) == ["left/right landmarks swapped: pair 5/6"]


def test_implausible_geometry_is_flagged():
    squashed = MEAN_SHAPE.copy()
    squashed[[13, 14], 1] = squashed[[11, 12], 1] + 45.0  # lungs 15 % of the image high
    reasons = qc_flags(squashed, np.zeros(N_LANDMARKS), (299, 299))
    assert len(reasons) == 1 and reasons[0].startswith("implausible geometry: lung height 45.0 px")
    upside_down = MEAN_SHAPE.copy()
    upside_down[[0, 1], 1] = upside_down[[1, 0], 1]
    assert qc_flags(upside_down, np.zeros(N_LANDMARKS), (299, 299)) == [
        "implausible geometry: the mediastinal axis 1-9-10-11-2 does not run top to bottom"]


# --- overlays ----------------------------------------------------------------------------------


@pytest.mark.parametrize("flagged, colour", [(True, FLAGGED_COLOUR), (False, PASSED_COLOUR)])
def test_overlay_marks_each_landmark_red_when_flagged_else_green(tmp_path, flagged, colour):
    pixels = np.full((299, 299), 90, np.uint8)
    path = write_overlay(pixels, MEAN_SHAPE, flagged, tmp_path / "sub" / "o.png")
    with Image.open(path) as image:
        assert image.mode == "RGB" and image.size == (299, 299)
        rgb = np.asarray(image)
    for x, y in np.rint(MEAN_SHAPE).astype(int):
        assert tuple(rgb[y, x]) == colour
    assert tuple(rgb[5, 5]) == (90, 90, 90)  # away from the drawing the radiograph shows through


def test_loader_processes_decode_beside_a_gpu_and_inline_on_a_cpu():
    from medq.common.inference.chunk import loader_processes

    assert loader_processes(None, torch.device("cuda", 0)) == 2
    assert loader_processes(None, torch.device("cpu")) == 0
    assert loader_processes(3, torch.device("cpu")) == 3  # an explicit choice wins
