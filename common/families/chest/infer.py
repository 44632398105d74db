"""Bulk inference with a chest ensemble: what it accepts at submit, its predictor, its CSV.

Torch-free at import: the predictor (``predict.py``) imports torch when a worker builds it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from medq.common.errors import SpecError
from medq.common.families.base import FamilyInference
from medq.common.inference.outputs import OutputPlan
from medq.common.families.chest.schema import N_LANDMARKS


class ChestInference(FamilyInference):
    aggregations = ("mean", "median", "weighted")  # weighted: by each member's validation loss
    ttas = ("none", "flip")
    default_chunk = 256
    outputs = {"overlay": "PNG of the image with its landmarks (red: flagged for review)",
               "sr": "DICOM SR (TID 1500): a point per landmark, distances in mm, the review flag; DICOM sources"}
    dicom_outputs = ("sr",)
    model_name = "a chest-landmark ensemble"
    report_distributions = (("spread_px", "largest landmark spread of the study: members' disagreement (px)"),)

    def check(self, options: dict[str, Any], checkpoints: Sequence[Path]) -> None:
        super().check(options, checkpoints)
        if options.get("aggregation") == "weighted":
            from medq.common.checkpoint_meta import checkpoint_value

            for path in checkpoints:
                loss = checkpoint_value(Path(path), "val_loss")
                if not isinstance(loss, (int, float)) or not math.isfinite(loss) or loss <= 0:
                    raise SpecError(f"--aggregation weighted: {path} records no positive validation loss "
                                    "(a member's best.pt does)")

    def predictor(self, spec, device=None):
        from medq.common.families.chest.predict import EnsemblePredictor

        return EnsemblePredictor.from_checkpoints(
            [Path(p) for p in spec.checkpoints], aggregation=spec.aggregation,
            tta=None if spec.tta == "none" else spec.tta, device=device, studies_per_batch=spec.batch_size,
            out_dir=spec.out_dir, outputs=OutputPlan.from_spec(spec, "ensemble", "chest-landmark ensemble"), spread_limit_fraction=spec.spread_limit_fraction)

    def csv_columns(self, plan: dict[str, Any]) -> list[str]:
        from medq.common.inference.points import landmark_csv_columns

        return landmark_csv_columns(N_LANDMARKS)

    def csv_row(self, study: Any) -> list[Any]:
        from medq.common.inference.points import landmark_csv_row

        return landmark_csv_row(study, N_LANDMARKS)


INFERENCE = ChestInference()
