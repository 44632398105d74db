"""Where an inference job's studies come from: a path (folder, zip, tar: ``archive.py``) or a
PACS's DICOMweb URL with a QIDO-RS query (``dicomweb.py``). One function for the submitter and
the chunk tasks, so both read the same studies the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medq.common.errors import SpecError
from medq.common.inference.archive import Archive, open_archive
from medq.common.inference.dicomweb import is_dicomweb_url, open_dicomweb


def open_source(location: str, settings: Any, query: str | None = None, check: bool = True) -> Archive:
    """The archive at ``location``; DataError/SpecError naming it when it cannot be read.
    ``check``: ask a PACS once before anything is planned (a chunk task does not: a PACS away
    for a while fails the studies it cannot retrieve, each with the reason)."""
    if is_dicomweb_url(location):
        return open_dicomweb(location, query, settings, check)
    if "://" in str(location):  # a URL of another kind: refused without echoing what it may carry
        from medq.common.inference.dicomweb import check_url

        check_url(str(location), "--pacs")
    if query:
        raise SpecError("--query searches a PACS: give it with --pacs URL, not with --archive")
    return open_archive(Path(location), settings.max_study_bytes)
