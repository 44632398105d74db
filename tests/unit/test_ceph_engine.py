"""The HRNet engine on a tiny model and tiny synthetic data: it trains, checkpoints, resumes,
keeps the best k epochs and evaluates them together in millimetres."""

import dataclasses
import math

import pytest
import torch

from medq.common.families.ceph.readers import read_isbi
from medq.common.families.ceph.synth import synth_ceph
from medq.common.families.ceph.readers import split_stems
from medq.common.families.ceph.train import evaluate_hrnet, train_hrnet, warmup_cosine
from medq.common.training.checkpoint import load_checkpoint
from medq.common.training.kit import TrainHooks
from medq.common.families.ceph.spec import HRNetSpec
from tests.unit.old_layouts import to_old_hrnet

TINY = HRNetSpec(width="w18s", image_size=96, epochs=3, batch_size=4, warmup_epochs=1, top_k=2, amp=False,
                 progressive=(64, 1))


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("ceph")
    synth_ceph(root, n=10, seed=2, n_test=0, width=160, height=200)
    data = read_isbi(root)
    split = split_stems([r.stem for r in data.records], TINY.split)
    by_stem = {r.stem: r for r in data.records}
    return {part: [by_stem[s] for s in stems] for part, stems in split.items()}


def test_the_split_is_seeded_and_covers_every_image_once():
    stems = [f"{k:03d}" for k in range(20)]
    split = split_stems(stems, TINY.split)
    assert sorted(sum(split.values(), [])) == stems and (len(split["val"]), len(split["test"])) == (3, 3)
    assert split == split_stems(list(reversed(stems)), TINY.split)


def test_warm_up_then_cosine():
    f = warmup_cosine(warmup_steps=4, total_steps=12)
    assert [f(0), f(3)] == [0.25, 1.0]
    assert f(8) == pytest.approx(0.5) and f(12) == pytest.approx(0.0)


def test_training_checkpoints_resumes_and_evaluates_the_best_k_together(records, tmp_path):
    torch.set_num_threads(2)
    reports = []
    first = train_hrnet(TINY, records, tmp_path, seed=0, hooks=TrainHooks(progress=reports.append))
    assert first.epochs_run == 3 and len(first.best_checkpoints) == 2 and first.resumed_from_epoch is None
    assert [r.phase for r in reports if r.epoch_done] == ["64px", "96px", "96px"]
    done = [r for r in reports if r.epoch_done]
    assert all(math.isfinite(r.val_loss) and r.val_score > 0 and r.val_error_px > 0 for r in done)
    best = min(done, key=lambda r: r.val_score)  # the best epoch by MRE, its heatmap loss kept beside it
    assert (first.best_epoch, first.best_val_mre) == (best.epoch, best.val_score)
    assert (first.best_val_loss, first.best_val_error_px) == (best.val_loss, best.val_error_px)
    assert load_checkpoint(first.best_checkpoints[0])["val_loss"] == best.val_loss
    assert all(p.is_file() for p in first.best_checkpoints)
    assert len(list(tmp_path.glob("best-*.pt"))) == 2  # the third-best epoch's file was removed

    # A redelivered run of a finished member resumes at its end and trains nothing more.
    again = train_hrnet(TINY, records, tmp_path, seed=0)
    assert again.resumed_from_epoch == 3 and again.epochs_run == 3 and again.train_images_per_s == 0.0
    assert load_checkpoint(first.last_checkpoint)["epoch"] == 3

    metrics = evaluate_hrnet(first.best_checkpoints, records["test"])
    assert metrics["unit"] == "mm" and metrics["checkpoints"] == 2 and metrics["n_images"] == len(records["test"])
    assert metrics["mre_mm"] > 0 and 0 <= metrics["sdr_2mm"] <= metrics["sdr_4mm"] <= 1
    assert (tmp_path / "init.pt").is_file()  # the untrained baseline the evaluation reports
    assert [row["landmark"] for row in metrics["per_landmark"]][:2] == ["Sella", "Nasion"]


