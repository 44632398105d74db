"""One chunk of studies through any family's predictor: the one loop of bulk inference.

A family's predictor (``FamilyInference.predictor(spec)``) is a ``StudyPredictor``:

- ``decoder``: a ``StudyDecoder``, small and picklable (no model), whose ``decode(archive, key)``
  runs in DataLoader loader processes and turns one study's archive key into what the model
  needs (an image at the model size as uint8, a CT volume as model inputs), raising StudyError
  or StudySkipped for a bad study; its ``collate(items)`` stacks a batch there too, so one
  contiguous tensor crosses the process boundary and is pinned once;
- ``studies_per_batch``: how many studies ``predict`` takes at a time;
- ``predict(study_ids, batch) -> list[StudyOutcome]``: one outcome per study, in order (it runs
  the models, its quality checks, and writes its files: overlays, masks);
- ``device`` and ``close()``.

``run_chunk`` streams (study id, archive key) items through the loader processes, hands each
batch to ``predict`` and every outcome, failures included, to ``on_results`` once per batch. A
study that cannot be decoded fails alone, with a reason free of its path. A transient fault
while reading (EIO, a stale NFS handle) is not the study's: it ends the chunk with a
TransientError, and the study stays pending for the chunk's retry.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from medq.common.errors import SpecError, TransientError, is_transient, transient_reason
from medq.common.inference.outcome import ChunkStats, StudyOutcome
from medq.common.inference.types import StudyError

GPU_LOADER_PROCESSES = 2


class StudyDecoder:
    """What runs in the loader processes; it must pickle (hold transforms, never a model)."""

    def decode(self, archive: Any, key: str) -> Any:
        """One study, decoded; StudyError (or StudySkipped) names what is wrong, never the file."""
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        """A batch of decoded studies, in order (in the loader process): the list by default."""
        return items


class StudyPredictor:
    """A family's models on one device, and how they turn decoded studies into outcomes."""

    decoder: StudyDecoder
    device: torch.device
    studies_per_batch: int = 1

    def predict(self, study_ids: list[int], batch: Any) -> list[StudyOutcome]:
        """One done (or failed) outcome per study id, in order, for the collated ``batch``."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop the models and give their memory back (a worker lives on after the task)."""

    def name_studies(self, names: dict[int, str]) -> None:
        """Study row id -> its key, for the chunk about to run: what its output files are named
        by (a predictor with an ``outputs`` plan; one without writes no files)."""
        outputs = getattr(self, "outputs", None)
        if outputs is not None:
            outputs.name_studies(names)


def loader_processes(requested: int | None, device: torch.device) -> int:
    """Decoding processes for a chunk: as requested, else 2 beside a GPU (which would otherwise
    wait on PNG/DICOM decoding) and 0 on a CPU device, where the model's own threads already
    use every core and separate decoders only add copies between processes."""
    if requested is not None:
        return requested
    return GPU_LOADER_PROCESSES if device.type == "cuda" else 0


def without_path(message: str, path: str) -> str:
    """The message with the archive path (and its file name) cut out: names can be patients'."""
    name = path.rsplit("/", 1)[-1]
    for text in (path, name):
        if len(text) >= 3:
            message = message.replace(text, "<file>")
    return message


# --- decoding in the loader processes ------------------------------------------------------------


@dataclass
class _Batch:
    positions: list[int]  # of the good studies, in item order
    study_ids: list[int]
    data: Any  # the decoder's collated batch of the good studies (None when there are none)
    failed: list[tuple[int, StudyOutcome]]  # (position, outcome)
    fault: str | None = None  # a transient fault while reading: the chunk ends, its studies stay pending

    def pin_memory(self) -> "_Batch":  # DataLoader calls this when pin_memory=True
        self.data = pin(self.data)
        return self


