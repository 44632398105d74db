"""The files an operator deploys medq with: deploy/k8s (manifests), deploy/prometheus (scrape
config, alert rules and their tests) and deploy/grafana (the dashboard).

No cluster and no servers: every manifest against the Kubernetes API's own schema (and the
ServiceMonitor against the Prometheus Operator's CRD), the manifests wired to each other
(selectors, ports, Secrets, ConfigMaps, claims) and to medq's settings, and every query of the
alerts and the dashboard checked by promtool on medq's metric names.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from medq.common.settings import Settings
from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "medq-dashboard.json"
# A schema of the ServiceMonitor fields the manifests use, written from the Prometheus
# Operator's API reference (see its "$comment"): kubernetes-validate knows only the built-in kinds.
SERVICEMONITOR_SCHEMA = ROOT / "tests" / "data" / "servicemonitor.schema.json"
KUBERNETES = "1.30"  # the oldest Kubernetes the manifests are written for
NAMESPACE = "medq"

# medq's metric catalogue, as Prometheus stores it (counters with their _total). Every medq_*
# name the alerts and the dashboard use must be one of these.
METRICS = {
    # cluster-wide: from the store and the broker
    "medq_store_up", "medq_broker_up",
    "medq_queue_messages", "medq_queue_oldest_age_seconds",
    "medq_jobs", "medq_workers_online", "medq_members_running", "medq_member_progress_ratio", "medq_chunks_running",
    "medq_studies_total", "medq_studies_pending", "medq_studies_per_second",
    "medq_lease_reaps_total", "medq_redeliveries_total", "medq_resends_total",
    "medq_transient_retries_total", "medq_preemptions_total",
    # local to each endpoint
    "medq_gpu_utilization_ratio", "medq_gpu_memory_used_bytes", "medq_gpu_memory_total_bytes",
    "medq_gpu_temperature_celsius", "medq_gpu_power_watts",
    "medq_launcher_workers_alive", "medq_build_info",
}

# Environment variables other than MEDQ_* a container may get, by image (name before the tag).
# medq's own containers get none: every setting of medq is a MEDQ_* variable.
OTHER_ENV = {"postgres": {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD", "PGDATA"}}
# The GPU a worker sees is the device plugin's and the NVIDIA runtime's business (and the
# launcher's, inside the pod): setting these ourselves would hide the GPU or pick a wrong one.
GPU_VISIBILITY = {"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"}
# A template of a Secret: never listed in a kustomization (apply -k would overwrite the real
# Secret with its placeholders).
TEMPLATE_SUFFIX = ".example.yaml"
WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet"}


# -- loading ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Manifest:
    path: Path
    doc: dict

    @property
    def kind(self) -> str:
        return self.doc["kind"]

    @property
    def name(self) -> str:
        return self.doc["metadata"]["name"]

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}: {self.kind}/{self.name}"


@functools.cache
def manifests() -> tuple[Manifest, ...]:
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [Manifest(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return tuple(found)


def of_kind(kind: str) -> list[Manifest]:
    return [m for m in manifests() if m.kind == kind]


def one(kind: str, name: str) -> Manifest:
    matches = [m for m in manifests() if m.kind == kind and m.name == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_spec(m: Manifest) -> dict:
    return m.doc["spec"]["template"]["spec"]


def workloads() -> list[Manifest]:
    return [m for m in manifests() if m.kind in WORKLOADS]


def containers(m: Manifest) -> list[dict]:
    spec = pod_spec(m)
    return spec.get("initContainers", []) + spec["containers"]


def container(m: Manifest, name: str | None = None) -> dict:
    found = [c for c in pod_spec(m)["containers"] if name is None or c["name"] == name]
    assert len(found) == 1, f"{m}: expected one container{' ' + name if name else ''}"
    return found[0]


def image_name(c: dict) -> str:
    return c["image"].rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]


def is_medq(c: dict) -> bool:
    return image_name(c) == "medq"


def configmap_data() -> dict[str, str]:
    return one("ConfigMap", "medq-settings").doc["data"]


def secret_keys() -> dict[str, set[str]]:
    """Each Secret template's keys, by Secret name."""
    return {m.name: set(m.doc.get("stringData", {})) | set(m.doc.get("data", {})) for m in of_kind("Secret")}


