"""What the store keeps of a study's archive path: ``MEDQ_STUDY_PATHS`` and ``MEDQ_PATH_KEY``.

Hospital exports name files after patients (``npy/patient_DOE_JOHN_vol0.npy``). Three modes:

- ``full`` (the default): ``studies.path`` is the archive-relative path as it is, and the study
  key (``path_hash``, what output files are named by) its plain SHA-256 (an anonymised research
  archive);
- ``pseudonymised``: ``studies.path`` is the path with every word that is not a generic one
  (``patient``, ``vol``, ``dcm``, ... ``GENERIC``) and every number of more than four digits
  replaced by a keyed pseudonym (``npy/patient_p1c0e5a7f09b2_p77b0e2d1c4a_vol0.npy``: the same name
  gets the same pseudonym, so one patient's files still group); DICOM UIDs are kept;
- ``none``: ``studies.path`` is empty.

In the last two the study key is an HMAC-SHA256 under the key, and the path itself is kept
only sealed (``studies.sealed_path``: Fernet, AES-128-CBC with HMAC, under a key derived from
``MEDQ_PATH_KEY``) for the worker that reads the file: the store, its backups and every CSV or
report hold no name. The submitter and every worker need the same key; the job's plan records
the mode and the key's fingerprint, and a worker with another key (or none) hands the chunk back
(a transient fault: retried, then failed naming the key). Losing the key loses nothing done,
only the ability to run the job's pending studies. The job's ``--archive`` location itself is
kept as given: name it after a date or a batch, not a patient.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from medq.common.errors import JobError, SpecError, TransientError

MODES = ("full", "pseudonymised", "none")
#: the first CSV column's name in each mode: a reader of the file knows what the column holds
COLUMN = {"full": "path", "pseudonymised": "pseudonymised_path", "none": "path_withheld"}
MIN_KEY_CHARS = 32  # secrets.token_urlsafe(32) gives 43; a database dump must not be a guessing oracle
MAX_KEPT_DIGITS = 4  # instance and slice numbers; longer numbers (record numbers, dates) are pseudonymised
PSEUDONYM_HEX = 12  # 48 bits: distinct names do not collide into one pseudonym before millions of words

# Words of archive layouts and file names that name no one; every other word is pseudonymised.
# Words that are also names (Ko, Im, Post, Head, Case, Val) are not here: they are kept only
# with a number after them (IM0001, case12), in NUMBERED.
GENERIC = frozenset("""
    patient patients study studies series image images img imgs scan scans slice slices vol volume volumes
    frame frames instance instances cases subject subjects data dataset archive export
    exports raw processed input inputs output outputs train training test testing valid validation
    ct cta mr mri cr dx dr us pt nm xa mg ot sr seg rtstruct pr dicom dcm dicm npy npz nii gz nifti
    png jpg jpeg tif tiff bmp json txt zip tar tgz chest thorax lung lungs ceph cephalometric skull
    xray cxr covid lesion lesions mask masks label labels ap pa lat lateral frontal left right axial
    coronal sagittal pre contrast native sop uid
""".split())
NUMBERED = GENERIC | {"im", "ima", "case", "sample", "val", "se", "ser"}
# A DICOM UID (kept: the CSV's join key): a root of 0, 1 or 2, then at least two more parts
# without leading zeros, ten characters or more (2.25.<uuid>; not a date such as 2.3.2026). Any other run of digits joined by - . or spaces (a date, a phone or
# social security number) is one token, pseudonymised when it holds more than MAX_KEPT_DIGITS;
# so are dates written as folders (2026/11/30), where each folder alone would be a short number.
_UID = r"(?<![\d.])(?=[\d.]{10})[012](?:\.(?:0|[1-9]\d*)){2,}(?![\d])"
_DATE = r"\d{4}/\d{1,2}/\d{1,2}(?!\d)|\d{1,2}/\d{1,2}/\d{4}(?!\d)"  # a date as folders: 2026/11/30
_NUMBERS = r"\d+(?:[-. ]\d+)+"
_NUMBER = re.compile(r"\d+(?:[-./ ]\d+)*")
_WORD = re.compile(rf"(?P<uid>{_UID})|(?P<word>{_DATE}|{_NUMBERS}|[^\W_]+)")
_GENERIC_NUMBERED = re.compile(rf"([a-z]+)(\d{{1,{MAX_KEPT_DIGITS}}})")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise SpecError(f"MEDQ_STUDY_PATHS must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


@lru_cache(maxsize=4)
def _stretched(secret: bytes) -> bytes:
    """The key stretched by scrypt (about 0.1 s, 16 MiB), once per process: each guess at a
    weak key, checked against a fingerprint or a sealed path in a database dump, costs as much."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=b"medq study paths", length=32, n=2**14, r=8, p=1).derive(secret)


def _derive(secret: bytes, purpose: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"medq " + purpose).derive(_stretched(secret))


def pseudonymise(path: str, key: bytes) -> str:
    """``path`` with each word that may name someone replaced by ``p`` and 12 hex digits of its
    HMAC under ``key`` (case-insensitive: DOE and Doe are one pseudonym); separators, generic
    words, numbers of up to four digits and DICOM UIDs are kept."""

    def replace(match: re.Match) -> str:
        word = match.group("word")
        if word is None or _kept(word.lower()):
            return match.group(0)
        digest = hmac.new(key, word.lower().encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
        return "p" + digest[:PSEUDONYM_HEX]

    return _WORD.sub(replace, path)


def _kept(word: str) -> bool:
    if word in GENERIC:
        return True
    if _NUMBER.fullmatch(word):  # 0001, 12.5; not 1975-03-14, 123-45-6789, 20260101 (any script's digits)
        return sum(c.isdigit() for c in word) <= MAX_KEPT_DIGITS
    numbered = _GENERIC_NUMBERED.fullmatch(word)  # vol0, slice0012, IM0001
    return bool(numbered) and numbered.group(1) in NUMBERED


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
        with this host's key. A worker without the job's key is a fault of that worker, not of the
        job: TransientError, so the chunk is handed back and retried (by a worker with the key)
        and fails with the reason only after its retries."""
        mode = plan.get("study_paths", "full")
        if mode == "full":
            return cls()
        secret = settings.path_key_value().encode("utf-8")
        if len(secret) < MIN_KEY_CHARS:
            raise TransientError(f"job {job_id} keeps its study paths sealed (MEDQ_STUDY_PATHS={mode}): this "
                                 "worker needs the MEDQ_PATH_KEY the job was submitted with")
        paths = cls(mode, secret)
        if paths.key_id != plan.get("path_key_id"):
            raise TransientError(f"job {job_id}: this worker's MEDQ_PATH_KEY is not the key the job was submitted "
                                 f"with (fingerprint {paths.key_id}, the job's {plan.get('path_key_id')})")
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
