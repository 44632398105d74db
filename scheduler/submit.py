"""Job planning: validate everything, then create the job and enqueue its members.

Nothing is enqueued unless the spec and the whole dataset are valid.
"""

from __future__ import annotations

from pathlib import Path

from medq.common.families.chest.csvio import make_split, validate_dataset
from medq.common.errors import describe
from medq.common.settings import Settings
from medq.common.specs import EnsembleSpec, HRNetSpec, SegmentSpec
from medq.common.store import open_store
from medq.common.store import jobs


def plan_ensemble(spec: EnsembleSpec, data_dir: Path) -> dict:
    """The plan every member and the evaluation share: data folder and the fixed split."""
    summary = validate_dataset(data_dir)
    split = make_split(summary.records, spec.split)
    return {"data_dir": str(data_dir.resolve()), "n_images": summary.n_images,
            "categories": summary.categories, "split": split}


def submit_ensemble(settings: Settings, spec: EnsembleSpec, data_dir: Path, seeds: list[int]) -> str:
    plan = plan_ensemble(spec, data_dir)
    plan["seeds"] = seeds
    store = open_store(settings)
    job_id, member_ids = jobs.create_job(store, EnsembleSpec.kind, spec.to_dict(), plan, seeds, spec.total_epochs)
    from medq.tasks.app import app_for
    from medq.tasks.send import send_member

    app = app_for(settings)
    try:
        for member_id in member_ids:
            send_member(app, member_id)
    except Exception as exc:
        jobs.fail_job(store, job_id, f"could not enqueue: {describe_enqueue_error(exc)}")
        raise
    return job_id


def plan_hrnet(spec: HRNetSpec, data_dir: Path, test_dirs: list[Path]) -> dict:
    """Read and check the training data and every test set, and fix the split (torch-free)."""
    from medq.common.families.ceph.readers import read_dataset, read_test_set, split_stems

    data = read_dataset(data_dir, spec.format, spec.annotator)
    tests = {str(Path(p).resolve()): read_test_set(Path(p), spec.format, spec.annotator) for p in test_dirs}
    return {"data_dir": str(Path(data_dir).resolve()), "n_images": len(data.records),
            "spacing_known": data.spacing_known and all(t.spacing_known for t in tests.values()),
            "split": split_stems([r.stem for r in data.records], spec.split),
            "test_dirs": list(tests), "test_images": {p: len(t.records) for p, t in tests.items()}}


def submit_hrnet(settings: Settings, spec: HRNetSpec, data_dir: Path, test_dirs: list[Path], seed: int = 0) -> str:
    """One member (one model, one seed) on the GPU queue; its evaluation scores the best
    ``spec.top_k`` epochs together on the test split and on every test set."""
    return _submit_single(settings, spec, plan_hrnet(spec, data_dir, test_dirs), seed)


def plan_segment(spec: SegmentSpec, data_dir: Path) -> dict:
    """Read and check every images/masks pair, and fix the split: by volume when volume ids are
    given, by slice otherwise (torch-free)."""
    from medq.common.families.ct_lesions.data import read_medseg, split_slices

    data = read_medseg(data_dir)
    split, split_by = split_slices(data, spec.split)
    return {"data_dir": str(data.root), "n_images": data.n_slices, "sources": [s.to_dict() for s in data.sources],
            "split": split, "split_by": split_by}


def submit_segment(settings: Settings, spec: SegmentSpec, data_dir: Path, seed: int = 0) -> str:
    """One member on the GPU queue; its evaluation scores the best checkpoint, and the same
    model untrained, on the test split."""
    return _submit_single(settings, spec, plan_segment(spec, data_dir), seed)


def _submit_single(settings: Settings, spec, plan: dict, seed: int) -> str:
    """A one-model job: its row, one member, one message on the GPU queue (the job fails with
    the reason if the broker refuses it)."""
    store = open_store(settings)
    job_id, (member_id,) = jobs.create_job(store, spec.kind, spec.to_dict(), plan, [seed], spec.epochs)
    from medq.tasks.app import app_for
    from medq.tasks.send import send_member

    try:
        send_member(app_for(settings), member_id)
    except Exception as exc:
        jobs.fail_job(store, job_id, f"could not enqueue: {describe_enqueue_error(exc)}")
        raise
    return job_id


def describe_enqueue_error(exc: BaseException) -> str:
    """Why the broker did not take a message: the server and reason (password masked), or the
    error's type alone (its text may carry paths)."""
    from medq.scheduler.cli_support import server_problem

    return server_problem(exc) or describe(exc)
