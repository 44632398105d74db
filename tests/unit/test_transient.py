"""Transient faults told from job errors (``errors.is_transient``): what a task retries with
backoff and what fails its work at once; by class name and errno, importing no driver."""

from __future__ import annotations

import errno

import pytest
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from medq.common.errors import DataError, SpecError, TransientError, is_transient, transient_reason

DB_DOWN = OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


@pytest.mark.parametrize("exc, transient", [
    (DB_DOWN, True),
    (InterfaceError("SELECT 1", {}, Exception("connection already closed")), True),
    (DBAPIError("SELECT 1", {}, Exception("x"), connection_invalidated=True), True),
    (DBAPIError("SELECT 1", {}, Exception("syntax error")), False),
    (OSError(errno.EIO, "Input/output error"), True),
    (OSError(errno.ESTALE, "Stale file handle"), True),
    (OSError(errno.ENOENT, "No such file or directory"), False),
    (OSError(errno.ENOSPC, "No space left on device"), False),
    (ConnectionResetError(errno.ECONNRESET, "reset"), True),
    (TimeoutError("timed out"), True),
    (TransientError("the store could not be reached"), True),
    (SpecError("bad spec"), False),
    (DataError("bad file"), False),
    (ValueError("a bug"), False),
])
def test_transient_faults_are_told_from_job_errors(exc, transient):
    assert is_transient(exc) is transient


def test_broker_client_errors_are_transient_and_so_is_an_error_raised_from_one():
    import kombu.exceptions
    import redis.exceptions

    assert is_transient(kombu.exceptions.OperationalError("broker gone"))
    assert is_transient(redis.exceptions.ConnectionError("Error 111 connecting"))
    assert is_transient(redis.exceptions.TimeoutError("Timeout reading from socket"))
    assert not is_transient(redis.exceptions.ResponseError("WRONGTYPE"))
    try:
        try:
            raise redis.exceptions.BusyLoadingError("loading")
        except redis.exceptions.RedisError as inner:
            raise RuntimeError("could not send") from inner
    except RuntimeError as outer:
        assert is_transient(outer)


def test_errors_py_imports_no_driver():
    import subprocess
    import sys

    code = "import sys, medq.common.errors; print(sorted({'sqlalchemy', 'kombu', 'redis', 'torch'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_transient_reason_names_no_file():
    assert transient_reason(OSError(errno.ESTALE, "Stale file handle", "/exports/Patient Doe/1.dcm")) == (
        "OSError: Stale file handle")
    assert transient_reason(DB_DOWN) == "OperationalError: server closed the connection unexpectedly"
    assert transient_reason(TransientError("the store could not be reached")) == "the store could not be reached"
