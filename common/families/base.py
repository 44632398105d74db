"""The interface every model family implements, and what its methods hand back (torch-free).

The queue, the CLI and bulk inference call a family only through these methods, found by job
kind in ``registry.py``; nothing outside a family's folder branches on its name. A family is
one folder (``common/families/<name>/``) holding its spec, its torch-free data validation and
split, its trainer, evaluator, predictor, quality checks and result tables, and a
``family.py`` that ties them to this interface. Methods that train or predict import torch
inside, so ``medq --help`` and ``medq status`` never load it.

Like dramatiq's middleware base, every method has a default or raises NotImplementedError
naming the family, so a new family states only what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence


# --- what training and evaluation hand back -----------------------------------------------------


@dataclass(frozen=True)
class Trained:
    """One member's attempt, as the member row records it."""

    cancelled: bool
    fields: dict[str, Any]  # member columns: epoch, val_loss, val_error_px, val_score, device, images_per_s
    checkpoints: dict[str, Path] = field(default_factory=dict)  # "best" / "last" -> file
    resumed_from_epoch: int | None = None


@dataclass(frozen=True)
class MemberCheckpoint:
    """A member that succeeded, as its job's evaluation sees it."""

    member_id: int
    seed: int
    val_loss: float | None
    best: Path  # its best checkpoint


@dataclass(frozen=True)
class Example:
    """A family's smallest honest run: a tiny synthetic dataset, a spec that trains on it in
    seconds on a CPU, and an archive of two studies for bulk inference. The family contract test
    runs every registered family through it."""

    spec: Any
    data_dir: Path
    archive: Path
    plan_options: dict[str, Any] = field(default_factory=dict)  # extra arguments of ``plan``
    infer_options: dict[str, Any] = field(default_factory=dict)  # e.g. out_dir for a family that writes files


@dataclass(frozen=True)
class MemberMetric:
    """The validation figure ``medq status JOB`` shows per member: a member column, its label."""

    column: str  # "val_error_px" or "val_score"
    label: str  # "val px", "val Dice", "val MRE"
    digits: int = 2
    unit: str = ""  # "px", "mm"; "" for a ratio such as Dice (Family.member_unit may tell it per job)


# --- what result tables are made of (plain data; scheduler/render.py draws them) ----------------


@dataclass(frozen=True)
class Column:
    label: str
    digits: int = 2  # for float cells
    numeric: bool = True  # right-aligned
    state: bool = False  # a job/member state, coloured by the renderer


@dataclass(frozen=True)
class Row:
    cells: tuple[Any, ...]  # str, int, float or None ("-")
    bold: bool = False
    end_section: bool = False


@dataclass(frozen=True)
class ResultTable:
    title: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class ResultSection:
    """A table, or a line of text (``note``; ``warn`` draws it in yellow, ``error`` in red)."""

    table: ResultTable | None = None
    note: str | None = None
    style: str | None = None  # None | "warn" | "error"


# --- the families -------------------------------------------------------------------------------


