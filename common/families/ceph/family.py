"""The cephalometric family (job kind "hrnet"): one HRNet heatmap model of 19 landmarks, its best
k epochs averaged, scored in millimetres (MRE ± SD, SDR) on the test split and on every extra
test set, beside the same model untrained.

Torch-free at import: training and evaluation import their engines inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from medq.common import subjects
from medq.common.families.base import (
    Column, Example, Family, MemberCheckpoint, MemberMetric, ResultSection, ResultTable, Row, Trained,
)
from medq.common.families.ceph.schema import UNTRAINED

SDR_KEYS = ("sdr_2mm", "sdr_2.5mm", "sdr_3mm", "sdr_4mm")


class CephFamily(Family):
    kind = "hrnet"
    title = "cephalometric HRNet"
    member_metric = MemberMetric("val_score", "val MRE", unit="mm")  # mm, or px when the spacing is unknown
    history_metrics = {"val_mre_mm": "val MRE (mm)", "val_error_px": "val error (px)"}
    inference_ref = "medq.common.families.ceph.infer:INFERENCE"
    report_ref = "medq.common.families.ceph.report"
    engine_modules = ("medq.common.families.ceph.train",)

    def spec_from_dict(self, data: dict[str, Any]):
        from medq.common.families.ceph.spec import HRNetSpec

        return HRNetSpec.from_dict(data)

    def member_unit(self, plan: dict[str, Any]) -> str:
        return "mm" if plan.get("spacing_known", True) else "px"

    def plan(self, spec, data_dir: Path, test_dirs: Sequence[Path] = (), **options: Any) -> dict[str, Any]:
        """Every annotation and image of the training data and of each test set checked, and the
        split fixed by its seed."""
        from medq.common.families.ceph.readers import read_dataset, read_test_set, split_stems

        data = read_dataset(Path(data_dir), spec.format, spec.annotator)
        tests = {str(Path(p).resolve()): read_test_set(Path(p), spec.format, spec.annotator) for p in test_dirs}
        return {"data_dir": str(Path(data_dir).resolve()), "n_images": len(data.records),
                "spacing_known": data.spacing_known and all(t.spacing_known for t in tests.values()),
                "split": split_stems([r.stem for r in data.records], spec.split),
                "test_dirs": list(tests), "test_images": {p: len(t.records) for p, t in tests.items()}}

    def train(self, spec, plan: dict[str, Any], seed: int, workdir: Path, hooks) -> Trained:
        from medq.common.families.ceph.train import train_hrnet

        outcome = train_hrnet(spec, _records(plan, spec), workdir, seed, hooks)
        checkpoints = {"last": outcome.last_checkpoint}
        if outcome.best_checkpoints:
            checkpoints["best"] = outcome.best_checkpoints[0]
        # the best epoch (by validation MRE): its heatmap loss, MRE (mm, or px without a spacing) and px error
        fields = {"epoch": outcome.epochs_run, "val_loss": outcome.best_val_loss, "val_score": outcome.best_val_mre,
                  "val_error_px": outcome.best_val_error_px, "device": outcome.device,
                  "images_per_s": outcome.train_images_per_s}
        return Trained(outcome.cancelled, fields, checkpoints, outcome.resumed_from_epoch)

    def evaluate(self, spec, plan: dict[str, Any], members: Sequence[MemberCheckpoint]) -> dict[str, dict]:
        """The best k checkpoints together on the held-out test split and on every extra test set,
        and the model before training on the test split."""
        from medq.common.families.ceph.readers import read_test_set
        from medq.common.families.ceph.train import INIT_NAME, evaluate_hrnet

        if not members:  # the member failed; the job says why
            return {}
        (member,) = members
        checkpoints = self.model_checkpoints([member.best])
        test = _records(plan, spec)["test"]
        results = {subjects.evaluation_set("test"): evaluate_hrnet(checkpoints, test)}
        untrained = member.best.parent / INIT_NAME
        if untrained.is_file():
            results[subjects.evaluation_set(UNTRAINED)] = evaluate_hrnet([untrained], test, cases=0)
        for path in plan.get("test_dirs", []):
            records = list(read_test_set(Path(path), spec.format, spec.annotator).records)
            results[subjects.evaluation_set(Path(path).name)] = evaluate_hrnet(checkpoints, records)
        return results

    def model_checkpoints(self, best: Sequence[Path]) -> list[Path]:
        """The best k epochs kept beside the best one (``best-<epoch>.pt``), averaged as the
        evaluation averages them."""
        return sorted(Path(best[0]).parent.glob("best-*.pt")) or [Path(p) for p in best]

    # -- reports (report.py: MRE and SDR per set, SDR curves, per landmark, best and worst images) --
    def result_sections(self, results: dict[str, Any]) -> list[ResultSection]:
        if not results["sets"]:
            return []
        columns = (Column("set", numeric=False), Column("images"), Column("checkpoints"), Column("MRE ± SD"),
                   Column("SDR 2 mm"), Column("2.5 mm"), Column("3 mm"), Column("4 mm"))
        rows = []
        for entry in results["sets"]:
            m, unit = entry["metrics"], entry["metrics"].get("unit", "mm")
            rows.append(Row((entry["name"], m.get("n_images", ""), m.get("checkpoints", ""),
                             f"{_num(m.get(f'mre_{unit}'))} ± {_num(m.get(f'sd_{unit}'))} {unit}",
                             *(_percent(m.get(k)) for k in SDR_KEYS))))
        sections = [ResultSection(ResultTable(f"job {results['job_id']}: {results['state']}", columns, tuple(rows)))]
        first = results["sets"][0]
        m = first["metrics"]
        unit = m.get("unit", "mm")
        landmarks = tuple(Row((row["landmark"], row.get(f"mre_{unit}"), row.get(f"sd_{unit}"),
                               _percent(row.get("sdr_2mm")), _percent(row.get("sdr_4mm"))))
                          for row in m.get("per_landmark", []))
        sections.append(ResultSection(ResultTable(
            f"{first['name']}: per landmark",
            (Column("landmark", numeric=False), Column(f"MRE {unit}"), Column(f"SD {unit}"), Column("SDR 2 mm"),
             Column("SDR 4 mm")), landmarks)))
        return sections

    def example(self, folder: Path) -> Example:
        import shutil

        from medq.common.families.ceph.synth import synth_ceph
        from medq.common.families.ceph.spec import HRNetSpec

        data = Path(folder) / "ceph"
        synth_ceph(data, n=8, seed=2, n_test=0, width=160, height=200)
        archive = Path(folder) / "ceph-archive"
        archive.mkdir(parents=True, exist_ok=True)
        for image in sorted(data.rglob("*.bmp"))[:2]:
            shutil.copy(image, archive / image.name)
        spec = HRNetSpec(width="w18s", image_size=64, epochs=2, batch_size=4, warmup_epochs=1, top_k=1, amp=False)
        return Example(spec, data, archive)


def _records(plan: dict[str, Any], spec) -> dict[str, list]:
    """The plan's split as records (read again: the plan keeps image stems only)."""
    from medq.common.families.ceph.readers import read_dataset

    data = read_dataset(Path(plan["data_dir"]), spec.format, spec.annotator)
    by_stem = {r.stem: r for r in data.records}
    return {part: [by_stem[s] for s in stems] for part, stems in plan["split"].items()}


def _num(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


FAMILY = CephFamily()
