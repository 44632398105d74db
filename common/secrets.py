"""Secrets stay secret: passwords masked in URLs, and every secret value medq knows of scrubbed
from what it prints and logs (a traceback included).

The secrets are the settings' passwords (Redis, the PACS, Flower's basic auth and OAuth
secret, the key of sealed study paths) and the passwords inside the broker, store and result-backend URLs. Torch-free and
celery-free.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlsplit

MASK = "***"
SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pass", "secret", "token", "sslpassword"})


def mask_url(url: str) -> str:
    """``scheme://user:***@host/...``: the password of a URL (and any password-like query
    parameter) masked; a URL without one comes back as it was."""
    password = url_password(url)
    masked = url
    if password and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, at, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        masked = f"{scheme}://{user}:{MASK}{at}{host}"
    for value in _query_secrets(url):
        masked = masked.replace(value, MASK)
    return masked


def url_password(url: str) -> str | None:
    if "://" not in url:
        return None
    netloc = url.split("://", 1)[1].split("/", 1)[0]
    creds, at, _ = netloc.rpartition("@")
    if not at or ":" not in creds:
        return None
    password = creds.split(":", 1)[1]
    return password or None


def _query_secrets(url: str) -> list[str]:
    try:
        query = urlsplit(url).query
    except ValueError:
        return []
    return [value for key, value in parse_qsl(query) if key.lower() in SECRET_QUERY_KEYS and value]


def secret_values(settings) -> list[str]:
    """Every secret value in ``settings``, longest first (so that a secret containing another
    is masked whole). Secrets read from files are included when the file can be read."""
    found = [settings.redis_password, settings.pacs_password, settings.flower_oauth2_secret, settings.path_key]
    for url in (settings.resolved_broker_url, settings.resolved_database_url, settings.result_backend):
        found += [url_password(url) or "", *_query_secrets(url)]
    found += [entry.partition(":")[2] for entry in flower_credentials(settings, missing_ok=True)]
    for path in (settings.pacs_password_file, settings.flower_oauth2_secret_file, settings.path_key_file):
        found.append(_read_quietly(path))
    # one-character "secrets" would mask every such letter; nobody sets them on purpose
    return sorted({value for value in found if value and len(value) >= 3}, key=len, reverse=True)


def read_secret_file(path: str, setting: str) -> str:
    """A secret from a file (a mounted Kubernetes or Docker secret), stripped; a file that cannot
    be read is a SpecError naming the setting and the file."""
    from medq.common.errors import SpecError

    try:
        return open(path, encoding="utf-8").read().strip()
    except OSError as exc:
        raise SpecError(f"{setting} {path}: cannot be read ({exc.strerror})") from None


def flower_credentials(settings, missing_ok: bool = False) -> list[str]:
    """Flower's basic-auth entries ``user:password``: MEDQ_FLOWER_BASIC_AUTH, or one per line (or
    comma-separated) in MEDQ_FLOWER_BASIC_AUTH_FILE."""
    from medq.common.errors import SpecError

    raw = settings.flower_basic_auth
    if not raw and settings.flower_basic_auth_file:
        try:
            raw = read_secret_file(settings.flower_basic_auth_file, "MEDQ_FLOWER_BASIC_AUTH_FILE")
        except SpecError:
            if missing_ok:
                return []
            raise
    entries = [e.strip() for line in raw.splitlines() for e in line.split(",") if e.strip()]
    if not missing_ok:
        for number, entry in enumerate(entries, 1):
            user, colon, password = entry.partition(":")
            if not (user and colon and password):
                raise SpecError(f"MEDQ_FLOWER_BASIC_AUTH entry {number}: expected user:password")
    return entries


def _read_quietly(path: str) -> str:
    if not path:
        return ""
    try:
        return open(path, encoding="utf-8").read().strip()
    except OSError:
        return ""


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


class ScrubSecrets(logging.Filter):
    """A logging filter that masks every secret in a record's message and traceback before any
    handler formats it."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        clean = scrub(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
            record.exc_info = None  # formatted (and scrubbed) above: no handler formats it again
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, self.secrets)
        return True


def install_log_scrubbing(settings, logger: logging.Logger | None = None) -> None:
    """Scrub secrets from every record the handlers of ``logger`` (the root logger) emit, also
    records of child loggers that propagate to them."""
    secrets = secret_values(settings)
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, ScrubSecrets) for f in handler.filters):
            handler.addFilter(ScrubSecrets(secrets))
