"""What every DICOM object medq writes back shares: who made it, stable UIDs, files on disk.

- ``Algorithm``: the model behind an output (job kind, title, medq version, the job that trained
  it, the checkpoint's sha256), as highdicom's Algorithm Identification Sequence (SEG), TID 4019
  Algorithm Identification and a TID 1002 device observer (SR).
- ``checkpoint_digest``: sha256 of the checkpoint file(s), hashed once per worker.
- ``derived_uid``: the same parts always give the same UID, so a study sent again after a crash
  replaces its SEG/SR in the PACS instead of adding a second copy.
- ``header_of``: a source file's dataset without its pixel data, small enough to pickle through a
  DataLoader; highdicom builds SEG and SR from such headers alone.
- ``write_dicom``: a Part 10 file written whole or not at all (``write_atomic``).

Torch-free, and highdicom (0.6 s to import) is imported only by the methods that need it.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, ExplicitVRLittleEndian

from medq.common.atomic_files import write_atomic

if TYPE_CHECKING:
    import highdicom
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

BLOCK = 1024 * 1024
MANUFACTURER = "medq"
HASH_PREFIX = 16  # hex digits of the checkpoint hash named in a DICOM object (LO fields hold 64 characters)
MAX_LO = 64
# Concepts the standard has no code for (lung involvement, "review required") are medq's own,
# in a private coding scheme that each SR declares in its Coding Scheme Identification Sequence.
PRIVATE_SCHEME = "99MEDQ"
# 2.25.<integer of a UUID> (PS3.5 B.2): name-based UUIDs (RFC 4122 version 5) in medq's own namespace
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/medq/dicom-outputs")

_digests: dict[tuple[tuple[str, int, int], ...], str] = {}


@dataclass(frozen=True)
class Algorithm:
    """The model that produced an output. ``family``: the job kind ("segment", "chest", ...);
    ``title``: what a radiologist reads ("CT lesion UNet++"); ``version``: medq's version;
    ``model_job``: the training job's id, when known; ``checkpoint_sha256``: ``checkpoint_digest``."""

    family: str
    title: str
    version: str
    model_job: str | None
    checkpoint_sha256: str

    def __post_init__(self) -> None:
        if len(self.name) > MAX_LO or len(self.version) > MAX_LO:
            raise ValueError(f"algorithm name {self.name!r} or version is over {MAX_LO} characters")

    @property
    def name(self) -> str:
        return f"medq {self.title}"

    @property
    def checkpoint_prefix(self) -> str:
        return self.checkpoint_sha256[:HASH_PREFIX]

    def parameters(self) -> dict[str, str]:
        """What identifies the model beyond its name: the job kind, the training job, the checkpoint."""
        found = {"family": self.family, "checkpoint_sha256": self.checkpoint_prefix}
        if self.model_job is not None:
            found["model_job"] = str(self.model_job)
        return found

    def identification(self) -> "highdicom.AlgorithmIdentificationSequence":
        """Segment Algorithm Identification (SEG): family DCM 123110 "Artificial Intelligence" (CID 7162)."""
        import highdicom as hd
        from pydicom.sr.codedict import codes

        return hd.AlgorithmIdentificationSequence(name=self.name, family=codes.cid7162.ArtificialIntelligence,
                                                  version=self.version, source=MANUFACTURER,
                                                  parameters=self.parameters())

    def sr_identification(self) -> "highdicom.sr.AlgorithmIdentification":
        """TID 4019 Algorithm Identification, for SR measurement groups."""
        import highdicom as hd

        return hd.sr.AlgorithmIdentification(name=self.name, version=self.version,
                                             parameters=[f"{k}={v}" for k, v in self.parameters().items()])

    @property
    def device_uid(self) -> str:
        """The Device Observer UID: one per model (job kind and checkpoint)."""
        return derived_uid("device", self.family, self.checkpoint_sha256)

    def observation_context(self) -> "highdicom.sr.ObservationContext":
        """TID 1001 with a device observer (TID 1004): the model, not a person, made the report."""
        import highdicom as hd
        from pydicom.sr.codedict import codes

        device = hd.sr.DeviceObserverIdentifyingAttributes(
            uid=self.device_uid, name=self.name, manufacturer_name=MANUFACTURER, model_name=self.title,
            serial_number=self.checkpoint_prefix)
        return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device, observer_identifying_attributes=device))

    def equipment(self) -> dict[str, str]:
        """General Equipment of a SEG or SR that this model writes (highdicom's keyword arguments)."""
        return {"manufacturer": MANUFACTURER, "manufacturer_model_name": self.name,
                "software_versions": self.version, "device_serial_number": self.checkpoint_prefix}


def private_code(value: str, meaning: str) -> Code:
    """A concept of medq's private coding scheme (99MEDQ)."""
    return Code(value, PRIVATE_SCHEME, meaning)


def private_scheme() -> "CodingSchemeIdentificationItem":
    """The item naming the 99MEDQ scheme in an SR's Coding Scheme Identification Sequence."""
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return CodingSchemeIdentificationItem(designator=PRIVATE_SCHEME, name="medq private codes",
                                          responsible_organization=MANUFACTURER)


def checkpoint_digest(paths: Path | str | Iterable[Path | str]) -> str:
    """sha256 (hex) of the contents of one checkpoint file, or of several read one after the other
    in the order given, streamed in 1 MiB blocks. Remembered by (path, size, mtime) for the life
    of the process: a worker reads each checkpoint once, and a rewritten one again."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("checkpoint_digest needs at least one checkpoint file")
    key = tuple(_file_key(Path(p)) for p in paths)
    if key not in _digests:
        digest = hashlib.sha256()
        for path, _, _ in key:
            with open(path, "rb") as handle:
                while block := handle.read(BLOCK):
                    digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def derived_uid(*parts: str) -> str:
    """A valid DICOM UID (2.25.<decimal UUID>, at most 44 characters) that depends only on
    ``parts``: ``derived_uid(job, study, "seg-series")`` is the same in every attempt.
    (pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` ignores its entropy and is random.)"""
    if not parts or not all(isinstance(p, str) and p for p in parts):
        raise ValueError("derived_uid needs one or more non-empty strings")
    return UID(f"2.25.{uuid.uuid5(UID_NAMESPACE, json.dumps(list(parts))).int}")


def header_of(data: bytes) -> Dataset:
    """The dataset of one DICOM file without its pixel data (``stop_before_pixels``), file meta
    included; raises StudyError, as decoding does, for a file pydicom cannot read. A plain
    Dataset: pydicom's FileDataset keeps the whole file's bytes (its ``buffer``), and pickles them."""
    from medq.common.inference.dicom import _quiet, _read, plain_header

    with _quiet():
        return plain_header(_read(data, stop_before_pixels=True))


def write_dicom(path: Path, dataset: Dataset) -> Path:
    """``dataset`` as a DICOM Part 10 file at ``path``, atomically. A missing file meta is filled
    in place (the dataset's SOP class and instance, explicit VR little endian unless its
    TransferSyntaxUID says otherwise); pydicom checks the encoding against it."""
    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        meta = dataset.file_meta = FileMetaDataset()
    meta.TransferSyntaxUID = meta.get("TransferSyntaxUID") or ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)  # encoded before the file is opened: no half file on error
    return write_atomic(Path(path), lambda handle: handle.write(buffer.getbuffer()), needed=buffer.tell())
