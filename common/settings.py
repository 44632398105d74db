"""medq's settings: one typed object read from MEDQ_* environment variables.

Nothing else in medq reads ``os.environ`` for configuration. An optional TOML file named by
``MEDQ_CONFIG`` supplies defaults (keys are the field names); environment variables win.

With nothing set, medq runs on one machine on the embedded default: a SQLite-backed broker
(kombu's SQLAlchemy transport, see tasks/embedded_broker.py) and a SQLite results store under ``MEDQ_HOME``.
Torch-free and celery-free, so ``medq --help`` starts fast.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from medq.common.errors import SpecError
from medq.common.secrets import mask_url

PREFIX = "MEDQ_"


SECRET_FIELDS = frozenset({"redis_password", "pacs_password", "flower_basic_auth", "flower_oauth2_secret"})
URL_FIELDS = frozenset({"broker_url", "database_url", "result_backend"})


@dataclass(frozen=True, repr=False)
class Settings:
    home: Path = Path.home() / ".medq"
    broker_url: str = ""  # empty: the embedded SQLite broker under home
    database_url: str = ""  # empty: the SQLite store under home
    artifact_root: str = ""  # empty: home/artifacts; a shared file system when distributed
    # Redis redelivers an unacked message after this many seconds: above the longest job.
    visibility_timeout: int = 7 * 24 * 3600
    lease_seconds: int = 60  # a running member's lease, renewed by its heartbeat
    reaper_interval: float = 10.0  # how often a worker launcher looks for lapsed leases
    max_attempts: int = 3  # redelivery cap per member: a poison job cannot loop
    # A row queued this long while its queue is empty was lost by the broker: it is sent again.
    resend_after: float = 60.0
    progress_interval: float = 2.0  # seconds between progress writes to the store
    cancel_check_interval: float = 3.0  # seconds between cancellation checks
    worker_max_tasks_per_child: int = 0  # 0: no limit (models are released at task end)
    # The largest single file an inference job reads (it is held in memory): zip bombs stop here.
    max_study_bytes: int = 1024**3
    device: str = "cpu"  # set by the worker launcher: "cuda:0" (with CUDA_VISIBLE_DEVICES) or "cpu"
    worker_label: str = ""  # set by the worker launcher: "gpu3", "cpu0"
    result_backend: str = ""  # only `medq bench queue` uses results; jobs report through the store
    redis_password: str = dataclasses.field(default="", repr=False)
    broker_use_ssl: bool = False
    log_level: str = "INFO"
    # Plug-in model families beyond the built-in ones: "package.module:FAMILY,..." (the
    # submitter and every worker need the same list; common/families/registry.py).
    families: str = ""
    # A PACS over DICOMweb (--pacs, --send-to): HTTP basic credentials, never printed, and patience.
    pacs_username: str = ""
    pacs_password: str = dataclasses.field(default="", repr=False)
    pacs_password_file: str = ""  # a file holding the password (a mounted secret), read when needed
    pacs_timeout: float = 30.0  # seconds to wait for an answer
    pacs_attempts: int = 3  # tries of each request (a refused connection, a timeout, 408/429/5xx)
    pacs_backoff: float = 1.0  # seconds before the second try; doubled for each next one
    # Sharing workers (common/sharing/): the project a submitted job is for (empty: the login name).
    project: str = ""
    preempt_min_run: float = 600.0  # seconds a resumed member runs before it may be preempted again
    # An inference chunk queued this long with no worker taking it makes training yield to it.
    preempt_grace: float = 5.0
    # Fair-share weights and hard quotas in workers per project ("labA=2,labB=1", "labA=4"):
    # the admission dispatcher's (common/store/admission.py). Unset: equal shares, no quotas.
    shares: str = ""
    quotas: str = ""
    admit_interval: float = 1.0  # seconds between a launcher's admission rounds
    # A launcher that has not said its workers are alive for this long has gone: nothing more is
    # admitted onto its workers, and what was admitted to them and not taken goes to others.
    worker_ttl: float = 15.0
    # A launcher told to stop (SIGTERM: systemd, Kubernetes) first asks its running members to hand
    # over at their next step, and waits this long for them before it stops its workers (0: no hand-over).
    shutdown_yield_timeout: float = 120.0
    # Operations (deploy/): Prometheus metrics served by every worker launcher (workers/metrics.py)
    # on this port (0: off) and address; ``metrics_cluster``: whether that endpoint also serves the
    # store- and broker-wide series (off on workers when one `medq metrics` serves them instead).
    metrics_port: int = 0
    metrics_address: str = "127.0.0.1"
    metrics_cluster: bool = True
    # Flower (`medq flower`): basic auth "user:password[,user:password]" or OAuth (Flower's --auth
    # e-mail regex, provider class, key, secret, redirect URI); secrets also from a file, never printed.
    flower_basic_auth: str = dataclasses.field(default="", repr=False)
    flower_basic_auth_file: str = ""
    flower_auth: str = ""
    flower_auth_provider: str = ""
    flower_oauth2_key: str = ""
    flower_oauth2_secret: str = dataclasses.field(default="", repr=False)
    flower_oauth2_secret_file: str = ""
    flower_oauth2_redirect_uri: str = ""

    def __post_init__(self) -> None:
        from medq.common.sharing.projects import check_project, parse_quotas, parse_shares

        if self.project:
            check_project(self.project, "MEDQ_PROJECT")
        parse_shares(self.shares)
        parse_quotas(self.quotas)
        for name in ("admit_interval", "worker_ttl"):
            if not getattr(self, name) > 0:
                raise SpecError(f"{PREFIX}{name.upper()} must be more than 0, got {getattr(self, name)}")
        if not 0 <= self.metrics_port <= 65535:
            raise SpecError(f"{PREFIX}METRICS_PORT must be a port number (0: off), got {self.metrics_port}")
        for name in ("preempt_min_run", "preempt_grace"):
            if not getattr(self, name) >= 0:  # NaN too
                raise SpecError(f"{PREFIX}{name.upper()} must be 0 or more, got {getattr(self, name)}")

    def __repr__(self) -> str:
        """Every field, with passwords masked: the settings travel in Celery's configuration
        (`celery inspect conf`, Flower's worker page, `celery report`), where they are shown."""
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value:
                value = "***"
            elif f.name in URL_FIELDS and value:
                value = mask_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__

    @property
    def sharing(self):
        """The sharing policy's view of the settings (common/sharing/policy.py)."""
        from medq.common.sharing.policy import Sharing

        from medq.common.sharing.projects import parse_quotas, parse_shares

        return Sharing(parse_shares(self.shares), parse_quotas(self.quotas), min_run=self.preempt_min_run)

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"medq+sqlite:///{self.home / 'broker.sqlite'}"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'medq.sqlite'}"

    @property
    def artifacts(self) -> Path:
        return Path(self.artifact_root) if self.artifact_root else self.home / "artifacts"

    @property
    def embedded(self) -> bool:
        return not self.broker_url

    def describe(self) -> dict[str, str]:
        """Settings as a user may see them (passwords masked)."""
        return {
            "home": str(self.home),
            "broker": mask_url(self.resolved_broker_url),
            "database": mask_url(self.resolved_database_url),
            "artifacts": str(self.artifacts),
        }


def _coerce(field: dataclasses.Field, raw, source: str):
    kind = field.type
    try:
        if kind == "Path":
            return Path(raw).expanduser()
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(text)
            return text in {"1", "true", "yes", "on"}
        return str(raw)
    except ValueError:
        raise SpecError(f"{source}: {raw!r} is not a valid {kind}") from None


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    config = env.get(PREFIX + "CONFIG")
    if config:
        with open(config, "rb") as fh:
            for key, raw in tomllib.load(fh).items():
                if key not in fields:
                    raise SpecError(f"{config}: unknown setting {key!r}; valid: {', '.join(sorted(fields))}")
                values[key] = _coerce(fields[key], raw, f"{config}: {key}")
    for name, field in fields.items():
        raw = env.get(PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(field, raw, PREFIX + name.upper())
    return Settings(**values)
