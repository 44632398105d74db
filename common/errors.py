"""One error base with two families, as the workers need to tell them apart.

- ``TransientError``: the broker, the database or a file system hiccuped. Retried with a
  bounded backoff.
- ``JobError``: the job itself cannot succeed (bad spec, bad data, NaN loss, out of memory at
  the smallest batch). The member fails with the message as its reason; no retry.
"""

from __future__ import annotations


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
