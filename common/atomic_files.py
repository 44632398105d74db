"""Files written whole or not at all, and a full disk said in words.

Every checkpoint, mask and overlay medq writes goes through ``write_atomic``: into
``<name>.tmp``, then renamed over ``<name>``, so a reader never sees half a file. When the write
fails the partial file is removed (a full artifact disk used to keep a 61 MB ``last.pt.tmp`` and
stay full), and running out of space becomes ``DiskFull``, a job error that names the file
system, what was needed and what is free, instead of torch's "unexpected pos". Torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import BinaryIO, Callable

from medq.common.errors import JobError

MB = 1024 * 1024
NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class DiskFull(JobError):
    """A file system has no room for what medq must write; free space there, then resume."""


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (an existing folder)."""
    path = Path(os.path.realpath(path))
    device = path.stat().st_dev
    while path.parent != path and path.parent.stat().st_dev == device:
        path = path.parent
    return path


def no_space(directory: Path, needed: int | None, what: str) -> DiskFull:
    free = shutil.disk_usage(directory).free
    need = f"needs ~{max(1, round(needed / MB))} MB, " if needed else ""
    return DiskFull(f"no space left on {mount_point(directory)} ({what} {need}{free // MB} MB free); "
                    f"free some space there, then `medq resume` the job")


def require_space(directory: Path, needed: int, what: str = "writing") -> None:
    """DiskFull before anything is written when ``directory``'s file system has under ``needed``
    bytes free."""
    if shutil.disk_usage(directory).free < needed:
        raise no_space(directory, needed, what)


def write_atomic(path: Path, write: Callable[[BinaryIO], None], *, needed: int | None = None,
                 sync: bool = False) -> Path:
    """``write(handle)`` into ``path.tmp``, then rename it over ``path``. ``needed``: the bytes it
    will take, checked first; ``sync``: fsync before the rename (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if needed:
        require_space(path.parent, needed, f"writing {path.name}")
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        full = _out_of_space(exc, path.parent)  # judged before the partial file frees its space
        with contextlib.suppress(OSError):
            tmp.unlink()
        if full:
            raise no_space(path.parent, needed, f"writing {path.name}") from None
        raise
    return path


def _out_of_space(exc: BaseException, directory: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:
        return True
    if isinstance(exc, (OSError, RuntimeError)):  # torch.save wraps the failed write ("unexpected pos")
        with contextlib.suppress(OSError):
            return shutil.disk_usage(directory).free < MB
    return False


def remove_partial_files(folder: Path) -> int:
    """``*.tmp`` files a killed attempt left in its own work folder; returns how many went."""
    removed = 0
    for stale in Path(folder).glob("*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed += 1
    return removed
