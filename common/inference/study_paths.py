"""What the store keeps of a study's archive path: ``MEDQ_STUDY_PATHS`` and ``MEDQ_PATH_KEY``.

Hospital exports name files after patients (``npy/patient_DOE_JOHN_vol0.npy``). Three modes:

- ``full`` (the default): ``studies.path`` is the archive-relative path as it is, and the study
  key (``path_hash``, what output files are named by) its plain SHA-256 (an anonymised research
  archive);
- ``pseudonymised``: ``studies.path`` is the path with every word that is not a generic one
  (``patient``, ``vol``, ``dcm``, ... ``GENERIC``) and every number of more than four digits
  replaced by a keyed pseudonym (``npy/patient_p1c0e5a7f_p77b0e2d1_vol0.npy``: the same name
  gets the same pseudonym, so one patient's files still group); DICOM UIDs are kept;
- ``none``: ``studies.path`` is empty.

In the last two the study key is an HMAC-SHA256 under the key, and the path itself is kept
only sealed (``studies.sealed_path``: Fernet, AES-128-CBC with HMAC, under a key derived from
``MEDQ_PATH_KEY``) for the worker that reads the file: the store, its backups and every CSV or
report hold no name. The submitter and every worker need the same key; the job's plan records
the mode and the key's fingerprint, and a worker with another key (or none) refuses the job by
name. Losing the key loses nothing done, only the ability to run the job's pending studies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

from medq.common.errors import JobError, SpecError

MODES = ("full", "pseudonymised", "none")
#: the first CSV column's name in each mode: a reader of the file knows what the column holds
COLUMN = {"full": "path", "pseudonymised": "pseudonymised_path", "none": "path_withheld"}
MIN_KEY_CHARS = 16
MAX_KEPT_DIGITS = 4  # instance and slice numbers; longer numbers (record numbers, dates) are pseudonymised

# Words of archive layouts and file names that name no one; every other word is pseudonymised.
GENERIC = frozenset("""
    patient patients study studies series image images img imgs scan scans slice slices vol volume volumes
    frame frames instance instances case cases subject subjects sample samples data dataset archive export
    exports raw processed input inputs output outputs train training test testing val valid validation
    ct cta mr mri cr dx dr us pt nm xa mg ot sr seg rtstruct pr ko dicom dcm dicm ima im npy npz nii gz nifti
    png jpg jpeg tif tiff bmp json txt zip tar tgz chest thorax lung lungs ceph cephalometric skull head
    xray cxr covid lesion lesions mask masks label labels ap pa lat lateral frontal left right axial
    coronal sagittal pre post contrast native sop uid
