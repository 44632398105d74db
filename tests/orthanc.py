"""A real Orthanc PACS for the tests: Debian's ``orthanc`` with its DICOMweb plugin
(``orthanc-dicomweb``), on a free loopback port with its own storage folder and HTTP basic
authentication, started and stopped by the test (and restartable on the same port and storage)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import requests

from tests.conftest import free_port, unavailable

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "medq", "pacs-secret-3141"


class Orthanc:
    def __init__(self, folder: Path):
        self.binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
        if self.binary is None or not PLUGIN.exists():
            unavailable("Orthanc and its DICOMweb plugin are not installed (Debian: orthanc orthanc-dicomweb)")
        self.folder, self.port, self.proc = Path(folder), free_port(), None
        (self.folder / "db").mkdir(parents=True, exist_ok=True)
        self.config = self.folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "medq-test", "StorageDirectory": str(self.folder / "db"), "IndexDirectory": str(self.folder / "db"),
            "HttpPort": self.port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StableAge": 1,
        }))
        self.session = requests.Session()
        self.session.auth = (USER, PASSWORD)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def env(self) -> dict[str, str]:
        """The settings a medq process needs to log in."""
        return {"pacs_username": USER, "pacs_password": PASSWORD, "pacs_backoff": "0.2"}

    def start(self) -> "Orthanc":
        self.proc = subprocess.Popen([self.binary, str(self.config)], cwd=self.folder,
                                     stdout=open(self.folder / "orthanc.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.session.get(f"{self.url}/system", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            assert self.proc.poll() is None, (self.folder / "orthanc.log").read_text()[-3000:]
            time.sleep(0.1)
        raise AssertionError("Orthanc did not answer in 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def upload(self, path: Path) -> str:
        """Store one DICOM file through Orthanc's REST API; its Orthanc instance id."""
        answer = self.session.post(f"{self.url}/instances", data=Path(path).read_bytes(), timeout=30)
        answer.raise_for_status()
        return answer.json()["ID"]

    def series_of_modality(self, modality: str) -> list[dict]:
        """QIDO-RS: every series of this modality (the JSON of each)."""
        answer = self.session.get(f"{self.dicomweb}/series", params={"Modality": modality}, timeout=30)
        answer.raise_for_status()
        return answer.json() if answer.content else []

    def instances_of_modality(self, modality: str) -> list[str]:
        """The SOP Instance UIDs of every instance of this modality (Orthanc's own find)."""
        answer = self.session.post(f"{self.url}/tools/find", json={
            "Level": "Instance", "Query": {"Modality": modality}, "Expand": True}, timeout=30)
        answer.raise_for_status()
        return [item["MainDicomTags"]["SOPInstanceUID"] for item in answer.json()]

    def retrieve(self, sop_uid: str):
        """One instance by its SOP Instance UID, as a pydicom dataset (Orthanc's REST file)."""
        import io

        import pydicom

        found = self.session.post(f"{self.url}/tools/find", json={
            "Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}}, timeout=30).json()
        assert len(found) == 1, f"{len(found)} instances with SOP Instance UID {sop_uid}"
        data = self.session.get(f"{self.url}/instances/{found[0]}/file", timeout=30).content
        return pydicom.dcmread(io.BytesIO(data))
