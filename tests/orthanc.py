"""A real Orthanc PACS for the tests (``medq.scheduler.orthanc.PrivateOrthanc``) with HTTP basic
authentication; a test is skipped without Orthanc on a developer's machine and fails in CI."""

from __future__ import annotations

from pathlib import Path

from medq.scheduler.orthanc import PrivateOrthanc, orthanc_binary
from tests.conftest import unavailable

USER, PASSWORD = "medq", "pacs-secret-3141"


class Orthanc(PrivateOrthanc):
    def __init__(self, folder: Path):
        if orthanc_binary() is None:
            unavailable("Orthanc and its DICOMweb plugin are not installed (Debian: orthanc orthanc-dicomweb)")
        super().__init__(folder, USER, PASSWORD)

    @property
    def env(self) -> dict[str, str]:
        """The settings a medq process needs to log in."""
        return {"pacs_username": USER, "pacs_password": PASSWORD, "pacs_backoff": "0.2"}