def test_a_last_pt_of_the_layout_before_the_kit_resumes_where_it_stopped(records, tmp_path):
    """A member stopped after epoch 1 by the code before the training kit (its last.pt: the epoch
    only in state["epoch"]) continues at epoch 2 with its optimiser, schedule and best list."""
    spec = dataclasses.replace(TINY, epochs=2, progressive=None, image_size=64)
    reports = []
    cut = train_hrnet(spec, records, tmp_path, hooks=TrainHooks(
        progress=reports.append, should_stop=lambda: any(r.epoch_done for r in reports)))
    assert cut.cancelled and cut.epochs_run == 1
    old = to_old_hrnet(tmp_path / "last.pt")
    rest = train_hrnet(spec, records, tmp_path)
    assert (rest.resumed_from_epoch, rest.epochs_run, rest.cancelled) == (1, 2, False)
    assert [e for _, e in old["state"]["best"]] == [1]
    assert sorted(p.name for p in rest.best_checkpoints) == ["best-0001.pt", "best-0002.pt"]  # top 2 of 2
    last = load_checkpoint(rest.last_checkpoint)
    steps = 2 * math.ceil(len(records["train"]) / spec.batch_size)  # the schedule went on, not over
    assert last["scheduler"]["last_epoch"] == steps
    assert all(int(s["step"]) == steps for s in last["optimizer"]["state"].values())


def test_a_resume_with_another_spec_is_refused(records, tmp_path):
    train_hrnet(dataclasses.replace(TINY, epochs=1, progressive=None), records, tmp_path, seed=0)
    from medq.common.errors import JobError

    with pytest.raises(JobError, match=r"different spec \(differs in: epochs\)"):
        train_hrnet(dataclasses.replace(TINY, epochs=2, progressive=None), records, tmp_path, seed=0)


def test_the_spec_lists_the_engines_names_and_refuses_bad_values():
    from medq.common.families.ceph.codec import REFINEMENTS
    from medq.common.families.ceph.model import HRNET_WIDTHS
    from medq.common.errors import SpecError
    from medq.common.families.ceph.spec import HEATMAP_REFINEMENTS
    from medq.common.families.ceph.spec import HRNET_WIDTHS as SPEC_WIDTHS

    assert sorted(HRNET_WIDTHS) == sorted(SPEC_WIDTHS) and REFINEMENTS.names() == sorted(HEATMAP_REFINEMENTS)
    with pytest.raises(SpecError, match="unknown width 'w64'; valid: w18, w18s, w32, w48"):
        HRNetSpec(width="w64")
    with pytest.raises(SpecError, match="0 < EPOCHS < epochs"):
        HRNetSpec(epochs=10, progressive=(384, 10))
    with pytest.raises(SpecError, match="multiples of 32"):
        HRNetSpec(image_size=500)
    assert HRNetSpec(epochs=10, progressive=(384, 4)).size_at(4) == 384
    assert HRNetSpec(epochs=10, progressive=(384, 4)).size_at(5) == 512
    spec = HRNetSpec(progressive=(384, 100), channels_last=True)
    assert HRNetSpec.from_dict(spec.to_dict()) == spec  # JSON round trip (lists back to tuples)


def test_every_training_kind_has_a_family_and_an_unknown_kind_lists_them():
    from medq.common.errors import SpecError
    from medq.common.families.registry import family, kinds

    assert kinds() == ["ensemble", "hrnet", "segment"]
    assert family("hrnet").spec_from_dict(TINY.to_dict()) == TINY
    with pytest.raises(SpecError, match="valid: ensemble, hrnet, segment"):
        family("classifier")


def test_the_throughput_benchmarks_measure_positive_rates(records):
    from medq.common.families.ceph.bench import bare_hrnet_throughput, member_hrnet_throughput

    spec = dataclasses.replace(TINY, progressive=None, image_size=64)
    assert 0 < bare_hrnet_throughput(spec, records["train"], steps=2, warmup=1) < math.inf
    assert 0 < member_hrnet_throughput(spec, records["train"], steps=2, warmup=1) < math.inf


