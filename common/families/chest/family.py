"""The chest-landmark family (job kind "ensemble"): a seed ensemble of ResNet regressors of 15
landmarks, evaluated per seed and as mean / median / weighted ensembles.

Torch-free at import: training and evaluation import their engines inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from medq.common import subjects
from medq.common.families.base import (
    Column, Example, Family, MemberCheckpoint, MemberMetric, ResultSection, ResultTable, Row, Trained,
)

METRICS = (("mean_error_px", "mean px", 2), ("median_error_px", "median px", 2), ("p95_error_px", "p95 px", 2),
           ("mean_error_px_224", "mean px@224", 2), ("normalised_error", "norm. err", 4))


class ChestFamily(Family):
    kind = "ensemble"
    title = "chest-landmark ensemble"
    member_metric = MemberMetric("val_error_px", "val px", unit="px")
    history_metrics = {"val_error_px": "val error (px)"}
    inference_ref = "medq.common.families.chest.infer:INFERENCE"
    report_ref = "medq.common.families.chest.report"
    engine_modules = ("medq.common.families.chest.train", "medq.common.families.chest.evaluate")

    def spec_from_dict(self, data: dict[str, Any]):
        from medq.common.families.chest.spec import EnsembleSpec

        return EnsembleSpec.from_dict(data)

    def total_epochs(self, spec) -> int:
        return spec.total_epochs

    def plan(self, spec, data_dir: Path, **options: Any) -> dict[str, Any]:
        """Every row and image checked (csvio), and the stratified split fixed by its seed."""
        from medq.common.families.chest.csvio import make_split, validate_dataset

        summary = validate_dataset(Path(data_dir))
        return {"data_dir": str(Path(data_dir).resolve()), "n_images": summary.n_images,
                "categories": summary.categories, "split": make_split(summary.records, spec.split)}

    def train(self, spec, plan: dict[str, Any], seed: int, workdir: Path, hooks) -> Trained:
        from medq.common.families.chest.train import train_member

        outcome = train_member(spec, plan["split"], Path(plan["data_dir"]), seed, workdir, hooks)
        fields = {"epoch": outcome.epochs_run, "val_loss": outcome.best_val_loss,
                  "val_error_px": outcome.best_val_error_px, "device": outcome.device,
                  "images_per_s": outcome.train_images_per_s}
        return Trained(outcome.cancelled, fields, {"best": outcome.best_checkpoint, "last": outcome.last_checkpoint},
                       outcome.resumed_from_epoch)

    def evaluate(self, spec, plan: dict[str, Any], members: Sequence[MemberCheckpoint]) -> dict[str, dict]:
        from medq.common.families.chest.evaluate import evaluate_ensemble

        if not members:
            return {}
        report = evaluate_ensemble(spec, plan["split"], Path(plan["data_dir"]),
                                   [(m.seed, m.best, m.val_loss) for m in members])
        results = {subjects.member(seed): metrics for seed, metrics in report["members"].items()}
        results.update({subjects.combined(how): metrics for how, metrics in report["ensemble"].items()})
        return results


    def result_sections(self, results: dict[str, Any]) -> list[ResultSection]:
        columns = (Column("model", numeric=False), Column("state", numeric=False, state=True),
                   *(Column(label, digits) for _, label, digits in METRICS))
        rows = [Row((f"seed {m['seed']}", m["state"], *((m["metrics"] or {}).get(key) for key, _, _ in METRICS)))
                for m in results["members"]]
        rows += [Row((f"ensemble ({e['aggregation']})", "", *(e["metrics"].get(key) for key, _, _ in METRICS)),
                     bold=True) for e in results["ensemble"]]
        sections = [ResultSection(ResultTable(f"job {results['job_id']}: {results['state']} (test split)",
                                              columns, tuple(rows)))]
        best = next((e for e in results["ensemble"] if e["aggregation"] == "mean"), None)
        if best and "per_category" in best["metrics"]:
            categories = tuple(Row((name, row["n_images"], row["mean_error_px"], row["mean_error_px_224"]))
                               for name, row in sorted(best["metrics"]["per_category"].items()))
            sections.append(ResultSection(ResultTable(
                "ensemble (mean) by category",
                (Column("category", numeric=False), Column("images"), Column("mean px"), Column("mean px@224")),
                categories)))
        return sections

    # -- reports (chest/report.py) ---------------------------------------------------------------
    def example(self, folder: Path) -> Example:
        import shutil

        from medq.common.families.chest.synth import synth_chest
        from medq.common.families.chest.spec import EnsembleSpec

        data = Path(folder) / "chest"
        synth_chest(data, n=16, seed=3, size=96)
        archive = Path(folder) / "chest-archive"
        archive.mkdir(parents=True, exist_ok=True)
        for image in sorted((data / "images").glob("*.png"))[:2]:
            shutil.copy(image, archive / image.name)
        return Example(EnsembleSpec(image_size=64, batch_size=4, epochs_head=1, epochs=1, loss="mse"), data, archive)

FAMILY = ChestFamily()