""".split())
_UID = r"\d+(?:\.\d+){3,}"  # a DICOM UID (kept: the CSV's join key)
_WORD = re.compile(rf"(?P<uid>{_UID})|(?P<word>[^\W_]+)")
_GENERIC_NUMBERED = re.compile(rf"([a-z]+)(\d{{1,{MAX_KEPT_DIGITS}}})")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise SpecError(f"MEDQ_STUDY_PATHS must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def _derive(secret: bytes, purpose: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"medq " + purpose).derive(secret)


def pseudonymise(path: str, key: bytes) -> str:
    """``path`` with each word that may name someone replaced by ``p`` and 8 hex digits of its
    HMAC under ``key`` (case-insensitive: DOE and Doe are one pseudonym); separators, generic
    words, numbers of up to four digits and DICOM UIDs are kept."""

    def replace(match: re.Match) -> str:
        word = match.group("word")
        if word is None or _kept(word.lower()):
            return match.group(0)
        return "p" + hmac.new(key, word.lower().encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:8]

    return _WORD.sub(replace, path)


def _kept(word: str) -> bool:
    if word in GENERIC:
        return True
    if word.isdigit():  # str.isdigit: any script's digits
        return len(word) <= MAX_KEPT_DIGITS
    numbered = _GENERIC_NUMBERED.fullmatch(word)  # vol0, slice0012, im1
    return bool(numbered) and numbered.group(1) in GENERIC


@dataclass(frozen=True)
class StudyPaths:
    """One job's way with its study paths: the key, the shown path, sealing and opening."""

    mode: str = "full"
    secret: bytes = b""

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.mode != "full" and len(self.secret) < MIN_KEY_CHARS:
            raise SpecError(f"MEDQ_STUDY_PATHS={self.mode} needs MEDQ_PATH_KEY (or MEDQ_PATH_KEY_FILE), a secret "
                            f"of at least {MIN_KEY_CHARS} characters shared by the submitter and every worker; "
                            "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")

    @classmethod
    def from_settings(cls, settings: Any) -> "StudyPaths":
        return cls(settings.study_paths, settings.path_key_value().encode("utf-8"))

    @classmethod
    def for_job(cls, job_id: str, plan: dict[str, Any], settings: Any) -> "StudyPaths":
        """The job's mode (from its plan: a job planned before this setting existed is ``full``),
        with this host's key, refused by name where it is not the key the job was planned with."""
        mode = plan.get("study_paths", "full")
        if mode == "full":
            return cls()
        secret = settings.path_key_value().encode("utf-8")
        if len(secret) < MIN_KEY_CHARS:
            raise JobError(f"job {job_id} keeps its study paths sealed (MEDQ_STUDY_PATHS={mode}): this worker "
                           "needs the MEDQ_PATH_KEY the job was submitted with")
        paths = cls(mode, secret)
        if paths.key_id != plan.get("path_key_id"):
            raise JobError(f"job {job_id}: this worker's MEDQ_PATH_KEY is not the key the job was submitted with "
                           f"(fingerprint {paths.key_id}, the job's {plan.get('path_key_id')})")
        return paths

    def plan(self) -> dict[str, str]:
        """What the job's plan records: the mode, and in a keyed mode the key's fingerprint."""
        return {"study_paths": self.mode} | ({"path_key_id": self.key_id} if self.mode != "full" else {})

    @property
    def key_id(self) -> str:
        return _derive(self.secret, b"key fingerprint").hex()[:12]

    @property
    def column(self) -> str:
        return COLUMN[self.mode]

    def hasher(self):
        """``hash(path) -> study key`` (32 hex): plain SHA-256 in ``full``, else an HMAC."""
        if self.mode == "full":
            return plain_hash
        key = _derive(self.secret, b"study keys")
        return lambda path: hmac.new(key, _bytes(path), hashlib.sha256).hexdigest()[:32]

    def shower(self):
        """``shown(path)``: what ``studies.path`` and the CSV hold in this mode."""
        if self.mode == "full":
            return lambda path: path
        if self.mode == "none":
            return lambda path: ""
        key = _derive(self.secret, b"pseudonyms")
        return lambda path: pseudonymise(path, key)

    def sealer(self):
        """``seal(path) -> token`` for ``studies.sealed_path`` (None in ``full``: the path is kept as it is)."""
        if self.mode == "full":
            return lambda path: None
        fernet = self._fernet()
        return lambda path: fernet.encrypt(_bytes(path)).decode("ascii")

    def opener(self):
        """``open(path, sealed) -> the archive path`` for the worker that reads the study."""
        if self.mode == "full":
            return lambda path, sealed: path
        from cryptography.fernet import InvalidToken

        fernet = self._fernet()

        def open_(path: str, sealed: str | None) -> str:
            if sealed is None:
                raise JobError("a study of this job has no sealed path: the store was changed by hand")
            try:
                return fernet.decrypt(sealed.encode("ascii")).decode("utf-8", "surrogateescape")
            except InvalidToken:
                raise JobError("a study's sealed path does not open with this worker's MEDQ_PATH_KEY") from None

        return open_

    def _fernet(self):
        from cryptography.fernet import Fernet

        return Fernet(base64.urlsafe_b64encode(_derive(self.secret, b"sealed study paths")))


def named_columns(columns: list[str], plan: dict[str, Any]) -> list[str]:
    """A job's per-study columns with the path column named after what it holds in the job's
    mode (``path``, ``pseudonymised_path``, ``path_withheld``)."""
    name = COLUMN[plan.get("study_paths", "full")]
    return [name if column == "path" else column for column in columns]


def _bytes(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def plain_hash(path: str) -> str:
    """The study key of ``full`` mode: the first 32 hex digits of the path's SHA-256."""
    return hashlib.sha256(_bytes(path)).hexdigest()[:32]
