"""Which engine trains a member and evaluates a job, by the job's kind.

The member and evaluation tasks stay thin: they claim, call the engine registered for the job's
kind, and record what it returns. Engines import torch inside, so the worker's parent never does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from medq.common.registry import Registry


@dataclass(frozen=True)
class Trained:
    cancelled: bool
    fields: dict[str, Any]  # member columns: epoch, val_loss, val_error_px, device, images_per_s
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> path
    resumed_from_epoch: int | None = None


Trainer = Callable[[Any, Path, Any], Trained]  # (member claim, workdir, TrainHooks)
Evaluator = Callable[[Any], dict[str, dict[str, Any]]]  # evaluation claim -> result subject -> metrics
TRAINERS: Registry[Trainer] = Registry("job kind")
EVALUATORS: Registry[Evaluator] = Registry("job kind")


# --- family 1: chest-landmark ensembles ---------------------------------------------------------


@TRAINERS.register("ensemble")
def train_chest_member(claim, workdir: Path, hooks) -> Trained:
    from medq.common.families.chest.train import train_member
    from medq.common.specs import EnsembleSpec
    from medq.tasks.runtime import outcome_fields

    outcome = train_member(EnsembleSpec.from_dict(claim.spec), claim.plan["split"], Path(claim.plan["data_dir"]),
                           claim.seed, workdir, hooks)
    return Trained(outcome.cancelled, outcome_fields(outcome),
                   {f"seed-{claim.seed}/best": str(outcome.best_checkpoint),
                    f"seed-{claim.seed}/last": str(outcome.last_checkpoint)}, outcome.resumed_from_epoch)


@EVALUATORS.register("ensemble")
def evaluate_chest_ensemble(claim) -> dict[str, dict[str, Any]]:
    from medq.common.families.chest.evaluate import evaluate_ensemble
    from medq.common.specs import EnsembleSpec

    members = [(seed, Path(path), val_loss) for _, seed, val_loss, path in claim.members]
    report = evaluate_ensemble(EnsembleSpec.from_dict(claim.spec), claim.plan["split"], Path(claim.plan["data_dir"]),
                               members)
    results = {f"seed-{seed}": metrics for seed, metrics in report["members"].items()}
    results.update({f"ensemble-{how}": metrics for how, metrics in report["ensemble"].items()})
    return results


# --- family 2: HRNet heatmaps for cephalometric landmarks -----------------------------------


def _ceph_records(plan: dict[str, Any], spec) -> dict[str, list]:
    from medq.common.families.ceph.readers import read_dataset

    data = read_dataset(Path(plan["data_dir"]), spec.format, spec.annotator)
    by_stem = {r.stem: r for r in data.records}
    return {part: [by_stem[s] for s in stems] for part, stems in plan["split"].items()}


@TRAINERS.register("hrnet")
def train_hrnet_member(claim, workdir: Path, hooks) -> Trained:
    from medq.common.families.ceph.train import train_hrnet
    from medq.common.specs import HRNetSpec

    spec = HRNetSpec.from_dict(claim.spec)
    outcome = train_hrnet(spec, _ceph_records(claim.plan, spec), workdir, claim.seed, hooks)
    artifacts = {f"seed-{claim.seed}/last": str(outcome.last_checkpoint)}
    if outcome.best_checkpoints:
        artifacts[f"seed-{claim.seed}/best"] = str(outcome.best_checkpoints[0])
    # val_loss: the best validation MRE (mm, or px without a spacing); val_error_px stays as the
    # last progress report left it (the latest epoch's radial error in original pixels).
    fields = {"epoch": outcome.epochs_run, "val_loss": outcome.best_val_mre, "device": outcome.device,
              "images_per_s": outcome.train_images_per_s}
    return Trained(outcome.cancelled, fields, artifacts, outcome.resumed_from_epoch)


@EVALUATORS.register("hrnet")
def evaluate_hrnet_job(claim) -> dict[str, dict[str, Any]]:
    """The best k checkpoints together on the held-out test split and on every extra test set."""
    from medq.common.families.ceph.readers import read_test_set
    from medq.common.families.ceph.train import evaluate_hrnet
    from medq.common.specs import HRNetSpec

    if not claim.members:  # the member failed; the job says why
        return {}
    spec = HRNetSpec.from_dict(claim.spec)
    (_, _, _, best), = claim.members
    from medq.common.families.ceph.train import INIT_NAME

    checkpoints = sorted(Path(best).parent.glob("best-*.pt"))
    test = _ceph_records(claim.plan, spec)["test"]
    results = {"set-test": evaluate_hrnet(checkpoints, test)}
    untrained = Path(best).parent / INIT_NAME
    if untrained.is_file():  # the same model before training, for comparison
        results["set-test-untrained"] = evaluate_hrnet([untrained], test)
    for path in claim.plan.get("test_dirs", []):
        results[f"set-{Path(path).name}"] = evaluate_hrnet(
            checkpoints, list(read_test_set(Path(path), spec.format, spec.annotator).records))
    return results


# --- family 3: UNet++ CT lesion segmentation ----------------------------------------------------


def _seg_sources(plan: dict[str, Any]):
    from medq.common.families.ct_lesions.data import SegSource

    return [SegSource.from_dict(s) for s in plan["sources"]]


@TRAINERS.register("segment")
def train_segment_member(claim, workdir: Path, hooks) -> Trained:
    from medq.common.families.ct_lesions.train import train_segmenter
    from medq.common.specs import SegmentSpec

    outcome = train_segmenter(SegmentSpec.from_dict(claim.spec), _seg_sources(claim.plan), claim.plan["split"],
                              workdir, claim.seed, hooks)
    artifacts = {f"seed-{claim.seed}/last": str(outcome.last_checkpoint)}
    if outcome.best_epoch:
        artifacts[f"seed-{claim.seed}/best"] = str(outcome.best_checkpoint)
    # val_loss stays the latest epoch's validation loss (set by the progress reports)
    fields = {"epoch": outcome.epochs_run, "device": outcome.device, "images_per_s": outcome.train_slices_per_s}
    return Trained(outcome.cancelled, fields, artifacts, outcome.resumed_from_epoch)


@EVALUATORS.register("segment")
def evaluate_segment_job(claim) -> dict[str, dict[str, Any]]:
    """The best checkpoint, and the same model untrained, on the held-out test slices; review
    overlays of the trained model beside its checkpoints."""
    from medq.common.families.ct_lesions.train import INIT_NAME, evaluate_segmenter

    if not claim.members:  # the member failed; the job says why
        return {}
    (_, _, _, best), = claim.members
    sources, test = _seg_sources(claim.plan), claim.plan["split"]["test"]
    about = {"split_by": claim.plan["split_by"], "n_slices": {k: len(v) for k, v in claim.plan["split"].items()}}
    results = {"set-test": {**evaluate_segmenter(Path(best), sources, test, Path(best).parent / "overlays"),
                            **about}}
    untrained = Path(best).parent / INIT_NAME
    if untrained.is_file():
        results["set-test-untrained"] = {**evaluate_segmenter(untrained, sources, test), **about}
    return results
