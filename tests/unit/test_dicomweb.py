"""The DICOMweb client's pieces against a real local HTTP server: what is retried, what is not,
what a user reads, and what a PACS URL or query may hold."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medq.common.errors import SpecError
from medq.common.inference.dicomweb import PacsAccess, PacsClient, PacsError, check_url, parse_query


class Scripted(BaseHTTPRequestHandler):
    """Answers each GET with the next status of ``script`` (a number, or "slow": no answer for 2 s)."""

    script: list = []
    seen: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).seen.append(self.path)
        step = type(self).script.pop(0) if type(self).script else 200
        if step == "slow":
            time.sleep(2)
            step = 200
        body = b"[]"
        self.send_response(step)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a client that timed out closed its end: expected
        pass


@pytest.fixture
def server():
    httpd = QuietServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Scripted.seen = []
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}/dicom-web"
    httpd.shutdown()


def client(url: str, attempts: int = 3, timeout: float = 5.0) -> PacsClient:
    waits: list[float] = []
    made = PacsClient(url, PacsAccess(timeout_s=timeout, attempts=attempts, backoff_s=0.5), sleep=waits.append)
    made.waits = waits
    return made


def search(c):
    return c.search_for_series(search_filters={"Modality": "CT"})


def test_a_pacs_error_of_the_server_is_tried_again_with_a_growing_wait(server):
    _, url = server
    Scripted.script = [500, 503]
    pacs = client(url)
    assert pacs.call("querying", search) == []
    assert len(Scripted.seen) == 3 and pacs.waits == [0.5, 1.0]  # backoff doubles


def test_a_refusal_is_not_tried_again_and_says_what_the_pacs_answered(server):
    _, url = server
    Scripted.script = [404]
    with pytest.raises(PacsError, match=r"^querying: HTTP 404 Not Found$"):
        client(url).call("querying", search)
    assert len(Scripted.seen) == 1
    Scripted.script = [401]
    with pytest.raises(PacsError, match="HTTP 401 Unauthorized .check MEDQ_PACS_USERNAME and MEDQ_PACS_PASSWORD"):
        client(url).call("querying", search)


def test_a_pacs_that_keeps_failing_or_does_not_answer_gives_up_with_the_reason(server):
    _, url = server
    Scripted.script = [500, 500, 500]
    with pytest.raises(PacsError, match=r"HTTP 500 Internal Server Error \(after 3 attempts\)"):
        client(url).call("querying", search)
    Scripted.script = ["slow", "slow"]
    with pytest.raises(PacsError, match=r"no answer within 0.3 s \(after 2 attempts\)"):
        client(url, attempts=2, timeout=0.3).call("querying", search)
    with pytest.raises(PacsError, match=r"cannot connect \(after 2 attempts\)"):
        client("http://127.0.0.1:9/dicom-web", attempts=2).call("querying", search)


def test_urls_with_credentials_or_queries_and_unknown_query_keys_are_refused():
    assert check_url("http://pacs:8042/dicom-web/", "--pacs") == "http://pacs:8042/dicom-web"
    with pytest.raises(SpecError, match="carries credentials; give them as MEDQ_PACS_USERNAME") as refused:
        check_url("http://admin:hunter2@pacs/dicom-web", "--send-to")
    assert "hunter2" not in str(refused.value)
    for bad in ("ftp://pacs/x", "pacs:8042", "http:///dicom-web"):
        with pytest.raises(SpecError, match="not an http"):
            check_url(bad, "--pacs")
    with pytest.raises(SpecError, match="put the search in --query"):
        check_url("http://pacs/dicom-web?Modality=CT", "--pacs")
    assert parse_query("Modality=CT&StudyDate=20261130-20261201") == {"Modality": "CT", "StudyDate": "20261130-20261201"}
    with pytest.raises(SpecError, match="not DICOM attribute keywords: Modalty, Datum"):
        parse_query("Modalty=CT&Datum=2026")
    assert parse_query(None) == {}


def test_credentials_are_never_in_a_repr():
    access = PacsAccess("medq", "s3cret-pw")
    assert "s3cret-pw" not in repr(access)
    from medq.common.settings import load_settings

    assert "s3cret-pw" not in repr(load_settings({"MEDQ_PACS_PASSWORD": "s3cret-pw", "MEDQ_REDIS_PASSWORD": "s3cret-pw"}))


def test_a_pacs_outage_while_reading_is_the_chunk_s_to_retry_and_a_lost_instance_the_study_s(server):
    from medq.common.inference.dicomweb import DicomWebArchive
    from medq.common.inference.types import ArchiveUnavailable, StudyError

    _, url = server
    archive = DicomWebArchive(url, {}, PacsAccess(attempts=2, backoff_s=0.0), 1 << 20)
    Scripted.script = [503, 503]
    with pytest.raises(ArchiveUnavailable, match=r"HTTP 503 Service Unavailable \(after 2 attempts\)"):
        archive.read("1.2/3.4/5.6")  # transient: the chunk is held and tried again, the study stays pending
    Scripted.script = [404]
    with pytest.raises(StudyError, match="HTTP 404 Not Found") as lost:
        archive.read("1.2/3.4/5.6")
    assert not isinstance(lost.value, ArchiveUnavailable)  # this study fails alone


def test_patient_identifiers_in_a_query_and_credentials_in_any_url_are_refused_without_echo():
    from medq.common.inference.sources import open_source
    from medq.common.settings import load_settings

    for key in ("PatientName", "PatientID", "AccessionNumber", "OtherPatientIDs"):
        with pytest.raises(SpecError, match=f"{key}: identifies a patient"):
            parse_query(f"{key}=DOE^JOHN")
    for url in ("dicomweb://u:hunter2@pacs/x", "ftp://u:hunter2@host/x"):
        with pytest.raises(SpecError) as refused:
            open_source(url, load_settings({}))
        assert "hunter2" not in str(refused.value) and "carries credentials" in str(refused.value)
