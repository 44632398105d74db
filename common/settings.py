"""medq's settings: one typed object (pydantic-settings) read from MEDQ_* environment variables.

Nothing else in medq reads ``os.environ`` for configuration. An optional TOML file named by
``MEDQ_CONFIG`` supplies defaults (keys are the field names); environment variables win. A
``MEDQ_*`` variable that names no setting is warned about once per process, with the nearest
setting's name (a typo must not be silently ignored); ``medq config`` shows what is in effect.

With nothing set, medq runs on one machine on the embedded default: a SQLite-backed broker
(kombu's SQLAlchemy transport, see tasks/embedded_broker.py) and a SQLite results store under ``MEDQ_HOME``.
Torch-free and celery-free, so ``medq --help`` starts fast.
"""

from __future__ import annotations

import difflib
import logging
import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import datetime, time, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, TomlConfigSettingsSource
from pydantic_settings.sources import PydanticBaseSettingsSource

from medq.common.errors import SpecError
from medq.common.secrets import mask_url

PREFIX = "MEDQ_"
log = logging.getLogger("medq.settings")

SECRET_FIELDS = frozenset({"redis_password", "pacs_password", "flower_basic_auth", "flower_oauth2_secret", "path_key"})
URL_FIELDS = frozenset({"broker_url", "database_url", "result_backend"})
# MEDQ_* names that are not settings: the TOML file's path, and what medq's tests and deploy files read.
NOT_SETTINGS = frozenset({"MEDQ_CONFIG", "MEDQ_TEST_POSTGRES_URL", "MEDQ_CHROMIUM", "MEDQ_RACE_ROUNDS",
                          "MEDQ_PG_PASSWORD", "MEDQ_GPUS", "MEDQ_DATA"})

_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("medq_environ", default=None)
_WARNED: set[str] = set()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore", env_ignore_empty=True)

    home: Path = Field(default_factory=lambda: Path.home() / ".medq")
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
    redis_password: str = ""
    broker_use_ssl: bool = False
    log_level: str = "INFO"
    # Artifacts (common/store/retention.py): days after a job ended when the resume checkpoints
    # (last.pt) of its succeeded members go; weights files always stay. 0: only `medq gc` removes
    # them (7 days unless told otherwise); more: every launcher also does it once an hour.
    retention_days: float = 0.0
    # The time zone of every time window (--window 22:00-06:00), an IANA name ("Europe/Zurich");
    # empty: the host's. Set it on every host of a cluster so that they agree.
    timezone: str = ""
    # What the store keeps of a study's archive path (common/inference/study_paths.py): "full",
    # "pseudonymised" (names replaced by keyed pseudonyms) or "none"; the last two need the key,
    # the same on the submitter and every worker, never printed (or a file holding it).
    study_paths: str = "full"
    path_key: str = ""
    path_key_file: str = ""
    # Plug-in model families beyond the built-in ones: "package.module:FAMILY,..." (the
    # submitter and every worker need the same list; common/families/registry.py).
    families: str = ""
    # A PACS over DICOMweb (--pacs, --send-to): HTTP basic credentials, never printed, and patience.
    pacs_username: str = ""
    pacs_password: str = ""
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
    flower_basic_auth: str = ""
    flower_basic_auth_file: str = ""
    flower_auth: str = ""
    flower_auth_provider: str = ""
    flower_oauth2_key: str = ""
    flower_oauth2_secret: str = ""
    flower_oauth2_secret_file: str = ""
    flower_oauth2_redirect_uri: str = ""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        environ = _environ()
        sources: list[PydanticBaseSettingsSource] = [init_settings, _Environ(settings_cls, environ)]
        if environ.get(PREFIX + "CONFIG"):
            sources.append(_TomlFile(settings_cls, environ[PREFIX + "CONFIG"]))
        return tuple(sources)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_as_text(cls, value, info):
        """A TOML number for a text setting (``pacs_password = 12345678``) is that text."""
        if cls.model_fields[info.field_name].annotation is str and isinstance(value, (int, float)) \
                and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _check(self) -> "Settings":
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
        for name in ("preempt_min_run", "preempt_grace", "retention_days"):
            if not getattr(self, name) >= 0:  # NaN too
                raise SpecError(f"{PREFIX}{name.upper()} must be 0 or more, got {getattr(self, name)}")
        self.tz  # an unknown time zone is refused here, not at the first window
        from medq.common.inference.study_paths import check_mode

        check_mode(self.study_paths)
        return self

    def __repr__(self) -> str:
        """Every field, with passwords masked: the settings travel in Celery's configuration
        (`celery inspect conf`, Flower's worker page, `celery report`), where they are shown."""
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in self.shown().items())})"

    __str__ = __repr__

    def __repr_args__(self):
        """What pydantic's and rich's pretty printers show: the masked values too."""
        return list(self.shown().items())

    def shown(self) -> dict[str, object]:
        """Every field's value as a person may see it: secrets ``***``, URLs' passwords masked."""
        shown = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in SECRET_FIELDS and value:
                value = "***"
            elif name in URL_FIELDS and value:
                value = mask_url(value)
            shown[name] = value
        return shown

    def path_key_value(self) -> str:
        """MEDQ_PATH_KEY, else the content of MEDQ_PATH_KEY_FILE (SpecError naming it if unreadable)."""
        if self.path_key or not self.path_key_file:
            return self.path_key.strip()  # as the file's: `echo KEY` and a file with a newline agree
        from medq.common.secrets import read_secret_file

        return read_secret_file(self.path_key_file, "MEDQ_PATH_KEY_FILE")

    @property
    def tz(self) -> tzinfo:
        """The time zone of time windows: ``MEDQ_TIMEZONE``, else the host's."""
        if not self.timezone:
            return datetime.now().astimezone().tzinfo
        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise SpecError(f"{PREFIX}TIMEZONE: {self.timezone!r} is not a time zone name "
                            "(an IANA name such as Europe/Zurich or America/New_York)") from None

    @property
    def timezone_label(self) -> str:
        """The zone windows are read in, as ``medq status`` and ``medq config`` say it."""
        if self.timezone:
            return self.timezone
        return f"{datetime.now().astimezone().tzname()} (the host's; set MEDQ_TIMEZONE to fix it)"

    def local_time(self, now: datetime | None = None) -> time:
        """The wall-clock time in the windows' zone: what ``--window 22:00-06:00`` is compared with."""
        return (now or datetime.now().astimezone()).astimezone(self.tz).time()

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


