"""One error base with two families, as the workers need to tell them apart.

- ``TransientError``: the broker, the database or a file system hiccuped. Retried with a
  bounded backoff.
- ``JobError``: the job itself cannot succeed (bad spec, bad data, NaN loss, out of memory at
  the smallest batch). The member fails with the message as its reason; no retry.
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


class Cancelled(MedqError):
    """The job was cancelled by a user; not a failure."""


# errno values of a file system or network that went away for a while (an NFS server rebooting,
# a mount timing out), as opposed to a file that is missing or a disk that is full (job errors)
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED,
                              errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ESTALE, errno.EAGAIN})
# The database's and the broker's "cannot reach the server" errors, by module and class name so
# that this module imports neither SQLAlchemy, kombu nor redis.
TRANSIENT_CLASSES = frozenset({
    ("sqlalchemy.exc", "OperationalError"), ("sqlalchemy.exc", "InterfaceError"),
    ("sqlalchemy.exc", "DisconnectionError"), ("sqlalchemy.exc", "TimeoutError"),
    ("kombu.exceptions", "OperationalError"), ("redis.exceptions", "ConnectionError"),
    ("redis.exceptions", "TimeoutError"), ("redis.exceptions", "BusyLoadingError"),
})


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: a TransientError, a database or broker connection fault, or an I/O error
    of a file system that went away. A JobError never is (DiskFull, bad data, bad spec)."""
    if isinstance(exc, JobError):
        return False
    if isinstance(exc, TransientError):
        return True
    for cls in type(exc).__mro__:
        if (cls.__module__, cls.__name__) in TRANSIENT_CLASSES:
            return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


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