def test_a_trained_hrnet_serves_bulk_inference_through_run_chunk(records, tmp_path):
    """The job's best checkpoints, heatmaps averaged, over archive files: 19 landmarks per study
    in pixels of each original, a spread from the checkpoints' disagreement, and a broken file
    failing alone. The predictor is the one the family's registry entry builds from a job's spec."""
    from medq.common.families.registry import family
    from medq.common.inference.archive import open_archive
    from medq.common.inference.chunk import run_chunk
    from medq.common.specs import InferSpec

    outcome = train_hrnet(dataclasses.replace(TINY, epochs=2, progressive=None), records, tmp_path / "work")
    spec = InferSpec(archive=str(tmp_path), checkpoints=tuple(str(p) for p in outcome.best_checkpoints), batch_size=2)
    predictor = family("hrnet").inference.predictor(spec)
    assert type(predictor).__name__ == "HeatmapPredictor" and predictor.image_size == 96
    archive = tmp_path / "archive"
    archive.mkdir()
    for record in records["test"]:
        (archive / record.image.name).write_bytes(record.image.read_bytes())
    (archive / "broken.bmp").write_bytes(b"BM\x00\x01")
    items = list(enumerate(sorted(p.name for p in archive.iterdir())))
    outcomes = []
    stats = run_chunk(items, open_archive(archive), predictor, loader_workers=0, on_results=outcomes.extend)
    assert (stats.done, stats.failed) == (len(records["test"]), 1), [(o.study_id, o.reason) for o in outcomes]
    done = [o for o in outcomes if o.state == "done"]
    assert all(len(o.result["landmarks_px"]) == 19 and len(o.result["spread_px"]) == 19 for o in done)
    assert all(o.image_size == (160, 200) for o in done)
    assert all(min(o.result["spread_px"]) >= 0 for o in done)


def test_the_heatmap_predictor_refuses_what_a_cephalometric_model_cannot_do(records, tmp_path):
    from medq.common.families.ceph.predict import HeatmapPredictor
    from medq.common.errors import SpecError

    outcome = train_hrnet(dataclasses.replace(TINY, epochs=1, progressive=None, top_k=1), records, tmp_path)
    with pytest.raises(SpecError, match="trained without left/right landmark pairs"):
        HeatmapPredictor(outcome.best_checkpoints, tta="flip")
    with pytest.raises(SpecError, match="aggregation 'mean' only"):
        HeatmapPredictor(outcome.best_checkpoints, aggregation="median")


class ConstantHeatmaps(torch.nn.Module):
    """Whatever the image, heatmaps with landmark 0 at input x = 20 and landmark 1 at x = 75."""

    def __init__(self, codec):
        super().__init__()
        import numpy as np

        maps, _ = codec.encode(np.array([[20.0, 40.0], [75.0, 40.0]]))
        self.register_buffer("maps", torch.from_numpy(maps)[None])

    def forward(self, images):
        return self.maps.expand(len(images), -1, -1, -1)


def test_the_flip_test_mirrors_back_and_swaps_the_pairs():
    """Mirrored, landmark 1's map sits at x = 95 - 75 = 20 and becomes landmark 0's: the mean of
    two maps at 20 stays at 20. Landmark 0's mirror (x = 75) becomes landmark 1's: stays at 75."""
    from medq.common.families.ceph.codec import HeatmapCodec
    from medq.common.families.ceph.train import heatmaps_of

    codec = HeatmapCodec(96)
    model = ConstantHeatmaps(codec)
    images = torch.zeros(1, 1, 96, 96)
    plain = codec.decode(heatmaps_of(model, images).numpy())[0][0]
    flipped = codec.decode(heatmaps_of(model, images, flip_pairs=((0, 1),)).numpy())[0][0]
    assert abs(plain[0, 0] - 20) < 0.1 and abs(plain[1, 0] - 75) < 0.1
    assert abs(flipped[0, 0] - 20) < 0.1 and abs(flipped[1, 0] - 75) < 0.1
    # a mirror off by one heatmap column would put the mean between two peaks, 2 input px away


def test_flip_pairs_are_checked_and_survive_the_json_round_trip():
    from medq.common.errors import SpecError

    spec = HRNetSpec(flip_pairs=((2, 3), (4, 5)))
    assert HRNetSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError, match="flip pairs must be distinct landmark numbers from 1 to 19"):
        HRNetSpec(flip_pairs=((2, 2),))
    with pytest.raises(SpecError, match="flip pairs"):
        HRNetSpec(flip_pairs=((0, 19),))