class Family:
    """A model family: its job kind, its spec, and what the queue and the CLI ask of it."""

    kind: ClassVar[str]  # the job kind: the word of `medq submit <kind>`, stored on every job row
    title: ClassVar[str]  # for people: "chest-landmark ensemble"
    member_metric: ClassVar[MemberMetric] = MemberMetric("val_error_px", "val px", unit="px")
    # the validation metrics its loop reports by name each epoch (Progress.metrics), for people:
    # the training history's curves are labelled with these
    history_metrics: ClassVar[dict[str, str]] = {}
    # imported by every worker pool process at start-up, so a first task does not wait on them
    engine_modules: ClassVar[tuple[str, ...]] = ()

    # -- its spec ---------------------------------------------------------------------------------
    def spec_from_dict(self, data: dict[str, Any]) -> Any:
        """The typed, frozen spec of a job (SpecError for unknown fields or bad values)."""
        raise NotImplementedError(f"family {self.kind!r} has no spec")

    def total_epochs(self, spec: Any) -> int:
        return int(spec.epochs)

    def member_unit(self, plan: dict[str, Any]) -> str:
        """The unit of ``member_metric`` for a job of this plan (`medq watch` prints it)."""
        return self.member_metric.unit

    # -- at submit (torch-free) --------------------------------------------------------------------
    def plan(self, spec: Any, data_dir: Path, **options: Any) -> dict[str, Any]:
        """Validate the whole dataset and fix the split; the plan every member and the evaluation
        share (JSON). DataError naming each bad file or row; nothing is enqueued then."""
        raise NotImplementedError(f"family {self.kind!r} cannot be trained")

    # -- on a worker -------------------------------------------------------------------------------
    def train(self, spec: Any, plan: dict[str, Any], seed: int, workdir: Path, hooks: Any) -> Trained:
        """Train one member, resuming from ``workdir`` when it holds a checkpoint of this member.
        ``hooks``: medq.common.training TrainHooks (progress, should_stop)."""
        raise NotImplementedError(f"family {self.kind!r} cannot be trained")

    def evaluate(self, spec: Any, plan: dict[str, Any], members: Sequence[MemberCheckpoint]) -> dict[str, dict]:
        """The job's results: subject (``subjects.py``) -> metrics (JSON). ``members``: those that
        succeeded, by seed (none when all failed: return what can be said without them)."""
        return {}

    # -- what a finished job leaves ------------------------------------------------------------------
    def model_checkpoints(self, best: Sequence[Path]) -> list[Path]:
        """The checkpoints bulk inference loads for a job, from its members' best checkpoints."""
        return [Path(p) for p in best]

    # -- bulk inference ------------------------------------------------------------------------------
    # "package.module:NAME" of its FamilyInference, imported on first use (torch-free at import)
    inference_ref: ClassVar[str] = ""

    @property
    def inference(self) -> "FamilyInference":
        if not self.inference_ref:
            raise NotImplementedError(f"family {self.kind!r} has no bulk inference")
        import importlib

        module, _, name = self.inference_ref.partition(":")
        return getattr(importlib.import_module(module), name or "INFERENCE")

    # -- results, for people ---------------------------------------------------------------------------
    def result_sections(self, results: dict[str, Any]) -> list[ResultSection]:
        """What `medq results JOB` prints for a job of this family (``views.job_results``)."""
        return []

    # -- reports (common/report/) --------------------------------------------------------------------
    # "package.module" of its report functions, imported when a report is built (they draw with
    # matplotlib): sections(data), headline(results), paired_errors(results), curves(results)
    report_ref: ClassVar[str] = ""

    def _report(self, name: str):
        import importlib

        return getattr(importlib.import_module(self.report_ref), name) if self.report_ref else None

    def report_sections(self, data: Any) -> list[Any]:
        """This family's sections of a job's report (``report.page.Section``), after the part
        every training job has (spec, members, learning curves). ``data``: report.data.JobData.
        Without a report module: its result tables, as `medq results` prints them."""
        if self.report_ref:
            return self._report("sections")(data)
        from medq.common.report.page import Note, Section, Table

        if not data.results.get("members") and not data.results.get("sets"):
            return []
        blocks = []
        for part in self.result_sections(data.results):
            if part.table is not None:
                blocks.append(Table.of(part.table.title, [c.label for c in part.table.columns],
                                       [row.cells for row in part.table.rows]))
            elif part.note:
                blocks.append(Note(part.note, part.style))
        return [Section.of("Results", blocks, data.id)] if blocks else []

    def report_headline(self, results: dict[str, Any]) -> list[Any]:
        """The figures a side-by-side report compares (``report.page.Metric``, each with its
        path in the results), in the same order for every job of the family."""
        return self._report("headline")(results) if self.report_ref else []

    def report_errors(self, results: dict[str, Any]) -> Any:
        """Per test image figures of the job's headline model (``report.page.PairedErrors``) for
        the paired test of a side-by-side report; None when there are none."""
        return self._report("paired_errors")(results) if self.report_ref else None

    def report_curves(self, results: dict[str, Any]) -> list[Any] | None:
        """Plots every job of the family draws alike (``report.page.CurvePlot``: CED, SDR,
        Dice), overlaid in a side-by-side report."""
        return self._report("curves")(results) if self.report_ref else None

    # -- a smoke run -------------------------------------------------------------------------------------
    def example(self, folder: Path) -> Example:
        """A tiny synthetic dataset, spec and two-study archive under ``folder`` (see Example)."""
        raise NotImplementedError(f"family {self.kind!r} has no example")


