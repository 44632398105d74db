"""What an archive entry must pass before it is read: its name (inside the archive, UTF-8) and its
size (declared, then as it inflates). Pure functions and the reasons they give; the reasons never
contain the path, since file names can carry patient names. An I/O fault of the storage under
the archive is not the entry's: ``raise_if_transient`` makes it an ArchiveUnavailable.
"""

from __future__ import annotations

import re

from medq.common.errors import is_transient
from medq.common.inference.types import ArchiveUnavailable, StudyError

MAX_FILE_BYTES = 1024**3  # 1 GiB default (MEDQ_MAX_STUDY_BYTES): read() holds a study in memory
READ_BLOCK = 1 << 20

UNSAFE_NAME = "unsafe name in archive (absolute or '..')"
OUTSIDE = "symlink points outside the archive"
NO_PERMISSION = "permission denied"
ARCHIVE_LINK = "link in archive (not followed)"
NOT_UTF8 = "file name is not valid UTF-8 (rename the file to process it)"
NOT_UTF8_FOLDER = "folder name is not valid UTF-8 (none of its files was read; rename it to process them)"


def is_unsafe_name(name: str) -> bool:
    """An absolute name (``/x``, ``\\x``, ``C:x``) or one with a ``..`` component (``/`` or ``\\``)."""
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return True
    return ".." in re.split(r"[/\\]", name)


def clean_name(name: str) -> str:
    """An archive member's name as an archive-relative POSIX path: ``./a//b.png`` -> ``a/b.png``."""
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def printable_name(name: str) -> str:
    """A name as text the store can keep: bytes that are not UTF-8 shown as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # os and tarfile hand undecodable bytes over as lone surrogates
        return False


def check_size(size: int, limit: int) -> None:
    if size > limit:
        raise StudyError(f"file too large ({size:,} bytes; maximum {limit:,}, MEDQ_MAX_STUDY_BYTES)")


def read_capped(stream, limit: int, declared: int) -> bytes:
    """Everything ``stream`` produces, refusing more than ``limit`` bytes as they come (a stream
    may produce more than its header declared). An honest file is one read, with no copy."""
    expected = min(declared, limit)
    data = stream.read(expected + 1)
    if len(data) <= expected:
        return data
    buffer = bytearray(data)  # more than declared: go on only up to the limit
    while len(buffer) <= limit:
        block = stream.read(min(READ_BLOCK, limit + 1 - len(buffer)))
        if not block:
            return bytes(buffer)
        buffer += block
    raise StudyError(f"file too large (over {limit:,} bytes once decompressed, {declared:,} declared; "
                     f"MEDQ_MAX_STUDY_BYTES)")


def raise_if_transient(exc: BaseException) -> None:
    """An I/O fault of the storage under the archive (EIO, ETIMEDOUT, a stale NFS handle) is not
    the study's: ArchiveUnavailable, and the chunk is tried again later, where a corrupt or
    unreadable file fails its study alone."""
    if is_transient(exc):
        raise ArchiveUnavailable(f"the archive could not be read "
                                 f"({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
