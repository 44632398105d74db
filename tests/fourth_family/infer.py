"""Bulk inference with a disc classifier: the options it takes, its predictor, its CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medq.common.families.base import FamilyInference

CSV_COLUMNS = ["path", "key", "state", "reason", "width", "height", "label", "p_disc"]


class DiscInference(FamilyInference):
    default_chunk = 8
    model_name = "a disc classifier"

    def predictor(self, spec, device=None):
        from tests.fourth_family.predict import DiscPredictor

        return DiscPredictor(Path(spec.checkpoints[0]), spec.batch_size, device)

    def csv_columns(self, plan: dict[str, Any]) -> list[str]:
        return list(CSV_COLUMNS)

    def csv_row(self, study: Any) -> list[Any]:
        result = study.result or {}
        return [study.path, study.path_hash, study.state, study.reason or "", study.width or "", study.height or "",
                result.get("label", ""), "" if result.get("p_disc") is None else round(result["p_disc"], 4)]


INFERENCE = DiscInference()
