"""Finished training jobs in a store, made in-process the way workers make them (the real store
calls: create, claim, the history with the heartbeat's records, finish, evaluate, record), from a
family's own example: what report tests render without starting workers. The end-to-end tests
(tests/integration/test_report_e2e.py) run the same through real workers on Redis."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Sequence

from medq.common import __version__, subjects
from medq.common.families.base import MemberCheckpoint
from medq.common.families.registry import family
from medq.common.store import evaluation, jobs
from medq.common.store.db import Store
from medq.common.training.kit import TrainHooks
from medq.tasks.runtime import epoch_record


def example(kind: str, folder: Path):
    return family(kind).example(Path(folder))


def finished_job(store: Store, kind: str, folder: Path, *, spec: Any = None, data_dir: Path | None = None,
                 seeds: Sequence[int] = (0,), artifacts: Path | None = None, evaluate: bool = True,
                 **plan_options: Any) -> str:
    """A training job of ``kind`` trained on the family's example data (or ``data_dir``), with
    every epoch in the history and, when ``evaluate``, its results. Returns the job id."""
    fam = family(kind)
    ex = None
    if spec is None or data_dir is None:
        ex = fam.example(Path(folder) / "example")
        spec = spec if spec is not None else ex.spec
        data_dir = data_dir if data_dir is not None else ex.data_dir
        plan_options = {**ex.plan_options, **plan_options}
    plan = json.loads(json.dumps(fam.plan(spec, Path(data_dir), **plan_options)))
    plan["seeds"], plan["code_version"] = list(seeds), __version__
    job_id, member_ids = jobs.create_job(store, kind, spec.to_dict(), plan, list(seeds), fam.total_epochs(spec))
    members = []
    for seed, member_id in zip(seeds, member_ids):
        owner = uuid.uuid4().hex
        claim = jobs.claim_member(store, member_id, owner, "cpu0@test", "cpu", 600, 3)
        epochs: list[dict] = []
        hooks = TrainHooks(progress=lambda p: epochs.append(epoch_record(p, claim.attempt)) if p.epoch_done else None)
        workdir = Path(artifacts or Path(folder) / "artifacts") / job_id / subjects.member_folder(seed)
        trained = fam.train(fam.spec_from_dict(claim.spec), claim.plan, seed, workdir, hooks)
        artifact_paths = {subjects.artifact(seed, name): str(path) for name, path in trained.checkpoints.items()}
        jobs.finish_member(store, member_id, owner, jobs.State.SUCCEEDED, artifacts=artifact_paths, epochs=epochs,
                           **trained.fields)
        members.append(MemberCheckpoint(member_id, seed, trained.fields.get("val_loss"),
                                        Path(trained.checkpoints["best"])))
    if evaluate:
        owner = uuid.uuid4().hex
        claim = evaluation.claim_evaluation(store, job_id, owner, 600)
        results = fam.evaluate(fam.spec_from_dict(claim.spec), claim.plan, members)
        evaluation.record_results(store, job_id, owner, results, {subjects.member(m.seed): m.member_id for m in members})
    return job_id
