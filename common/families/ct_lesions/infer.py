"""Bulk inference with a segmentation job: what it accepts at submit (torch-free). A study is a
volume: a .npy file or a DICOM series grouped from the headers."""

from __future__ import annotations

from typing import Any, Iterator

from medq.common.families.base import FamilyInference


class LesionInference(FamilyInference):
    aggregations = ("mean",)  # one checkpoint
    ttas = ("none",)
    default_chunk = 4  # CT volumes per chunk task
    needs_out_dir = True  # a mask file per study
    model_name = "a segmentation"

    def studies(self, archive: Any) -> Iterator[Any]:
        from medq.common.families.ct_lesions.volumes import plan_ct_studies

        return plan_ct_studies(archive)


INFERENCE = LesionInference()
