"""Bulk inference with a segmentation job: what it accepts at submit, its predictor, its CSV
(torch-free at import). A study is a volume: a .npy file, a NIfTI file or a DICOM series grouped
from the headers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from medq.common.errors import SpecError
from medq.common.families.base import FamilyInference
from medq.common.inference.outputs import OutputPlan
from medq.common.inference.points import sent_cell

LESION_COLUMNS = ("ground_glass", "consolidation")
CLASS_COLUMNS = (*LESION_COLUMNS, "other_lung", "background")
CSV_COLUMNS = (["path", "key", "state", "reason", "study_uid", "series_uid", "format", "slices", "width", "height",
                "spacing_slice_mm", "spacing_row_mm", "spacing_column_mm", "mask", "mask_nifti", "overlay", "seg", "sr",
                "sent", "output_notes"]
               + [f"{name}_ml" for name in LESION_COLUMNS] + ["lesion_total_ml", "lung_involvement_pct"]
               + [f"{name}_voxels" for name in CLASS_COLUMNS])


class LesionInference(FamilyInference):
    aggregations = ("mean",)  # one checkpoint
    ttas = ("none",)
    default_chunk = 4  # CT volumes per chunk task
    needs_out_dir = True  # a mask file per study
    model_name = "a segmentation"
    outputs = {"npz": "the mask as class indices per slice (numpy .npz)",
               "overlay": "PNG of the slice with the most lesion and its prediction",
               "nifti": "the mask as NIfTI in the source's grid and affine; NIfTI sources",
               "seg": "DICOM Segmentation, a segment per class; DICOM CT series",
               "sr": "DICOM SR (TID 1500) of the lesion volumes and the lung involved, referencing the SEG"}
    dicom_outputs = ("seg", "sr")
    report_distributions = (("lesion_total_ml", "lesion volume, ground glass + consolidation (ml)"),
                            ("lung_involvement_pct", "lung involved: lesion / (lesion + other lung) voxels (%)"))

    def check(self, options: dict[str, Any], checkpoints) -> None:
        super().check(options, checkpoints)
        chosen = options.get("outputs")
        if chosen is not None and "sr" in chosen and "seg" not in chosen:
            raise SpecError("--outputs sr: the lesion SR references the DICOM SEG of its study; ask for seg too")

    def studies(self, archive: Any) -> Iterator[Any]:
        from medq.common.families.ct_lesions.volumes import plan_ct_studies

        return plan_ct_studies(archive)

    def predictor(self, spec, device=None):
        from medq.common.families.ct_lesions.predict import NEEDS_OUT, SegPredictor

        if not spec.out_dir:
            raise SpecError(NEEDS_OUT)
        return SegPredictor(Path(spec.checkpoints[0]), device, out_dir=spec.out_dir, slices_per_batch=spec.batch_size,
                            outputs=OutputPlan.from_spec(spec, "segment", "CT lesion UNet++"))

    def csv_columns(self, plan: dict[str, Any]) -> list[str]:
        return list(CSV_COLUMNS)

    def csv_row(self, study: Any) -> list[Any]:
        """A segmentation study: its mask file (relative to --out), lesion millilitres per class
        (empty without a spacing), the percentage of lung involved, and voxels per class."""
        m = study.result or {}
        spacing = m.get("spacing_mm") or [None, None, None]
        ml, voxels = m.get("lesion_ml") or {}, m.get("voxels") or {}
        return ([study.path, study.path_hash, study.state, study.reason or "", study.study_uid or "",
                 study.series_uid or "", study.source_format or "", _cell(m.get("slices")), _cell(study.width),
                 _cell(study.height), *(_cell(v) for v in spacing), *output_cells(m, ("npz", "nifti", "overlay", "seg", "sr")),
                 sent_cell(study), "; ".join(m.get("output_notes") or [])]
                + [_cell(ml.get(name)) for name in LESION_COLUMNS]
                + [_cell(m.get("lesion_total_ml")), _cell(m.get("lung_involvement_pct"))]
                + [_cell(voxels.get(name)) for name in CLASS_COLUMNS])


def output_cells(result: dict, names) -> list[str]:
    """The path (relative to --out) of each output, '' where none was written."""
    files = result.get("outputs") or {}
    return [files.get(name, "") for name in names]


def _cell(value: Any) -> Any:
    return "" if value is None else (float(f"{value:.6g}") if isinstance(value, float) else value)


INFERENCE = LesionInference()