def env_names(c: dict) -> set[str]:
    """Every variable the container gets: its env and the keys of what envFrom names."""
    names = {e["name"] for e in c.get("env", [])}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(one("ConfigMap", source["configMapRef"]["name"]).doc.get("data", {}))
        if "secretRef" in source:
            names |= secret_keys()[source["secretRef"]["name"]]
    return names


def env_value(c: dict, name: str):
    for e in c.get("env", []):
        if e["name"] == name:
            return e.get("value", e.get("valueFrom"))
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            data = one("ConfigMap", source["configMapRef"]["name"]).doc.get("data", {})
            if name in data:
                return data[name]
    return None


def named_ports(c: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_labels(m: Manifest) -> dict:
    return m.doc["spec"]["template"]["metadata"].get("labels", {})


def folder_of(m: Manifest) -> Path:
    return m.path.parent


# -- valid Kubernetes objects ----------------------------------------------------------------
def strict_crd_schema(schema):
    """A CRD's structural schema as `kubectl apply --validate=strict` applies it: a field it
    does not define is an error (the API server would otherwise drop it without a word)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {k: strict_crd_schema(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = strict_crd_schema(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [strict_crd_schema(s) for s in schema[key]]
    return out


@functools.cache
def servicemonitor_validator():
    schema = json.loads(SERVICEMONITOR_SCHEMA.read_text())
    return jsonschema.Draft202012Validator(strict_crd_schema(schema))


def validation_errors(doc: dict) -> list[str]:
    if doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "ServiceMonitor":
        return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in servicemonitor_validator().iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path))}: {e.message}"]
    return []


@pytest.mark.parametrize("m", manifests(), ids=str)
def test_every_manifest_is_a_valid_kubernetes_object(m):
    assert validation_errors(m.doc) == [], f"{m} would be refused by the API server"


def test_validation_refuses_a_misspelt_field():
    """The check above would catch a typo: an unknown field is an error, for a built-in kind
    and for the ServiceMonitor alike (rather than a setting silently dropped)."""
    worker = json.loads(json.dumps(one("StatefulSet", "medq-worker").doc))
    worker["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    assert validation_errors(worker)
    monitor = json.loads(json.dumps(one("ServiceMonitor", "medq").doc))
    monitor["spec"]["endpoints"][0]["intreval"] = "30s"
    assert validation_errors(monitor)


def test_every_namespaced_object_is_in_the_medq_namespace():
    for m in manifests():
        if m.kind != "Namespace":
            assert m.doc["metadata"].get("namespace") == NAMESPACE, f"{m}: not in namespace {NAMESPACE}"
    assert [m.name for m in of_kind("Namespace")] == [NAMESPACE]


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


@pytest.mark.parametrize("path", kustomizations(), ids=lambda p: str(p.relative_to(ROOT)))
def test_kustomization_lists_every_manifest_of_its_folder(path):
    k = yaml.safe_load(path.read_text())
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    assert k["namespace"] == NAMESPACE
    files = {p.name for p in path.parent.glob("*.yaml")} - {"kustomization.yaml"}
    templates = {f for f in files if f.endswith(TEMPLATE_SUFFIX)}
    listed = set(k["resources"])
    assert not listed & templates, f"{path}: lists a Secret template; apply -k would overwrite the real Secret"
    assert listed == files - templates, f"{path}: resources differ from the folder's manifests"


def test_every_folder_of_manifests_has_a_kustomization():
    folders = {m.path.parent for m in manifests()}
    assert folders == {p.parent for p in kustomizations()}


@pytest.mark.parametrize("path", kustomizations(), ids=lambda p: str(p.relative_to(ROOT)))
def test_kustomize_builds(path):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (only this rendering check needs it)")
    done = subprocess.run([kubectl, "kustomize", str(path.parent)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    expected = [m for m in manifests() if m.path.parent == path.parent and not m.path.name.endswith(TEMPLATE_SUFFIX)]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered) == sorted((m.kind, m.name) for m in expected)


# -- settings, secrets and environment -------------------------------------------------------
def settings_fields() -> set[str]:
    return set(Settings.model_fields)


def test_every_medq_variable_is_a_setting():
    """A MEDQ_* name that is no field of Settings is ignored by medq: a setting that does
    nothing, with nothing to say so."""
    known = settings_fields()
    names = {(str(m), n) for m in workloads() for c in containers(m) for n in env_names(c)}
    names |= {(str(m), n) for m in of_kind("ConfigMap") for n in m.doc.get("data", {})}
    names |= {(str(m), n) for m in of_kind("Secret") for n in secret_keys()[m.name]}
    unknown = sorted((where, n) for where, n in names if n.startswith("MEDQ_") and n[5:].lower() not in known)
    assert not unknown, f"not medq settings (MEDQ_FOO_BAR is the field foo_bar of common/settings.py): {unknown}"


def test_no_container_gets_variables_medq_does_not_define():
    for m in workloads():
        for c in containers(m):
            allowed = set() if is_medq(c) else OTHER_ENV.get(image_name(c), set())
            extra = {n for n in env_names(c) if not n.startswith("MEDQ_")} - allowed
            assert not extra, f"{m} container {c['name']}: unexpected variables {sorted(extra)}"
            assert not env_names(c) & GPU_VISIBILITY, f"{m}: sets GPU visibility itself"


def test_service_links_are_off():
    """Kubernetes would otherwise give every pod MEDQ_METRICS_PORT=tcp://10.x.y.z:9808 (from
    the Service medq-metrics) and more MEDQ_* variables like it, which medq reads as settings."""
    for m in workloads():
        assert pod_spec(m).get("enableServiceLinks") is False, f"{m}: enableServiceLinks is not false"


def test_secret_and_configmap_references_exist():
    """A missing Secret key or ConfigMap stops the pod at CreateContainerConfigError."""
    secrets, configmaps = secret_keys(), {m.name for m in of_kind("ConfigMap")}
    for m in workloads():
        for c in containers(m):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets, f"{m}: no Secret {ref['name']} (nor a template of it)"
                    assert ref.get("optional") or ref["key"] in secrets[ref["name"]], f"{m}: {ref} has no such key"
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["name"] in configmaps and ref["key"] in one("ConfigMap", ref["name"]).doc["data"]
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets


# Names of credentials (a *_FILE variable names a mounted file instead: a path, no secret).
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|BASIC_AUTH|OAUTH2_KEY|DATABASE_URL)$")


def test_no_secret_in_a_configmap_or_in_plain_env():
    secret_values = {v for m in of_kind("Secret") for v in m.doc.get("stringData", {}).values() if v}
    all_secret_keys = set().union(*secret_keys().values())
    for m in of_kind("ConfigMap"):
        for key, value in m.doc["data"].items():
            assert key not in all_secret_keys, f"{m}: {key} is a Secret's key"
            assert not SECRET_NAME.search(key), f"{m}: {key} is a credential; it belongs in medq-secrets"
            assert not re.search(r"://[^/@\s]*:[^/@\s]*@", value), f"{m}: {key} has a password in its URL"
            assert not any(s in value for s in secret_values), f"{m}: {key} holds a Secret's value"
    for m in workloads():
        for c in containers(m):
            for e in c.get("env", []):
                if SECRET_NAME.search(e["name"]):
                    assert "secretKeyRef" in e.get("valueFrom", {}), f"{m}: {e['name']} is not taken from a Secret"


def test_secret_templates_hold_only_placeholders():
    """The templates are committed: no real password may ever be filled into them."""
    for m in of_kind("Secret"):
        assert m.path.name.endswith(TEMPLATE_SUFFIX), f"{m}: a Secret outside a {TEMPLATE_SUFFIX} template"
        assert "data" not in m.doc, f"{m}: base64 data hides what it holds; use stringData placeholders"
        for key, value in m.doc["stringData"].items():
            assert value == "" or "change-me" in value, f"{m}: {key} is not a placeholder"


def test_each_component_gets_only_the_secrets_it_uses():
    """Workers never see Flower's password, nor Flower the store's URL."""
    def secret_env(m):
        return {e["name"] for c in containers(m) for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}

    for m in workloads():
        for c in containers(m):
            assert not any("secretRef" in s for s in c.get("envFrom", [])), f"{m}: takes a whole Secret (envFrom)"
    assert "MEDQ_FLOWER_BASIC_AUTH" not in secret_env(one("StatefulSet", "medq-worker"))
    assert "MEDQ_DATABASE_URL" not in secret_env(one("Deployment", "medq-flower"))


def test_command_references_resolve():
    """$(NAME) in a command is expanded by the kubelet from the container's env; an unknown one
    stays as the literal text (Redis would then take "$(MEDQ_REDIS_PASSWORD)" as its password)."""
    for m in workloads():
        for c in containers(m):
            for ref in re.findall(r"\$\((\w+)\)", " ".join(c.get("command", []) + c.get("args", []))):
                assert ref in env_names(c), f"{m} container {c['name']}: $({ref}) is not in its env"


# -- the worker ------------------------------------------------------------------------------
def test_worker_pod_is_one_gpu_with_time_to_stop():
    worker = one("StatefulSet", "medq-worker")
    spec, c = pod_spec(worker), container(worker, "worker")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["command"] == ["medq", "worker", "--gpus", "0"], "one pod, one GPU: inside the pod it is GPU 0"
    assert spec["terminationGracePeriodSeconds"] >= 600, "a warm shutdown must not be cut short by SIGKILL"
    assert worker.doc["spec"]["podManagementPolicy"] == "Parallel"
    assert env_value(c, "MEDQ_METRICS_CLUSTER") == "false", "the cluster-wide series come from medq-metrics only"
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0
    service = one("Service", worker.doc["spec"]["serviceName"])
    assert service.doc["spec"].get("clusterIP") == "None", "a StatefulSet's governing Service is headless"


def test_worker_probes_are_on_the_metrics_port():
    c = container(one("StatefulSet", "medq-worker"), "worker")
    port = named_ports(c)["metrics"]
    assert str(port) == configmap_data()["MEDQ_METRICS_PORT"], "the probes would knock on a port medq does not serve"
    assert configmap_data()["MEDQ_METRICS_ADDRESS"] == "0.0.0.0", "on 127.0.0.1 the kubelet cannot reach it"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    startup = c["startupProbe"]
    assert startup["exec"]["command"] == ["medq", "doctor", "--probe", "--gpus", "0"], "checks the pod's one GPU too"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "give the store and broker minutes"


def test_worker_volumes():
    worker = one("StatefulSet", "medq-worker")
    c, volumes = container(worker, "worker"), {v["name"]: v for v in pod_spec(worker)["volumes"]}
    mounts = {v["mountPath"]: v for v in c["volumeMounts"]}
    artifacts = volumes[mounts[configmap_data()["MEDQ_ARTIFACT_ROOT"]]["name"]]
    assert artifacts["persistentVolumeClaim"]["claimName"] == "medq-artifacts"
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory", "DataLoader workers need shm"
    assert mounts["/data"]["readOnly"] is True
    home = configmap_data()["MEDQ_HOME"]
    assert home in mounts, "MEDQ_HOME must be writable by the non-root user"


def test_disruption_budget_covers_the_workers():
    pdb = one("PodDisruptionBudget", "medq-worker")
    assert selects(pdb.doc["spec"]["selector"]["matchLabels"], pod_labels(one("StatefulSet", "medq-worker")))
    assert pdb.doc["spec"]["maxUnavailable"] == 1


# -- metrics, Flower, migrations, storage ----------------------------------------------------
def test_metrics_deployment_serves_the_cluster_once():
    metrics = one("Deployment", "medq-metrics")
    c = container(metrics)
    assert metrics.doc["spec"]["replicas"] == 1
    assert c["command"] == ["medq", "metrics", "--port", configmap_data()["MEDQ_METRICS_PORT"], "--address", "0.0.0.0"]
    assert env_value(c, "MEDQ_METRICS_CLUSTER") in (None, "true")
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_flower_requires_a_password_and_stays_inside_the_cluster():
    flower = one("Deployment", "medq-flower")
    c = container(flower)
    assert "--address=0.0.0.0" in c["command"]
    auth = [e for e in c["env"] if e["name"] == "MEDQ_FLOWER_BASIC_AUTH"]
    assert auth and auth[0]["valueFrom"]["secretKeyRef"]["name"] == "medq-secrets"
    assert not auth[0]["valueFrom"]["secretKeyRef"].get("optional"), "Flower must not start without its password"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthcheck", "Flower's only path served without auth"
    service = one("Service", "medq-flower")
    assert service.doc["spec"].get("type", "ClusterIP") == "ClusterIP", "expose Flower through an Ingress with TLS"


def test_migration_job_uses_the_workers_image():
    job = one("Job", "medq-migrate")
    c = container(job)
    assert c["command"] == ["medq", "db", "upgrade"]
    assert pod_spec(job)["restartPolicy"] in {"Never", "OnFailure"}
    assert {x["image"] for m in workloads() for x in containers(m) if is_medq(x)} == {c["image"]}


def test_claims_exist_and_artifacts_are_shared():
    claims = {m.name: m for m in of_kind("PersistentVolumeClaim")}
    assert claims["medq-artifacts"].doc["spec"]["accessModes"] == ["ReadWriteMany"], \
        "every worker pod writes checkpoints to it, on any node"
    for m in workloads():
        for v in pod_spec(m).get("volumes", []):
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, f"{m}: no claim for volume {v['name']}"
        names = {v["name"] for v in pod_spec(m).get("volumes", [])}
        names |= {t["metadata"]["name"] for t in m.doc["spec"].get("volumeClaimTemplates", [])}
        for c in containers(m):
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in names, f"{m}: mounts the unknown volume {mount['name']}"


# -- Services, probes and scraping -----------------------------------------------------------
def test_services_reach_their_pods():
    for service in of_kind("Service"):
        spec = service.doc["spec"]
        if spec.get("type") == "ExternalName":
            assert "selector" not in spec
            continue
        pods = [m for m in workloads() if folder_of(m) == folder_of(service) and selects(spec["selector"], pod_labels(m))]
        assert pods, f"{service}: selects no pods"
        for port in spec["ports"]:
            target = port.get("targetPort", port["port"])
            for m in pods:
                served = {p for c in containers(m) for p in (*named_ports(c), *named_ports(c).values())}
                assert target in served, f"{service}: port {target} is not a port of {m}"


def test_probes_use_declared_ports():
    for m in workloads():
        for c in containers(m):
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                action = c.get(probe, {}).get("httpGet") or c.get(probe, {}).get("tcpSocket")
                if action and isinstance(action["port"], str):
                    assert action["port"] in named_ports(c), f"{m} {probe}: no port named {action['port']}"


def test_servicemonitor_scrapes_the_metrics_and_every_worker():
    monitor = one("ServiceMonitor", "medq").doc["spec"]
    selected = {s.name for s in of_kind("Service") if selects(monitor["selector"]["matchLabels"], s.doc["metadata"]["labels"])}
    assert selected == {"medq-metrics", "medq-worker"}
    assert monitor["namespaceSelector"]["matchNames"] == [NAMESPACE]
    for endpoint in monitor["endpoints"]:
        for name in selected:
            assert endpoint["port"] in {p["name"] for p in one("Service", name).doc["spec"]["ports"]}
        assert endpoint.get("path", "/metrics") == "/metrics"


# -- Prometheus ------------------------------------------------------------------------------
@functools.cache
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        unavailable("promtool is not installed (Debian: prometheus)")
    return found


def run_promtool(*args: str) -> None:
    done = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, cwd=PROMETHEUS)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


def test_prometheus_config_is_valid():
    run_promtool("check", "config", "prometheus.yml")


def test_alert_rules_are_valid():
    run_promtool("check", "rules", "alerts.yml")


def test_alert_rules_pass_their_unit_tests():
    run_promtool("test", "rules", "alerts.test.yml")


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"] for r in g["rules"]]


def test_every_alert_has_a_severity_a_summary_and_a_unit_test():
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    tested = {t["alertname"] for case in tests for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert rule["alert"] in tested, f"{rule['alert']}: no promtool test sees it fire"


# -- Grafana ---------------------------------------------------------------------------------
@functools.cache
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    out = []
    for p in dashboard()["panels"]:
        out += [p, *p.get("panels", [])]
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    return [(f"{p['title']} / {t['refId']}", t["expr"]) for p in panels() for t in p.get("targets", [])]


def test_dashboard_is_provisionable():
    d = dashboard()
    assert d["uid"] == "medq" and d["schemaVersion"] == 39
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"


def test_every_panel_has_an_id_and_the_datasource():
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids repeat: Grafana mixes up their settings and links"
    for p in panels():
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], f"{p['title']}: no query"
        for t in p["targets"]:
            assert t.get("datasource", p["datasource"]) == p["datasource"], p["title"]


def test_panels_do_not_overlap():
    cells = {}
    for p in panels():
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, f"{p['title']}: wider than the dashboard"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def grafana_to_promql(expr: str) -> str:
    """A query as Grafana sends it: its interval variables become durations, others a regex."""
    expr = re.sub(r"\$\{?__(rate_interval|interval|range)\}?", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def test_dashboard_queries_are_valid_promql(tmp_path):
    queries = dashboard_queries()
    assert queries
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)} for i, (_, expr) in enumerate(queries)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\nqueries: {queries}"


METRIC_NAME = re.compile(r"\bmedq_[a-z0-9_]+")


def used_metrics() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    texts = [("dashboard " + where, expr) for where, expr in dashboard_queries()]
    texts += [("dashboard variable " + v["name"], json.dumps(v.get("query", ""))) for v in dashboard()["templating"]["list"]]
    texts += [("alert " + r["alert"], r["expr"]) for r in alert_rules()]
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    texts += [("alert test series", s["series"]) for case in tests for s in case["input_series"]]
    for where, text in texts:
        for name in METRIC_NAME.findall(text):
            used.setdefault(name, set()).add(where)
    return used


def test_alerts_and_dashboard_use_only_medq_metrics():
    unknown = {name: sorted(where) for name, where in used_metrics().items() if name not in METRICS}
    assert not unknown, f"not in medq's metric catalogue (a typo shows an empty panel, an alert that never fires): {unknown}"


def test_dashboard_shows_every_metric():
    shown = {name for name, where in used_metrics().items() if any(w.startswith("dashboard") for w in where)}
    assert METRICS - shown == set(), "metrics medq serves that no panel shows"


def test_dashboard_deduplicates_the_cluster_wide_series():
    """Every launcher may serve the same store-wide series: a bare sum would count them twice."""
    local = {"medq_gpu_utilization_ratio", "medq_gpu_memory_used_bytes", "medq_gpu_memory_total_bytes",
             "medq_gpu_temperature_celsius", "medq_gpu_power_watts", "medq_launcher_workers_alive", "medq_build_info"}
    for where, expr in dashboard_queries():
        if set(METRIC_NAME.findall(expr)) - local:
            assert re.match(r"\s*(max|min)\b", expr), f"{where}: {expr} is not the max (or min) over endpoints"


# -- packaging ---------------------------------------------------------------------------------
def test_the_constraints_file_pins_every_dependency_within_its_declared_range():
    """deploy/constraints.txt (the container image installs with it) must satisfy pyproject's
    ranges, for the core and every extra; torch and torchvision follow the host's CUDA."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra, reqs in project["optional-dependencies"].items() if extra != "test"
               for r in reqs if not r.startswith("medq[")]
    unpinned = {"torch", "torchvision"}
    missing = [str(r) for r in wanted if canonicalize_name(r.name) not in pins | dict.fromkeys(unpinned, "")]
    outside = [f"{r} (pinned {pins[canonicalize_name(r.name)]})" for r in wanted
               if canonicalize_name(r.name) in pins and not r.specifier.contains(pins[canonicalize_name(r.name)])]
    assert not missing and not outside, (missing, outside)
    assert not unpinned & set(pins)
