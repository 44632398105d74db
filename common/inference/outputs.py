"""What an inference job writes per study, and where (torch-free).

``OutputPlan`` is built once per predictor from the job's spec: the output folder, the outputs
``--outputs`` chose (None: every output the family writes where the study's input allows it),
and what DICOM outputs carry (algorithm identification, UIDs derived from the study so that a
study done again after a crash gets the same objects, never a second copy in the PACS).

A study's ``result`` names each file written, relative to ``--out``: ``outputs`` {name: path},
``dicom`` {name: SOP Instance UID} for the DICOM ones (what ``--send-to`` stores), and
``output_notes`` for an output asked for by name that this study's input cannot have.
Files are named by the study's key (the ``key`` column of the CSV, a hash of its archive
path), never by the source's name; a study planned without one falls back to its row id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

# an output's folder under --out and its file suffix
FILES = {"overlay": ("overlays", ".png"), "npz": ("masks", ".npz"), "nifti": ("masks", ".nii.gz"),
         "seg": ("seg", ".dcm"), "sr": ("sr", ".dcm")}


@dataclass(frozen=True)
class OutputPlan:
    out_dir: Path | None
    chosen: tuple[str, ...] | None = None  # --outputs; None: the family's defaults
    family: str = ""
    title: str = ""
    model_job: str | None = None
    checkpoints: tuple[str, ...] = ()
    seg_type: str = "binary"
    content: str = ""  # the spec's options that change an output's content (tta, aggregation, QC limit, seg type)
    # study row id -> its key, for the chunk being run (name_studies): what its files are named by
    names: dict[int, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def from_spec(cls, spec: Any, family: str, title: str) -> "OutputPlan":
        content = f"{spec.aggregation}/{spec.tta}/{spec.spread_limit_fraction!r}/{spec.seg_type}"
        return cls(Path(spec.out_dir) if spec.out_dir else None, spec.outputs, family, title, spec.model_job,
                   tuple(spec.checkpoints), spec.seg_type, content)

    def wants(self, name: str) -> bool:
        """Whether ``name`` is written (files need --out)."""
        return self.out_dir is not None and (self.chosen is None or name in self.chosen)

    def asked(self, name: str) -> bool:
        """Whether ``name`` was listed by --outputs (a study that cannot have it says so)."""
        return self.chosen is not None and name in self.chosen

    def name_studies(self, names: Mapping[int, str]) -> None:
        """The keys of the studies about to be run (the plan lives across a worker's chunks)."""
        self.names.clear()
        self.names.update({int(k): str(v) for k, v in names.items()})

    def path(self, name: str, study_id: int) -> Path:
        """``<out>/<folder>/<study key><suffix>``: ``overlays/3f2a….png``, ``seg/3f2a….dcm``."""
        folder, suffix = FILES[name]
        return Path(self.out_dir) / folder / f"{self.names.get(int(study_id)) or int(study_id)}{suffix}"

    def relative(self, path: Path) -> str:
        return str(Path(path).relative_to(self.out_dir))

    @cached_property
    def algorithm(self):
        """The DICOM outputs' algorithm identification (the checkpoints hashed once, when first asked)."""
        from medq.common import __version__
        from medq.common.inference.dicom_outputs import Algorithm, checkpoint_digest

        return Algorithm(self.family, self.title, __version__, self.model_job,
                         checkpoint_digest([Path(p) for p in self.checkpoints]))

    def uid_seed(self, study_id: int, source_uid: str) -> str:
        """The same for the same model, options and source: a study done again (a killed worker,
        a resumed job, tonight's job over a query that overlaps yesterday's) writes objects with
        the same UIDs, so a PACS stores them once. Only a source without a UID falls back to the
        study's row (unique in this store)."""
        source = source_uid or f"row-{int(study_id)}"
        return f"medq/{self.algorithm.checkpoint_sha256}/{self.content}/{source}"


def note_output(result: dict[str, Any], plan: OutputPlan, name: str, path: Path, sop_uid: str | None = None) -> None:
    """Record a written file (and, for a DICOM object, its SOP Instance UID) in ``result``."""
    result.setdefault("outputs", {})[name] = plan.relative(path)
    if sop_uid:
        result.setdefault("dicom", {})[name] = str(sop_uid)


def note_failed(result: dict[str, Any], name: str, why: str) -> None:
    """An output its builder refused for this study (a series without a frame of reference, say):
    the reason on the study, which is done with its other outputs."""
    result.setdefault("output_notes", []).append(f"{name} not written: {why}")


def note_missing(result: dict[str, Any], plan: OutputPlan, name: str, why: str) -> None:
    """An output asked for by name that this study cannot have: the reason on the study."""
    if plan.asked(name):
        result.setdefault("output_notes", []).append(f"{name} not written: {why}")
