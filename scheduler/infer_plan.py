"""Planning a bulk inference job: check the model and archive, stream the archive into study
rows and chunks, and queue the chunks whose window is open. Nothing is enqueued for a missing
archive or an unknown model."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from medq.common.errors import SpecError
from medq.common.families import registry
from medq.common.families.base import Family
from medq.common.inference.sources import open_source
from medq.common.inference.study_paths import StudyPaths
from medq.common.inference.types import Entry
from medq.common.settings import Settings
from medq.common.sharing.projects import default_project
from medq.common.specs import InferSpec
from medq.common.store import open_store
from medq.common.store import inference as store_ops
from medq.common.store.jobs import fail_job, new_job_id
from medq.common.store.views import job_results
from medq.scheduler.submit import describe_enqueue_error


def resolve_model(store, model: str) -> tuple[list[str], str | None, Family]:
    """(checkpoints, training job id or None, the model's family). A checkpoint file (its family
    read from it); a training job id: the checkpoints its family takes from the best checkpoints
    of its members that succeeded (an ensemble's members, an HRNet job's best k epochs)."""
    path = Path(model)
    if path.is_file():
        return [str(path.resolve())], None, registry.family_of_checkpoint(path)
    view = job_results(store, model)
    if view is None:
        raise SpecError(f"unknown model {model!r}: neither a checkpoint file nor a training job id")
    if not registry.is_training_kind(view["kind"]):
        raise SpecError(f"job {model} is a {view['kind']} job, not a trained model ({', '.join(registry.kinds())})")
    family = registry.family(view["kind"])
    best = [Path(m["checkpoint"]) for m in view["members"] if m["state"] == "succeeded" and m["checkpoint"]]
    if not best:
        raise SpecError(f"{view['kind']} job {model} has no member that succeeded")
    checkpoints = [str(p) for p in family.model_checkpoints(best)]
    missing = [c for c in checkpoints if not Path(c).is_file()]
    if missing:
        raise SpecError(f"{view['kind']} job {model}: checkpoint file(s) missing on this host: {', '.join(missing)}")
    return checkpoints, view["job_id"], family


def submit_infer(settings: Settings, archive_path: Path | str, model: str, project: str | None = None,
                 **options) -> tuple[str, int, int]:
    """Returns (job id, studies, chunks). The model's family checks the options before any job
    exists (SpecError naming an option it cannot honour) and says what a study is.
    ``archive_path``: a folder, zip or tar, or a PACS's DICOMweb URL (with ``query``)."""
    paths = StudyPaths.from_settings(settings)  # SpecError: a keyed mode without its key
    store = open_store(settings)
    checkpoints, model_job, family = resolve_model(store, model)
    family.inference.check(options, [Path(c) for c in checkpoints])
    if options.get("send_to"):
        options["send_to"] = probe_target(options["send_to"], settings)
    # DataError: a missing path, an unknown kind, a PACS that does not answer the query
    archive = open_source(str(archive_path), settings, options.get("query"))
    location = getattr(archive, "url", None) or str(Path(archive_path).resolve())
    if options.get("out_dir"):
        check_out_dir(Path(options["out_dir"]), archive)
    if options.get("chunk") is None:
        options["chunk"] = family.inference.default_chunk
    spec = InferSpec(archive=location, checkpoints=tuple(checkpoints), model_job=model_job, **options)
    job_id = new_job_id()
    plan = {"archive_kind": archive.kind, "family": family.kind, **paths.plan()}
    store_ops.create_infer_job(store, job_id, spec.to_dict(), plan,
                               "high" if spec.preempt else spec.priority,  # --preempt: its chunks go to infer.high
                               spec.window, project=project or default_project(settings.project))
    done_elsewhere = (store_ops.done_by_earlier_jobs(store, spec.archive, list(spec.checkpoints), job_id)
                      if spec.skip_done else None)
    studies = (store_ops.PlannedStudy(e.path) if isinstance(e, Entry)
               else store_ops.PlannedStudy(e.path, e.state, e.reason) for e in family.inference.studies(archive))
    try:
        n_studies, n_chunks = store_ops.add_studies(store, job_id, studies, spec.chunk, done_elsewhere, paths)
        from medq.tasks.app import app_for
        from medq.tasks.send import send_chunk

        app = app_for(settings)
        store_ops.dispatch_chunks(store, settings.local_time(), lambda cid, prio: send_chunk(app, cid, prio),
                                  job_id=job_id)
    except Exception as exc:
        fail_job(store, job_id, f"could not plan or enqueue: {describe_enqueue_error(exc)}")
        raise
    return job_id, n_studies, n_chunks


def probe_target(url: str, settings: Settings) -> str:
    """The --send-to URL, checked and asked once (a QIDO-RS search for one study) before any
    work is done: a wrong host or login is said now, not after the night's inference."""
    from medq.common.inference.dicomweb import PacsAccess, PacsClient, PacsError, check_url

    url = check_url(url, "--send-to")
    try:
        PacsClient(url, PacsAccess.from_settings(settings)).call(
            "asking it", lambda c: c.search_for_studies(limit=1))
    except PacsError as exc:
        raise SpecError(f"--send-to {url}: {exc}") from None
    return url


def check_out_dir(out: Path, archive) -> None:
    """--out must be a folder this host can write, and not inside the archive (the next job on
    that folder would plan the overlays and masks as studies)."""
    out = Path(os.path.realpath(out))
    if archive.kind == "folder" and (out == archive.root or archive.root in out.parents):
        raise SpecError(f"--out {out} is inside the archive {archive.root}: its outputs would be read as studies "
                        f"by the next job on it; choose a folder outside")
    if archive.kind != "folder" and out == archive.root:
        raise SpecError(f"--out {out} is the archive file itself")
    probe = out / f".medq-write-test-{uuid.uuid4().hex[:8]}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SpecError(f"--out {out} cannot be written: {exc.strerror or type(exc).__name__}") from None
