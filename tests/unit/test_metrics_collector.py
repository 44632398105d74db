"""The metrics collector on a real SQLite store and the embedded broker, with NVML faked (no GPU
here): Prometheus names and units, GPUs present and absent, a store that is away, and the
health endpoints."""

from __future__ import annotations

import types
import urllib.error
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from medq.common import gpus
from medq.common.settings import load_settings
from medq.common.store import Store, admission, jobs
from medq.workers.metrics import MedqCollector, make_registry, serve


class FakeNvml(types.SimpleNamespace):
    """pynvml's calls for two GPUs; the second supports no power reading (NVML_ERROR_NOT_SUPPORTED)."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self):
        super().__init__(
            nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 2, nvmlSystemGetDriverVersion=lambda: "550.54",
            nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetName=lambda h: b"NVIDIA H200",
            nvmlDeviceGetUUID=lambda h: f"GPU-{h}",
            nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=[87, 3][h]),
            nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=[40 * 2**30, 2**30][h], total=141 * 2**30),
            nvmlDeviceGetTemperature=lambda h, sensor: [71, 35][h],
            nvmlDeviceGetPowerUsage=self._power)

    @staticmethod
    def _power(handle):
        if handle == 1:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return 612_500  # milliwatts


@pytest.fixture
def fake_nvml(monkeypatch):
    monkeypatch.setitem(gpus._state, "tried", True)
    monkeypatch.setitem(gpus._state, "nvml", FakeNvml())


@pytest.fixture
def setup(tmp_path):
    from medq.tasks.app import make_app

    settings = load_settings({"MEDQ_HOME": str(tmp_path)})
    store = Store(settings.resolved_database_url)
    store.ensure_schema()
    yield store, make_app(settings), settings
    store.dispose()


def _samples(collector):
    text = generate_latest(make_registry(collector)).decode()
    return text, {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for f in text_string_to_metric_families(text) for s in f.samples}


def test_gpus_read_through_nvml_in_base_units_and_an_unsupported_reading_left_out(setup, fake_nvml):
    store, app, settings = setup
    text, samples = _samples(MedqCollector(store, app, settings, cluster=False))
    first = (("gpu", "0"), ("model", "NVIDIA H200"))
    assert samples[("medq_gpu_utilization_ratio", first)] == 0.87
    assert samples[("medq_gpu_memory_used_bytes", first)] == 40 * 2**30
    assert samples[("medq_gpu_memory_total_bytes", first)] == 141 * 2**30
    assert samples[("medq_gpu_temperature_celsius", first)] == 71
    assert samples[("medq_gpu_power_watts", first)] == 612.5
    assert ("medq_gpu_power_watts", (("gpu", "1"), ("model", "NVIDIA H200"))) not in samples
    assert ("medq_gpu_temperature_celsius", (("gpu", "1"), ("model", "NVIDIA H200"))) in samples
    assert "medq_store_up" not in text, "cluster-wide series are off on this endpoint"


def test_no_nvml_means_no_gpu_series_and_no_error(setup, monkeypatch):
    store, app, settings = setup
    monkeypatch.setitem(gpus._state, "tried", True)
    monkeypatch.setitem(gpus._state, "nvml", None)
    text, samples = _samples(MedqCollector(store, app, settings))
    assert "medq_gpu_" not in text
    assert samples[("medq_store_up", ())] == 1 and samples[("medq_broker_up", ())] == 1


def test_cluster_series_follow_prometheus_conventions(setup):
    store, app, settings = setup
    jobs.create_job(store, "ensemble", {}, {"split": {}}, [0, 1], 4, project="labA")
    text, samples = _samples(MedqCollector(store, app, settings))
    assert samples[("medq_jobs", (("kind", "ensemble"), ("state", "queued")))] == 1
    assert samples[("medq_queue_messages", (("queue", "admission"),))] == 2
    assert samples[("medq_queue_oldest_age_seconds", (("queue", "admission"),))] >= 0
    assert samples[("medq_queue_messages", (("queue", "infer.high"),))] == 0
    assert samples[("medq_lease_reaps_total", (("kind", "member"),))] == 0
    assert samples[("medq_preemptions_total", ())] == 0
    for family in text_string_to_metric_families(text):
        if family.name.startswith("medq_"):
            assert family.type in ("gauge", "counter"), family.name
            if family.type == "counter":
                assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name


def test_a_store_that_is_away_reads_as_down_not_as_an_error(tmp_path):
    from medq.tasks.app import make_app

    settings = load_settings({"MEDQ_HOME": str(tmp_path),
                              "MEDQ_DATABASE_URL": "postgresql+psycopg://u:pw@127.0.0.1:1/x?connect_timeout=2"})
    collector = MedqCollector(Store(settings.resolved_database_url), make_app(settings), settings)
    _, samples = _samples(collector)
    assert samples[("medq_store_up", ())] == 0 and collector.store_ok is False
    assert samples[("medq_broker_up", ())] == 1  # the broker answers; its queues are still shown
    assert ("medq_queue_messages", (("queue", "gpu"),)) in samples


def test_health_and_readiness_answer_with_their_reason(setup):
    store, app, settings = setup
    state = {"ready": False}
    server = serve(make_registry(MedqCollector(store, app, settings)), "127.0.0.1", 0,
                   lambda: (True, "looping"), lambda: (state["ready"], "ready" if state["ready"] else "no worker"))
    port = server.server_address[1]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as answer:
            assert answer.status == 200 and answer.read() == b"ok: looping\n"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz")
        assert refused.value.code == 503 and refused.value.read() == b"not ok: no worker\n"
        state["ready"] = True
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz").status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as answer:
            assert b"medq_build_info" in answer.read()
    finally:
        server.shutdown()
        server.server_close()


def test_every_metric_the_dashboard_and_alerts_use_is_one_medq_serves(setup, fake_nvml):
    """tests/unit/test_deploy.py checks deploy/ against its METRICS list; this checks the list
    against what a launcher's endpoint really serves (GPUs faked, a job running nowhere)."""
    from medq.common.store import inference as ops
    from tests.unit.test_deploy import METRICS

    store, app, settings = setup
    ops.create_infer_job(store, "inferjob0001", {"archive": "/a", "checkpoints": ["/m"]}, {}, "normal", None)
    jobs.create_job(store, "ensemble", {}, {"split": {}}, [0], 4, project="labA")
    admission.register_workers(store, "L1", [("gpu0-1@h", "w.gpu0-1@h", "gpu")])
    collector = MedqCollector(store, app, settings, launcher_workers=lambda: {"gpu": 2})
    _, samples = _samples(collector)
    served = {name for name, _ in samples}
    assert samples[("medq_members_running", (("device", "gpu"), ("worker", "gpu0-1@h")))] == 0, "idle reads 0"
    assert samples[("medq_chunks_running", (("device", "gpu"), ("worker", "gpu0-1@h")))] == 0
    assert METRICS - served == {"medq_member_progress_ratio"}, METRICS - served  # nothing trains
    assert {name for name in served if name.startswith("medq_")} <= METRICS
