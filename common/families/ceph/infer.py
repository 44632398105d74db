"""Bulk inference with an HRNet job: what it accepts at submit (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from medq.common.errors import SpecError
from medq.common.families.base import FamilyInference


class CephInference(FamilyInference):
    aggregations = ("mean",)  # the checkpoints' heatmaps are averaged, as the job's evaluation does
    ttas = ("none", "flip")  # flip only for a model trained with left/right pairs
    default_chunk = 256
    model_name = "an HRNet"

    def check(self, options: dict[str, Any], checkpoints: Sequence[Path]) -> None:
        super().check(options, checkpoints)
        if options.get("tta", "none") != "none":
            from medq.common.checkpoint_meta import checkpoint_spec

            if not checkpoint_spec(Path(checkpoints[0])).get("flip_pairs"):
                raise SpecError("--tta flip: this HRNet model was trained without left/right landmark pairs "
                                "(--flip-pairs), so it has no flip test")


INFERENCE = CephInference()