class FamilyInference:
    """Bulk inference with a family's trained models: options checked at submit, before a job
    exists (torch-free), and the predictor a chunk task runs (on the worker)."""

    aggregations: ClassVar[tuple[str, ...]] = ("mean",)  # how several checkpoints combine
    ttas: ClassVar[tuple[str, ...]] = ("none",)  # test-time augmentations it can run
    default_chunk: ClassVar[int] = 256  # studies per chunk task
    needs_out_dir: ClassVar[bool] = False  # it writes files per study (masks): --out is required
    model_name: ClassVar[str] = "this"  # in messages: "an HRNet model supports ..."
    # What the inference report draws as histograms of the done studies: (key in a study's
    # ``result`` JSON, axis label with its unit). A key naming a list of numbers (a landmark
    # model's spread per landmark) is drawn as each study's largest value.
    report_distributions: ClassVar[tuple[tuple[str, str], ...]] = ()
    # What it can write per study under --out, by --outputs name (each where the study's input
    # allows it: a DICOM SR only of a DICOM source), and which of them are DICOM objects that
    # --send-to stores on a PACS (``common.inference.outputs``).
    outputs: ClassVar[dict[str, str]] = {}
    dicom_outputs: ClassVar[tuple[str, ...]] = ()

    def check(self, options: dict[str, Any], checkpoints: Sequence[Path]) -> None:
        """Refuse, with a SpecError naming the option, what this family cannot honour."""
        from medq.common.errors import SpecError

        for name, valid in (("aggregation", self.aggregations), ("tta", self.ttas)):
            value = options.get(name)
            if value is not None and value not in valid:
                raise SpecError(f"--{name} {value}: {self.model_name} model supports {name} "
                                f"{', '.join(valid)} only")
        if self.needs_out_dir and not options.get("out_dir"):
            raise SpecError(f"{self.model_name} model writes a file per study: give --out DIR")
        chosen = options.get("outputs")
        if chosen is not None and not chosen:
            raise SpecError(f"--outputs: name at least one of {', '.join(self.outputs) or 'none'}")
        if options.get("seg_type", "binary") != "binary" and "seg" not in self.outputs:
            raise SpecError(f"--seg-type {options['seg_type']}: {self.model_name} model writes no DICOM SEG")
        if chosen is not None:
            unknown = [name for name in chosen if name not in self.outputs]
            if unknown:
                raise SpecError(f"--outputs {','.join(unknown)}: {self.model_name} model writes "
                                f"{', '.join(self.outputs) or 'no files'} only")
            if not options.get("out_dir"):
                raise SpecError(f"--outputs {','.join(chosen)}: files are written under --out DIR; give it")
        if options.get("send_to"):
            dicom = [name for name in self.dicom_outputs if chosen is None or name in chosen]
            if not dicom:
                raise SpecError(f"--send-to stores DICOM outputs ({', '.join(self.dicom_outputs) or 'none'} for "
                                f"{self.model_name} model), and --outputs chooses none of them")

    def studies(self, archive: Any) -> Iterator[Any]:
        """The studies of an archive: Entry / SkippedEntry items (one file each by default)."""
        return archive.entries()

    def predictor(self, spec: Any, device: Any = None) -> Any:
        """The predictor a chunk task runs (``medq.common.inference``); imports torch."""
        raise NotImplementedError

    def csv_columns(self, plan: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def csv_row(self, study: Any) -> list[Any]:
        raise NotImplementedError
