"""Bulk inference with a chest ensemble: what it accepts at submit (torch-free)."""

from __future__ import annotations

from medq.common.families.base import FamilyInference


class ChestInference(FamilyInference):
    aggregations = ("mean", "median", "weighted")  # weighted: by each member's validation loss
    ttas = ("none", "flip")
    default_chunk = 256
    model_name = "a chest-landmark ensemble"


INFERENCE = ChestInference()
