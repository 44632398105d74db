"""A private Orthanc PACS (Debian's ``orthanc`` with its DICOMweb plugin) on a free loopback port
with its own storage folder, for `medq bench pacs` and the tests: started, stopped, restartable
on the same port and storage. HTTP basic authentication with the given user, when given."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_binary() -> str | None:
    found = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    return found if found and PLUGIN.exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateOrthanc:
    def __init__(self, folder: Path, user: str = "", password: str = ""):
        import requests

        self.binary = orthanc_binary()
        if self.binary is None:
            raise RuntimeError("Orthanc and its DICOMweb plugin are not installed (Debian: orthanc orthanc-dicomweb)")
        self.folder, self.port, self.proc = Path(folder), _free_port(), None
        (self.folder / "db").mkdir(parents=True, exist_ok=True)
        self.config = self.folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "medq-private", "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"), "HttpPort": self.port, "DicomServerEnabled": False,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(user),
            "RegisteredUsers": {user: password} if user else {}, "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StableAge": 1,
        }))
        self.session = requests.Session()
        if user:
            self.session.auth = (user, password)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout: float = 30) -> "PrivateOrthanc":
        import requests

        self.proc = subprocess.Popen([self.binary, str(self.config)], cwd=self.folder,
                                     stdout=open(self.folder / "orthanc.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.session.get(f"{self.url}/system", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("Orthanc stopped at start: " + (self.folder / "orthanc.log").read_text()[-2000:])
            time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer in {timeout:.0f} s")

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
        answer = self.session.post(f"{self.url}/instances", data=Path(path).read_bytes(), timeout=60)
        answer.raise_for_status()
        return answer.json()["ID"]

    def instances_of_modality(self, modality: str) -> list[str]:
        """The SOP Instance UIDs of every instance of this modality."""
        answer = self.session.post(f"{self.url}/tools/find", json={
            "Level": "Instance", "Query": {"Modality": modality}, "Expand": True}, timeout=60)
        answer.raise_for_status()
        return [item["MainDicomTags"]["SOPInstanceUID"] for item in answer.json()]

    def retrieve(self, sop_uid: str):
        """One instance by its SOP Instance UID, as a pydicom dataset."""
        import io

        import pydicom

        found = self.session.post(f"{self.url}/tools/find", json={
            "Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}}, timeout=60).json()
        if len(found) != 1:
            raise AssertionError(f"{len(found)} instances with SOP Instance UID {sop_uid}")
        data = self.session.get(f"{self.url}/instances/{found[0]}/file", timeout=60).content
        return pydicom.dcmread(io.BytesIO(data))
