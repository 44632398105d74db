"""One error base with two families, as the workers need to tell them apart.

- ``TransientError``: the broker, the database or a file system hiccuped. Retried with a
  bounded backoff.
- ``JobError``: the job itself cannot succeed (bad spec, bad data, NaN loss, out of memory at
  the smallest batch). The member fails with the message as its reason; no retry.

``is_transient(exc)`` tells the two apart for errors medq did not raise itself (a database
driver's, the broker client's, the file system's), by class name and errno, importing none of
those libraries: the tasks of training and of inference both ask it.
"""

from __future__ import annotations

import errno


class MedqError(Exception):
    """Base of every error medq raises on purpose."""


class TransientError(MedqError):
    """Worth retrying: the cause is outside the job."""


class JobError(MedqError):
    """The job cannot succeed as specified; fail it with this message."""


class SpecError(JobError):
    """A job spec names an unknown option or an impossible value."""


class DataError(JobError):
    """Input data is malformed. The message names the file and row (or study)."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        shown = self.problems[:20]
        more = len(self.problems) - len(shown)
        text = "\n".join(f"  - {p}" for p in shown)
        if more:
            text += f"\n  ... and {more} more"
        super().__init__(f"{len(self.problems)} problem(s) in the data:\n{text}")


class TrainingDiverged(JobError):
    """The loss became NaN or infinite."""


class SchemaError(MedqError):
    """The store's schema is not the one this medq needs (none yet, older, or newer) and the
    command may not change it; the message says what to run."""


class Cancelled(MedqError):
    """The job was cancelled by a user; not a failure."""


def unknown_name(kind: str, name: str, valid) -> SpecError:
    """The error for a registry miss: it lists every valid name."""
    return SpecError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")


def describe(exc: BaseException) -> str:
    """An error as a reason for the store and the user. medq's own errors are written to be read
    (and name no patient file); any other error's text may carry SQL parameters, file paths or
    URLs, so only its type is kept and the details stay in the log of the process that raised it."""
    if isinstance(exc, MedqError):
        return str(exc)
    return f"{type(exc).__name__} (details in the log of the process that raised it)"


def brief(exc: BaseException) -> str:
    """One line for a log: the error's type and the first line of its cause (a driver's own
    message, not the SQL statement and parameters an SQLAlchemy error carries)."""
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# --- telling a transient fault from a job error --------------------------------------------------
# By class name and module, so that this module imports neither SQLAlchemy, kombu nor redis.

TRANSIENT_CLASSES = {
    "sqlalchemy.exc": ("OperationalError", "InterfaceError", "DisconnectionError", "TimeoutError"),
    "psycopg": ("OperationalError", "InterfaceError"),  # a driver error SQLAlchemy did not wrap
    "psycopg2": ("OperationalError", "InterfaceError"),
    "kombu.exceptions": ("OperationalError",),
    "amqp.exceptions": ("ConnectionError", "RecoverableConnectionError"),
    "redis.exceptions": ("ConnectionError", "TimeoutError"),  # BusyLoadingError is a ConnectionError
}
TRANSIENT_ERRNOS = frozenset(getattr(errno, name) for name in (
    "EIO", "ETIMEDOUT", "ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "ESTALE", "EHOSTUNREACH", "ENETUNREACH",
    "ENETDOWN", "ENETRESET", "EPIPE", "EAGAIN") if hasattr(errno, name))


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says "not now" rather than "never": the database, the broker or a file
    system away for a while (a lost or refused connection, a timeout, EIO, a stale NFS handle).
    A JobError never is; a TransientError always is; so is an error raised from a transient one."""
    for _ in range(5):  # exc, then its explicit causes
        if isinstance(exc, JobError):
            return False
        if isinstance(exc, TransientError) or _transient_class(exc):
            return True
        if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
            return True
        if isinstance(exc, (ConnectionError, TimeoutError)):  # the builtins: reset, refused, broken pipe, timeout
            return True
        if getattr(exc, "connection_invalidated", False) is True:  # SQLAlchemy's DBAPIError on a dead connection
            return True
        if exc.__cause__ is None:
            return False
        exc = exc.__cause__
    return False


def _transient_class(exc: BaseException) -> bool:
    for cls in type(exc).__mro__:
        module = cls.__module__
        names = TRANSIENT_CLASSES.get(module) or TRANSIENT_CLASSES.get(module.split(".", 1)[0])
        if names and cls.__name__ in names:
            return True
    return False


def transient_reason(exc: BaseException) -> str:
    """A transient fault in one line for the store: medq's own message, an OS error's errno text
    (not its file name), else the type and the first line of the driver's message."""
    if isinstance(exc, MedqError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__}: {exc.strerror or errno.errorcode.get(exc.errno, exc.errno)}"
    return brief(exc)
