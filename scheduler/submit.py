"""Job planning of training jobs: validate everything, then create the job and its members.
One way for every model family: its ``plan`` checks the spec's data and fixes the split
(torch-free); a job row and one member row per seed follow. The members wait in the store for
the admission dispatcher (common/store/admission.py) to give each a worker.

Nothing is created unless the spec and the whole dataset are valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from medq.common import __version__
from medq.common.errors import describe
from medq.common.families.registry import family
from medq.common.settings import Settings
from medq.common.sharing.projects import Placement, default_project
from medq.common.store import jobs, open_store


def submit_training(settings: Settings, kind: str, spec: Any, data_dir: Path, seeds: Sequence[int] = (0,),
                    placement: Placement | None = None, **plan_options: Any) -> str:
    """A training job of ``kind``: its plan and its rows, the members waiting for admission.
    Returns the job id.
    ``placement``: its project and priority (default: the settings' project, normal)."""
    placement = placement or Placement(default_project(settings.project))
    trained = family(kind)
    plan = trained.plan(spec, Path(data_dir), **plan_options)
    plan["seeds"] = list(seeds)
    plan["code_version"] = __version__
    store = open_store(settings)
    job_id, member_ids = jobs.create_job(store, kind, spec.to_dict(), plan, list(seeds), trained.total_epochs(spec),
                                         project=placement.project, priority=placement.priority)
    return job_id  # the launchers' admission rounds start it (within MEDQ_ADMIT_INTERVAL of a worker free)


def describe_enqueue_error(exc: BaseException) -> str:
    """Why the broker did not take a message: the server and reason (password masked), or the
    error's type alone (its text may carry paths)."""
    from medq.scheduler.cli_support import server_problem

    return server_problem(exc) or describe(exc)