def pin(value: Any) -> Any:
    """Every tensor in a batch in page-locked memory (tensors, dataclasses, lists, tuples, dicts)."""
    if isinstance(value, torch.Tensor):
        return value.pin_memory()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: pin(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    if isinstance(value, (list, tuple)):
        return type(value)(pin(v) for v in value)
    if isinstance(value, dict):
        return {k: pin(v) for k, v in value.items()}
    return value


@dataclass
class _Decoded:
    position: int
    study_id: int
    item: Any


@dataclass
class _Fault:
    position: int
    reason: str


class _Studies(Dataset):
    """Item k: ``decoder.decode(archive, key)`` of ``items[k]``, or the study's failure."""

    def __init__(self, items: Sequence[tuple[int, str]], archive: Any, decoder: StudyDecoder):
        self.items, self.archive, self.decoder = list(items), archive, decoder

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> _Decoded | _Fault | tuple[int, StudyOutcome]:
        study_id, key = self.items[position]
        try:
            return _Decoded(position, study_id, self.decoder.decode(self.archive, key))
        except StudyError as exc:
            return position, StudyOutcome(study_id, state=exc.state, reason=without_path(str(exc), key))
        except Exception as exc:
            if is_transient(exc):
                return _Fault(position, without_path(transient_reason(exc), key))
            # an unforeseen decoder failure fails this study, not the chunk
            return position, StudyOutcome(study_id, state="failed",
                                          reason=without_path(f"{type(exc).__name__}: {exc}", key))


class _Collate:
    def __init__(self, decoder: StudyDecoder):
        self.decoder = decoder

    def __call__(self, items: list) -> _Batch:
        good = [item for item in items if isinstance(item, _Decoded)]
        faults = [item.reason for item in items if isinstance(item, _Fault)]
        failed = [item for item in items if isinstance(item, tuple)]
        data = self.decoder.collate([item.item for item in good]) if good else None
        return _Batch([item.position for item in good], [item.study_id for item in good], data, failed,
                      faults[0] if faults else None)


# --- one chunk ---------------------------------------------------------------------------------


def run_chunk(
    items: Sequence[tuple[int, str]],
    archive: Any,
    predictor: StudyPredictor,
    loader_workers: int | None,
    on_results: Callable[[list[StudyOutcome]], None],
    should_stop: Callable[[], bool] = lambda: False,
) -> ChunkStats:
    """Predict every (study id, archive key) of ``items``; return the chunk's counts.

    ``predictor.decoder`` runs inside ``loader_workers`` DataLoader worker processes (0: in this
    process; None: ``loader_processes``). ``on_results`` gets each batch's outcomes in item
    order, once per batch; ``should_stop()`` is asked before each batch, and True ends the chunk
    (``stopped``) with the rest unseen. A transient fault while decoding raises TransientError
    after the batches before it were handed on.
    """
    batch_size = int(predictor.studies_per_batch)
    if batch_size < 1:
        raise SpecError(f"studies per batch must be at least 1, got {batch_size}")
    device = predictor.device
    loader = DataLoader(_Studies(items, archive, predictor.decoder), batch_size=batch_size, shuffle=False,
                        num_workers=loader_processes(loader_workers, device), collate_fn=_Collate(predictor.decoder),
                        pin_memory=device.type == "cuda", persistent_workers=False)
    counts = {"done": 0, "failed": 0, "skipped": 0}
    seen = 0
    start = time.perf_counter()
    batches = iter(loader)
    try:
        while not should_stop():
            batch = next(batches, None)
            if batch is None:
                break
            if batch.fault is not None:
                raise TransientError(f"reading the archive: {batch.fault}")
            outcomes = list(batch.failed)
            if batch.study_ids:
                done = predictor.predict(batch.study_ids, batch.data)
                if len(done) != len(batch.study_ids):
                    raise RuntimeError(f"{type(predictor).__name__}.predict gave {len(done)} outcomes for "
                                       f"{len(batch.study_ids)} studies")
                outcomes += zip(batch.positions, done)
            ordered = [outcome for _, outcome in sorted(outcomes, key=lambda pair: pair[0])]
            on_results(ordered)
            for outcome in ordered:
                counts[outcome.state] += 1
            seen += len(ordered)
    finally:
        del batches  # shuts the loader workers down
    seconds = time.perf_counter() - start
    return ChunkStats(done=counts["done"], failed=counts["failed"], skipped=counts["skipped"], seconds=seconds,
                      studies_per_s=counts["done"] / seconds if seconds > 0 else 0.0, stopped=seen < len(items))
