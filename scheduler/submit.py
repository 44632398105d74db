"""Job planning: validate everything, then create the job and enqueue its members.

Nothing is enqueued unless the spec and the whole dataset are valid.
"""

from __future__ import annotations

from pathlib import Path

from common.landmarks.csvio import make_split, validate_dataset
from common.settings import Settings
from common.specs import EnsembleSpec
from common.store import open_store
from common.store import jobs


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
    from tasks.app import app_for
    from tasks.send import send_member

    app = app_for(settings)
    try:
        for member_id in member_ids:
            send_member(app, member_id)
    except Exception as exc:
        jobs.fail_job(store, job_id, f"could not enqueue: {exc}")
        raise
    return job_id
