"""The CT lesion family (job kind "segment"): one segmentation model (UNet++ or any smp
architecture) of ground glass, consolidation, other lung and background on HU slices, scored
by Dice and IoU per class on the test split, beside the same model untrained.

Torch-free at import: training and evaluation import their engines inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from medq.common import subjects
from medq.common.families.base import (
    Column, Example, Family, MemberCheckpoint, MemberMetric, ResultSection, ResultTable, Row, Trained,
)
from medq.common.families.ct_lesions.schema import LESION_CLASSES, UNTRAINED

COLUMNS = (("dice_per_image", "Dice (per slice)"), ("dice_pooled", "Dice (pooled)"),
           ("iou_per_image", "IoU (per slice)"), ("iou_pooled", "IoU (pooled)"))


class LesionFamily(Family):
    kind = "segment"
    title = "CT lesion segmentation"
    member_metric = MemberMetric("val_score", "val Dice", 3)  # the validation split's lesion Dice
    history_metrics = {"val_lesion_dice": "val lesion Dice"}
    inference_ref = "medq.common.families.ct_lesions.infer:INFERENCE"
    report_ref = "medq.common.families.ct_lesions.report"
    engine_modules = ("medq.common.families.ct_lesions.train",)

    def spec_from_dict(self, data: dict[str, Any]):
        from medq.common.families.ct_lesions.spec import SegmentSpec

        return SegmentSpec.from_dict(data)

    def plan(self, spec, data_dir: Path, cache_dir: Path | None = None, **options: Any) -> dict[str, Any]:
        """Every images/masks pair (MedSeg) or image/label volume (NIfTI, converted into
        ``cache_dir``, by default under the artifact root) checked, and the split fixed: by volume
        when volumes are known (every NIfTI case is one), by slice otherwise."""
        from medq.common.families.ct_lesions.data import split_slices
        from medq.common.families.ct_lesions.layouts import read_seg_dataset

        data = read_seg_dataset(Path(data_dir), cache_dir)
        split, split_by = split_slices(data, spec.split)
        return {"data_dir": str(data.root), "layout": data.layout, "n_images": data.n_slices,
                "sources": [s.to_dict() for s in data.sources], "split": split, "split_by": split_by}

    def train(self, spec, plan: dict[str, Any], seed: int, workdir: Path, hooks) -> Trained:
        from medq.common.families.ct_lesions.train import train_segmenter

        outcome = train_segmenter(spec, _sources(plan), plan["split"], workdir, seed, hooks)
        checkpoints = {"last": outcome.last_checkpoint}
        if outcome.best_epoch:
            checkpoints["best"] = outcome.best_checkpoint
        # val_loss stays the latest epoch's validation loss (set by the progress reports); val_score
        # is the best epoch's lesion Dice, the figure model selection kept
        fields = {"epoch": outcome.epochs_run, "device": outcome.device, "images_per_s": outcome.train_slices_per_s,
                  **({"val_score": outcome.best_val_dice} if outcome.best_val_dice is not None else {})}
        return Trained(outcome.cancelled, fields, checkpoints, outcome.resumed_from_epoch)

    def evaluate(self, spec, plan: dict[str, Any], members: Sequence[MemberCheckpoint]) -> dict[str, dict]:
        """The best checkpoint, and the same model untrained, on the held-out test slices; review
        overlays of the trained model beside its checkpoints."""
        from medq.common.families.ct_lesions.train import INIT_NAME, evaluate_segmenter

        if not members:  # the member failed; the job says why
            return {}
        (member,) = members
        sources, test = _sources(plan), plan["split"]["test"]
        about = {"split_by": plan["split_by"], "n_slices": {k: len(v) for k, v in plan["split"].items()}}
        results = {subjects.evaluation_set("test"): {
            **evaluate_segmenter(member.best, sources, test, member.best.parent / "overlays"), **about}}
        untrained = member.best.parent / INIT_NAME
        if untrained.is_file():
            results[subjects.evaluation_set(UNTRAINED)] = {**evaluate_segmenter(untrained, sources, test), **about}
        return results


    def result_sections(self, results: dict[str, Any]) -> list[ResultSection]:
        if not results["sets"]:
            return []
        sections = [ResultSection(note=f"job {results['job_id']}: {results['state']}")]
        sections += [ResultSection(_set_table(entry)) for entry in results["sets"]]
        first = results["sets"][0]["metrics"]
        for name, text in first.get("reductions", {}).items():
            sections.append(ResultSection(note=f"  {name}: {text}"))
        if first.get("split_by") == "slice":
            sections.append(ResultSection(note="  split by slice (no volume ids given): slices of one scan can sit "
                                               "in both training and test", style="warn"))
        if first.get("overlays"):
            sections.append(ResultSection(note=f"  review overlays (slice | truth | prediction | lesion TP yellow, "
                                               f"FP red, FN green): {first['overlays']}"))
        return sections

    # -- reports (report.py: Dice and IoU per class, distributions, the baseline, the overlays) ----
    def example(self, folder: Path) -> Example:
        import numpy as np

        from medq.common.families.ct_lesions.synth import synth_ct
        from medq.common.families.ct_lesions.spec import SegmentSpec

        data = Path(folder) / "ct"
        synth_ct(data, n=16, seed=5, size=64, slices_per_volume=4)
        archive = Path(folder) / "ct-archive"
        archive.mkdir(parents=True, exist_ok=True)
        images = np.load(data / "images_synth.npy")
        np.save(archive / "scan1.npy", images[:3, ..., 0])
        np.save(archive / "scan2.npy", images[3:5, ..., 0])
        spec = SegmentSpec(arch="unet", encoder="resnet18", image_size=64, batch_size=4, epochs=2, amp=False)
        return Example(spec, data, archive, infer_options={"out_dir": str(Path(folder) / "ct-out")})


def _set_table(entry: dict) -> ResultTable:
    """One evaluation set: lesion classes, their mean, then lung and background."""
    m = entry["metrics"]
    split = m.get("split_by")
    title = f"{entry['name']}: {m.get('n_images', '?')} slices" + (f" (split by {split})" if split else "")
    per_class = m.get("per_class", {})
    rows = []
    for name in [*LESION_CLASSES, None, *(c for c in per_class if c not in LESION_CLASSES)]:
        if name is None:
            rows.append(Row(("lesion mean", *(m["lesion_mean"].get(k) for k, _ in COLUMNS), ""), bold=True,
                            end_section=True))
        elif name in per_class:
            row = per_class[name]
            rows.append(Row((name.replace("_", " "), *(row.get(k) for k, _ in COLUMNS),
                             str(row.get("empty_images", "")))))
    columns = (Column("class", numeric=False), *(Column(label, 3) for _, label in COLUMNS),
               Column("slices empty in both"))
    return ResultTable(title, columns, tuple(rows))


def _sources(plan: dict[str, Any]):
    from medq.common.families.ct_lesions.layouts import ready_sources

    return ready_sources(plan["sources"])


FAMILY = LesionFamily()
