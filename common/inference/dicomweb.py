"""A PACS over DICOMweb (dicomweb-client): the studies of a QIDO-RS query as an archive whose
``read`` is a WADO-RS retrieve, and STOW-RS to store outputs back.

``DicomWebArchive`` finds the instances of every series a query matches (QIDO-RS, all pages)
when a job is planned, and retrieves one instance per ``read`` inside the chunk task that
processes it: nothing is copied up front. An entry's path is ``<study>/<series>/<instance>``
UIDs, which are the join key the store may keep (never a patient name or ID). ``series_of``
tells a CT family which series an entry belongs to, and its modality, without a retrieve.

Every request goes through ``PacsClient.call``: a refused connection, a timeout or an answer
of 408/429/5xx is tried again with exponential backoff (``MEDQ_PACS_ATTEMPTS``,
``MEDQ_PACS_BACKOFF``); what still fails is a ``PacsError`` whose reason names the HTTP status
or the fault, never the credentials. Credentials come from settings (``MEDQ_PACS_USERNAME``,
``MEDQ_PACS_PASSWORD`` or ``MEDQ_PACS_PASSWORD_FILE``); a URL carrying them is refused.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import parse_qsl, urlsplit

from medq.common.errors import DataError, SpecError
from medq.common.inference.archive import Archive
from medq.common.inference.types import ArchiveUnavailable, Entry, StudyError, StudySkipped

T = TypeVar("T")
RETRIED_STATUS = (408, 429, 500, 502, 503, 504)
SCHEMES = ("http", "https")
# query keys that name a patient or a visit: refused, since the query is stored with the job
IDENTIFYING = ("Patient", "OtherPatient", "AccessionNumber", "IssuerOfPatient", "ReferringPhysician",
               "RequestingPhysician", "PerformingPhysician", "OperatorsName", "AdmissionID")
INSTANCE_FIELDS = ("SOPInstanceUID",)
SERIES_FIELDS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality")
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # its debug lines carry request headers


class PacsError(StudyError):
    """A PACS request that failed after its retries; the reason names the status or fault.
    ``outage``: the PACS (or the way to it, or the login) failed, not the one object asked for:
    a refused connection, a timeout, 5xx, 401/403; a 404 is about the object."""

    def __init__(self, message: str, outage: bool = False):
        super().__init__(message)
        self.outage = outage


def is_dicomweb_url(location: str) -> bool:
    return urlsplit(str(location)).scheme.lower() in SCHEMES


def check_url(url: str, option: str) -> str:
    """The URL without a trailing slash; SpecError for another scheme or embedded credentials."""
    parts = urlsplit(url)
    if parts.username or parts.password or "@" in parts.netloc:  # said without echoing the URL
        raise SpecError(f"{option}: the URL carries credentials; give them as MEDQ_PACS_USERNAME and "
                        "MEDQ_PACS_PASSWORD (or MEDQ_PACS_PASSWORD_FILE) instead")
    if parts.scheme.lower() not in SCHEMES or not parts.hostname:
        raise SpecError(f"{option} {url!r}: not an http(s) DICOMweb URL (e.g. http://pacs:8042/dicom-web)")
    if parts.query:
        raise SpecError(f"{option}: put the search in --query, not in the URL")
    return url.rstrip("/")


def parse_query(text: str | None) -> dict[str, str]:
    """'Modality=CT&StudyDate=20261130-20261201' -> QIDO search filters; every key must be a
    DICOM keyword (SpecError naming the bad ones)."""
    from pydicom.datadict import tag_for_keyword

    if not text:
        return {}
    pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False)
    if not pairs:
        raise SpecError(f"--query {text!r}: expected KEYWORD=VALUE pairs joined by '&'")
    bad = [key for key, _ in pairs if tag_for_keyword(key) is None]
    if bad:
        raise SpecError(f"--query: not DICOM attribute keywords: {', '.join(bad)} "
                        "(e.g. Modality, StudyDate, StudyDescription, StudyInstanceUID)")
    identifying = [key for key, _ in pairs if key.startswith(IDENTIFYING)]
    if identifying:
        raise SpecError(f"--query {', '.join(identifying)}: identifies a patient, and the query is kept with the job; "
                        "medq keeps no patient identifiers. Query by date, modality, description or UID")
    return dict(pairs)


@dataclass(frozen=True)
class PacsAccess:
    """How to reach a PACS: credentials and patience (from settings; the password never printed)."""

    username: str = ""
    password: str = ""
    timeout_s: float = 30.0
    attempts: int = 3
    backoff_s: float = 1.0

    def __repr__(self) -> str:
        return f"PacsAccess(username={self.username!r}, password={'***' if self.password else ''!r})"

    @classmethod
    def from_settings(cls, settings: Any) -> "PacsAccess":
        password = settings.pacs_password
        if not password and settings.pacs_password_file:
            from medq.common.secrets import read_secret_file

            password = read_secret_file(settings.pacs_password_file, "MEDQ_PACS_PASSWORD_FILE")
        return cls(settings.pacs_username, password, float(settings.pacs_timeout), int(settings.pacs_attempts),
                   float(settings.pacs_backoff))


class PacsClient:
    """One DICOMweb service (dicomweb-client), its requests retried (see the module)."""

    def __init__(self, url: str, access: PacsAccess, sleep: Callable[[float], None] = time.sleep):
        from dicomweb_client.api import DICOMwebClient
        from dicomweb_client.session_utils import create_session, create_session_from_user_pass

        self.url, self.access, self.sleep = url, access, sleep
        session = (create_session_from_user_pass(access.username, access.password) if access.username
                   else create_session())
        self.client = DICOMwebClient(url, session=session, timeout=access.timeout_s)
        self.client.set_http_retry_params(retry=False)  # call() retries, for faults too

    def call(self, what: str, request: Callable[[Any], T]) -> T:
        """``request(client)``, tried ``attempts`` times; PacsError("<what>: <reason>") after."""
        import requests

        reason, tries, outage = "", 0, True
        for attempt in range(max(1, self.access.attempts)):
            tries += 1
            if attempt:
                self.sleep(self.access.backoff_s * 2 ** (attempt - 1))
            try:
                return request(self.client)
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                reason = f"HTTP {status} {getattr(exc.response, 'reason', '') or ''}".strip()
                if status in (401, 403):
                    reason += " (check MEDQ_PACS_USERNAME and MEDQ_PACS_PASSWORD)"
                if status not in RETRIED_STATUS:
                    outage = status in (401, 403)
                    break
            except requests.Timeout:
                reason = f"no answer within {self.access.timeout_s:g} s"
            except requests.ConnectionError:
                reason = "cannot connect"
            except requests.RequestException as exc:
                reason, outage = type(exc).__name__, False
                break
        raise PacsError(f"{what}: {reason}" + (f" (after {tries} attempts)" if tries > 1 else ""), outage)


def _value(item: dict, keyword: str) -> str:
    """A value of a QIDO JSON result by keyword ('' when absent)."""
    from pydicom.datadict import tag_for_keyword

    element = item.get(f"{tag_for_keyword(keyword):08X}") or {}
    values = element.get("Value") or [""]
    return str(values[0])


class DicomWebArchive(Archive):
    """The instances of a QIDO-RS query as an archive (see the module)."""

    kind = "dicomweb"

    def __init__(self, url: str, query: dict[str, str], access: PacsAccess, max_bytes: int):
        self.root, self.url, self.query, self.access, self.max_bytes = url, url, dict(query), access, max_bytes
        self._client: PacsClient | None = None
        self._series: dict[tuple[str, str], str] = {}  # (study, series) -> modality, filled by entries()

    def __getstate__(self) -> dict:  # DataLoader workers build their own session
        return {**self.__dict__, "_client": None}

    def __repr__(self) -> str:
        return f"DicomWebArchive({self.url!r})"

    @property
    def client(self) -> PacsClient:
        if self._client is None:
            self._client = PacsClient(self.url, self.access)
        return self._client

    def check(self) -> None:
        """One QIDO request before anything is planned: the PACS answers and accepts the query."""
        try:
            self.client.call("querying it", lambda c: c.search_for_series(search_filters=self.query, limit=1))
        except PacsError as exc:
            raise SpecError(f"PACS {self.url}: {exc}") from None

    def series(self) -> Iterator[tuple[str, str, str]]:
        """(study, series, modality) of every series the query matches, all pages."""
        found = self.client.call("searching for series", lambda c: c.search_for_series(
            search_filters=self.query, fields=list(SERIES_FIELDS), get_remaining=True))
        for item in sorted(found, key=lambda i: (_value(i, "StudyInstanceUID"), _value(i, "SeriesInstanceUID"))):
            yield _value(item, "StudyInstanceUID"), _value(item, "SeriesInstanceUID"), _value(item, "Modality")

    def entries(self) -> Iterator[Entry]:
        try:
            for study, series, modality in self.series():
                self._series[(study, series)] = modality.upper()
                found = self.client.call("searching for instances", lambda c: c.search_for_instances(
                    study_instance_uid=study, series_instance_uid=series, fields=list(INSTANCE_FIELDS),
                    get_remaining=True))
                for sop in sorted(_value(item, "SOPInstanceUID") for item in found):
                    yield Entry(f"{study}/{series}/{sop}", 0)
        except PacsError as exc:
            raise DataError(f"PACS {self.url}: {exc}") from None

    def series_of(self, path: str) -> tuple[str, str]:
        """(study, series) of an entry, from the query's answers; StudySkipped for a series that
        is not CT (a segmentation model reads CT only)."""
        study, series, _ = _split(path)
        modality = self._series.get((study, series), "")
        if modality and modality != "CT":
            raise StudySkipped(f"modality {modality}, not CT")
        return study, series

    def read(self, path: str) -> bytes:
        """The instance, retrieved by WADO-RS, as the bytes of a DICOM file."""
        study, series, sop = _split(path)
        try:
            dataset = self.client.call("retrieving the instance from the PACS", lambda c: c.retrieve_instance(
                study_instance_uid=study, series_instance_uid=series, sop_instance_uid=sop))
        except PacsError as exc:
            if exc.outage:  # not this study's fault: the chunk is held and tried again later
                raise ArchiveUnavailable(str(exc)) from None
            raise
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        if len(data) > self.max_bytes:
            raise StudyError(f"the instance is {len(data)} bytes, above MEDQ_MAX_STUDY_BYTES ({self.max_bytes})")
        return data


def _split(path: str) -> tuple[str, str, str]:
    parts = path.split("/")
    if len(parts) != 3 or not all(parts):
        raise StudyError("not a PACS instance key (<study>/<series>/<instance> UIDs)")
    return parts[0], parts[1], parts[2]


def open_dicomweb(url: str, query: str | None, settings: Any, check: bool = True) -> DicomWebArchive:
    archive = DicomWebArchive(check_url(url, "--pacs"), parse_query(query), PacsAccess.from_settings(settings),
                              settings.max_study_bytes)
    if check:
        archive.check()
    return archive
