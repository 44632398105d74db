"""The family contract, run over every registered family (timm's test_models style): its example
plans torch-free, trains one tiny epoch, is stopped, resumes exactly where it stopped, evaluates,
and predicts a two-study archive through the one chunk loop of bulk inference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medq.common.families.base import MemberCheckpoint
from medq.common.families.registry import family, kinds
from medq.common.training.kit import TrainHooks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=kinds())
def trained(request, tmp_path_factory):
    """(family, example, plan, the member stopped after epoch 1 then resumed, one run straight through)."""
    kind = family(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    example = kind.example(folder)
    plan = json.loads(json.dumps(kind.plan(example.spec, example.data_dir, **example.plan_options)))  # as stored
    epochs_done = []

    def progress(p) -> None:
        if p.epoch_done:
            epochs_done.append(p.epoch)

    stop_after_one = TrainHooks(progress=progress, should_stop=lambda: bool(epochs_done))
    first = kind.train(example.spec, plan, 0, folder / "stopped", stop_after_one)
    resumed = kind.train(example.spec, plan, 0, folder / "stopped", TrainHooks())
    straight = kind.train(example.spec, plan, 0, folder / "straight", TrainHooks())
    return kind, example, plan, first, resumed, straight


def test_a_member_stops_when_asked_and_resumes_from_its_checkpoint(trained):
    kind, example, _, first, resumed, straight = trained
    assert first.cancelled and first.fields["epoch"] == 1
    assert not resumed.cancelled and resumed.resumed_from_epoch == 1
    assert resumed.fields["epoch"] == straight.fields["epoch"] == kind.total_epochs(example.spec)
    assert {"best", "last"} <= set(resumed.checkpoints) and all(Path(p).is_file() for p in resumed.checkpoints.values())


def test_the_resumed_member_ends_where_an_uninterrupted_one_does(trained):
    _, _, _, _, resumed, straight = trained
    a = torch.load(resumed.checkpoints["last"], weights_only=True)["model"]
    b = torch.load(straight.checkpoints["last"], weights_only=True)["model"]
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert different == []


def test_the_job_evaluates_to_plain_json_results(trained):
    kind, example, plan, _, resumed, _ = trained
    member = MemberCheckpoint(1, 0, resumed.fields.get("val_loss"), Path(resumed.checkpoints["best"]))
    results = kind.evaluate(example.spec, plan, [member])
    assert results and all(isinstance(metrics, dict) for metrics in results.values())
    json.dumps(results)  # the store keeps them as JSON
    assert kind.evaluate(example.spec, plan, []) == {}  # every member failed: nothing to score, no crash


def test_the_trained_model_predicts_a_two_study_archive_through_the_one_chunk_loop(trained):
    from medq.common.inference.archive import open_archive
    from medq.common.inference.chunk import run_chunk
    from medq.common.specs import InferSpec

    kind, example, _, _, resumed, _ = trained
    checkpoints = kind.model_checkpoints([Path(resumed.checkpoints["best"])])
    kind.inference.check(example.infer_options, checkpoints)  # what submit asks first
    spec = InferSpec(archive=str(example.archive), checkpoints=tuple(str(p) for p in checkpoints),
                     batch_size=2, **example.infer_options)
    archive = open_archive(example.archive)
    items = [(k, entry.path) for k, entry in enumerate(kind.inference.studies(archive))]
    assert len(items) == 2
    outcomes = []
    predictor = kind.inference.predictor(spec)
    try:
        stats = run_chunk(items, archive, predictor, 0, outcomes.extend)
    finally:
        predictor.close()
    assert (stats.done, stats.failed) == (2, 0)
    assert [o.study_id for o in outcomes] == [0, 1] and all(o.result for o in outcomes)
    rows = [o.to_row() for o in outcomes]
    json.dumps(rows)  # the store keeps each result as JSON
    assert len(kind.inference.csv_columns({})) > 4