def _environ() -> Mapping[str, str]:
    environ = _ENVIRON.get()
    return os.environ if environ is None else environ


class _Environ(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (os.environ unless
    ``load_settings`` was handed one)."""

    def __init__(self, settings_cls, environ: Mapping[str, str]):
        self._given = environ
        super().__init__(settings_cls)

    def _load_env_vars(self):
        # MEDQ_HOME, not medq_home: only upper-case names are medq's (as before pydantic-settings)
        return {key.lower(): value for key, value in self._given.items() if value != "" and key == key.upper()}


class _TomlFile(TomlConfigSettingsSource):
    """The MEDQ_CONFIG file; a key that names no setting is refused (it is a typo)."""

    def __init__(self, settings_cls, path: str):
        if not Path(path).is_file():
            raise SpecError(f"{PREFIX}CONFIG: no file {path}")
        super().__init__(settings_cls, toml_file=path)
        unknown = sorted(set(self.toml_data) - set(settings_cls.model_fields))
        if unknown:
            hint = _nearest(unknown[0].lower(), settings_cls.model_fields)
            raise SpecError(f"{path}: unknown setting {unknown[0]!r}{hint}; "
                            f"valid: {', '.join(sorted(settings_cls.model_fields))}")


def _nearest(name: str, names, quote=repr) -> str:
    """' (did you mean X?)' for the closest of ``names``, or ''."""
    close = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {quote(close[0])}?)" if close else ""


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``MEDQ_*`` variables that name no setting (and are none of medq's other variables), and
    any not in upper case (``medq_home`` is not read: the names are ``MEDQ_HOME``)."""
    fields = {PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(key for key in environ if key.upper().startswith(PREFIX)
                  and (key != key.upper() or (key not in fields and key not in NOT_SETTINGS)))


def source_of(name: str, environ: Mapping[str, str] | None = None) -> str:
    """Where a setting's value comes from: its environment variable, the MEDQ_CONFIG file, or the default."""
    env = os.environ if environ is None else environ
    if env.get(PREFIX + name.upper(), "") != "":
        return PREFIX + name.upper()
    config = env.get(PREFIX + "CONFIG")
    if config and Path(config).is_file():
        with open(config, "rb") as fh:
            if name in tomllib.load(fh):
                return config
    return "default"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    for name in unknown_variables(env):
        if name not in _WARNED:
            _WARNED.add(name)
            hint = _nearest(name.upper(), [PREFIX + f.upper() for f in Settings.model_fields], quote=str)
            log.warning("%s is not a medq setting and is ignored%s; `medq config` lists them", name, hint)
    token = _ENVIRON.set(env)
    try:
        return Settings()
    except ValidationError as exc:
        raise SpecError(_first_problem(exc, env)) from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{env.get(PREFIX + 'CONFIG')}: not TOML ({exc})") from None
    finally:
        _ENVIRON.reset(token)


def _first_problem(exc: ValidationError, env: Mapping[str, str]) -> str:
    """The first bad value, named by its variable or file; a secret's value is never shown."""
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    field = Settings.model_fields.get(name)
    kind = getattr(field.annotation, "__name__", str(field.annotation)) if field else "value"
    shown = "the value given" if name in SECRET_FIELDS | URL_FIELDS else repr(error["input"])
    return f"{source_of(name, env)}: {shown} is not a valid {kind}"
