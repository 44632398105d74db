"""Bulk inference with an HRNet job: what it accepts at submit, its predictor, its CSV.

Torch-free at import: the predictor (``predict.py``) imports torch when a worker builds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from medq.common.errors import SpecError
from medq.common.families.base import FamilyInference
from medq.common.inference.outputs import OutputPlan
from medq.common.families.ceph.schema import LANDMARKS, N_LANDMARKS


class CephInference(FamilyInference):
    aggregations = ("mean",)  # the checkpoints' heatmaps are averaged, as the job's evaluation does
    ttas = ("none", "flip")  # flip only for a model trained with left/right pairs
    default_chunk = 256
    outputs = {"overlay": "PNG of the image with its landmarks (red: flagged for review)",
               "sr": "DICOM SR (TID 1500): a point per landmark, distances in mm, the review flag; DICOM sources"}
    dicom_outputs = ("sr",)
    model_name = "an HRNet"
    report_distributions = (("spread_px", "largest landmark spread of the study: checkpoints' disagreement (px)"),)

    def check(self, options: dict[str, Any], checkpoints: Sequence[Path]) -> None:
        super().check(options, checkpoints)
        if options.get("tta", "none") != "none":
            from medq.common.checkpoint_meta import checkpoint_spec

            if not checkpoint_spec(Path(checkpoints[0])).get("flip_pairs"):
                raise SpecError("--tta flip: this HRNet model was trained without left/right landmark pairs "
                                "(--flip-pairs), so it has no flip test")

    def predictor(self, spec, device=None):
        from medq.common.families.ceph.predict import HeatmapPredictor

        return HeatmapPredictor([Path(p) for p in spec.checkpoints], aggregation=spec.aggregation,
                                tta=None if spec.tta == "none" else spec.tta, device=device,
                                studies_per_batch=spec.batch_size, out_dir=spec.out_dir, outputs=OutputPlan.from_spec(spec, "hrnet", "cephalometric HRNet"),
                                spread_limit_fraction=spec.spread_limit_fraction)

    def csv_columns(self, plan: dict[str, Any]) -> list[str]:
        from medq.common.inference.points import landmark_csv_columns

        return landmark_csv_columns(N_LANDMARKS, LANDMARKS)  # x1_sella, ..., x19_articulare

    def csv_row(self, study: Any) -> list[Any]:
        from medq.common.inference.points import landmark_csv_row

        return landmark_csv_row(study, N_LANDMARKS)


INFERENCE = CephInference()
