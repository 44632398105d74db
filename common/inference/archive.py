"""Study archives: a folder tree, a zip, or a tar (plain, gz, bz2, xz), enumerated as a stream.

``open_archive(path)`` picks the kind from what the path is (a folder; zip magic bytes; what
``tarfile.is_tarfile`` accepts) through a registry. Every archive has ``kind``, ``root``,
``entries()`` and ``read(path)``:

- ``entries()`` yields an ``Entry`` per regular file, or a ``SkippedEntry`` with a reason for a
  file that must not be read, with archive-relative POSIX paths. It streams: a folder is walked
  with ``os.scandir``, one directory listing at a time, sorted per directory (memory grows with
  the largest single directory, not with the tree); a tar is read member by member with
  ``TarFile.members`` cleared as it goes. A zip's central directory is read whole by zipfile
  (about 100 bytes per member: 10 MB for 100 000 files) and its members are sorted as a folder
  is walked, so a folder and a zip of the same files enumerate identically.
- ``read(path)`` returns the whole file, up to the archive's ``max_bytes``
  (``MEDQ_MAX_STUDY_BYTES``, 1 GiB by default). The declared size (folder, zip header, tar
  header) is checked before anything is read, and the bytes actually produced are counted as
  they stream, so a zip bomb (a 2 MB zip declaring, or inflating to, 2 GiB of zeros) is refused
  holding at most the limit in memory.

Safety: nothing is read outside the archive and nothing is ever written. Archive members with
an absolute name or a ``..`` component, links and devices in archives, symlinks that leave the
folder, unreadable files, names that are not valid UTF-8 (the store keeps text): each is a
``SkippedEntry`` and ``read`` refuses it. Folder symlinks to
directories are not followed at all (no loops; a target inside the folder is walked anyway).
Reasons never contain the path: file names can carry patient names. An I/O fault of the
storage under the archive (EIO, ETIMEDOUT, a stale NFS handle) is an ``ArchiveUnavailable``, a
transient error: the chunk is tried again later, where a bad file fails its study alone.

Zip and tar handles are opened lazily, once per process, and reopened after a fork (the pid is
stored): DataLoader workers each get their own file offset. Archives pickle without handles.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from medq.common.errors import DataError
from medq.common.inference.entry_checks import (
    ARCHIVE_LINK, MAX_FILE_BYTES, NO_PERMISSION, NOT_UTF8, NOT_UTF8_FOLDER, OUTSIDE, UNSAFE_NAME, check_size,
    clean_name, is_unsafe_name, is_utf8, printable_name, raise_if_transient, read_capped,
)
from medq.common.inference.types import Entry, SkippedEntry, StudyError
from medq.common.registry import Registry

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")  # a member, an empty zip, a spanned zip


class Archive(ABC):
    kind: str

    def __init__(self, root: Path, max_bytes: int = MAX_FILE_BYTES):
        self.root = Path(root)
        self.max_bytes = max_bytes

    @abstractmethod
    def entries(self) -> Iterator[Entry | SkippedEntry]:
        """Every file, streamed, in a deterministic order."""

    @abstractmethod
    def read(self, path: str) -> bytes:
        """The whole file at an archive-relative path; StudyError when it cannot or must not be read."""

    def check(self) -> None:
        """Read what must be readable before anything is planned (a zip's central directory)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"


# --- a folder tree -----------------------------------------------------------------------------


class FolderArchive(Archive):
    kind = "folder"

    def __init__(self, root: Path, max_bytes: int = MAX_FILE_BYTES):
        super().__init__(Path(os.path.realpath(root)), max_bytes)

    def _inside(self, real: str) -> bool:
        return os.path.commonpath([str(self.root), real]) == str(self.root)

    def entries(self) -> Iterator[Entry | SkippedEntry]:
        try:
            stack = [(str(self.root), "", iter(self._listing(str(self.root))))]
        except OSError as exc:
            raise DataError(f"{self.root}: the folder cannot be listed ({exc.strerror})") from None
        while stack:
            directory, prefix, names = stack[-1]
            name = next(names, None)
            if name is None:
                stack.pop()
                continue
            full, relative = os.path.join(directory, name), prefix + name
            if not is_utf8(relative):  # a folder of such a name: one record, its files all carry the name
                folder = os.path.isdir(full) and not os.path.islink(full)
                yield SkippedEntry(printable_name(relative), NOT_UTF8_FOLDER if folder else NOT_UTF8)
                continue
            try:
                info = os.lstat(full)
            except OSError:  # vanished while walking
                continue
            if stat.S_ISDIR(info.st_mode):
                try:
                    stack.append((full, relative + "/", iter(self._listing(full))))
                except PermissionError:
                    yield SkippedEntry(relative, f"{NO_PERMISSION} (folder)")
                except OSError as exc:
                    yield SkippedEntry(relative, f"the folder cannot be listed ({exc.strerror})")
                continue
            yield self._file_entry(full, relative, info)

    @staticmethod
    def _listing(directory: str) -> list[str]:
        with os.scandir(directory) as found:
            return sorted(entry.name for entry in found)

    def _file_entry(self, full: str, relative: str, info: os.stat_result) -> Entry | SkippedEntry:
        if stat.S_ISLNK(info.st_mode):
            if not self._inside(os.path.realpath(full)):
                return SkippedEntry(relative, OUTSIDE)
            try:
                info = os.stat(full)  # follows the link (the whole chain, once)
            except OSError:
                return SkippedEntry(relative, "broken symlink or symlink loop")
            if stat.S_ISDIR(info.st_mode):
                return SkippedEntry(relative, "symlink to a folder (not followed)", state="skipped")
        if not stat.S_ISREG(info.st_mode):
            return SkippedEntry(relative, "not a regular file (device, socket or pipe)")
        if not os.access(full, os.R_OK):
            return SkippedEntry(relative, NO_PERMISSION)
        return Entry(relative, info.st_size)

    def read(self, path: str) -> bytes:
        if is_unsafe_name(path):
            raise StudyError(UNSAFE_NAME)
        full = os.path.join(str(self.root), path)
        if not self._inside(os.path.realpath(full)):
            raise StudyError(OUTSIDE)
        try:
            with open(full, "rb") as f:
                info = os.fstat(f.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise StudyError("not a regular file")
                check_size(info.st_size, self.max_bytes)
                return read_capped(f, self.max_bytes, info.st_size)
        except PermissionError:
            raise StudyError(NO_PERMISSION) from None
        except FileNotFoundError:
            raise StudyError("file no longer exists") from None
        except IsADirectoryError:
            raise StudyError("not a regular file") from None
        except OSError as exc:  # str(exc) would carry the file name; strerror does not
            raise_if_transient(exc)
            raise StudyError(f"could not read the file ({exc.strerror or type(exc).__name__})") from None


# --- a handle per process, for zip and tar -----------------------------------------------------


class _PerProcessHandle(Archive):
    """Opens its archive file lazily and again in a forked child; pickles without the handle."""

    def __init__(self, root: Path, max_bytes: int = MAX_FILE_BYTES):
        super().__init__(Path(root).resolve(), max_bytes)
        self._handle: Any = None
        self._pid: int | None = None

    @abstractmethod
    def _open(self) -> Any: ...

    def _opened(self) -> Any:
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = self._open(), os.getpid()  # a parent's handle is left alone
            self._after_open()
        return self._handle

    def _after_open(self) -> None:
        pass

    def __getstate__(self) -> dict:
        return {"root": self.root, "max_bytes": self.max_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"], state.get("max_bytes", MAX_FILE_BYTES))


# --- zip ---------------------------------------------------------------------------------------


def _zip_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


class ZipArchive(_PerProcessHandle):
    kind = "zip"

    def _open(self) -> zipfile.ZipFile:
        return zipfile.ZipFile(self.root)

    def check(self) -> None:
        with zipfile.ZipFile(self.root):  # a corrupt directory, or a name flagged UTF-8 that is not
            pass

    def _after_open(self) -> None:
        self._by_name: dict[str, zipfile.ZipInfo] = {}
        for info in self._handle.infolist():  # the first of duplicate names, as entries() lists it
            if not info.is_dir() and not is_unsafe_name(info.filename):
                self._by_name.setdefault(clean_name(info.filename), info)

    def entries(self) -> Iterator[Entry | SkippedEntry]:
        with zipfile.ZipFile(self.root) as zf:
            members = [i for i in zf.infolist() if not i.is_dir()]
        members.sort(key=lambda i: clean_name(i.filename).split("/"))  # as a folder is walked
        previous = None
        for info in members:
            name = clean_name(info.filename)
            if is_unsafe_name(info.filename):
                yield SkippedEntry(info.filename, UNSAFE_NAME)
            elif _zip_link(info):
                yield SkippedEntry(name, ARCHIVE_LINK)
            elif info.flag_bits & 0x1:
                yield SkippedEntry(name, "encrypted file in archive")
            elif name == previous:  # read() returns the first of the name
                yield SkippedEntry(name, "duplicate name in archive: the first file of this name is the study",
                                   "skipped")
            else:
                yield Entry(name, info.file_size)
            previous = name

    def read(self, path: str) -> bytes:
        if is_unsafe_name(path):
            raise StudyError(UNSAFE_NAME)
        zf = self._opened()
        info = self._by_name.get(clean_name(path))
        if info is None:
            raise StudyError("no such file in archive")
        if _zip_link(info):
            raise StudyError(ARCHIVE_LINK)
        check_size(info.file_size, self.max_bytes)
        try:
            with zf.open(info) as member:
                return read_capped(member, self.max_bytes, info.file_size)
        except RuntimeError:  # zipfile's "encrypted, password required"
            raise StudyError("encrypted file in archive") from None
        except NotImplementedError:
            raise StudyError("unsupported zip compression method") from None
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise_if_transient(exc)
            raise StudyError(f"corrupt file in archive ({type(exc).__name__})") from None


# --- tar ---------------------------------------------------------------------------------------


class TarArchive(_PerProcessHandle):
    """Plain, gzip, bzip2 or xz tar. Members are read in archive order (a tar has no index);
    ``read`` scans forward for a name it has not met yet and remembers where each member is
    (a name -> TarInfo map that grows with the part of the archive scanned). In a plain tar a
    member is one seek away; a compressed tar must be decompressed from its start up to the
    member, so chunks of a large .tar.gz cost more the later they lie: plain tar or zip is the
    format to ask a hospital for."""

    kind = "tar"

    def _open(self) -> tarfile.TarFile:
        return tarfile.open(self.root, "r:*")

    def _after_open(self) -> None:
        self._seen: dict[str, tarfile.TarInfo] = {}
        self._scanned_to_end = False

    def entries(self) -> Iterator[Entry | SkippedEntry]:
        with tarfile.open(self.root, "r:*") as tf:
            for member in _members(tf, self.root):
                if member.isdir():
                    continue
                name = clean_name(member.name)
                if not is_utf8(member.name):
                    yield SkippedEntry(printable_name(name), NOT_UTF8)
                elif is_unsafe_name(member.name):
                    yield SkippedEntry(member.name, UNSAFE_NAME)
                elif member.issym() or member.islnk():
                    yield SkippedEntry(name, ARCHIVE_LINK)
                elif not member.isreg():
                    yield SkippedEntry(name, "device or special file in archive")
                elif name:
                    yield Entry(name, member.size)

    def _find(self, name: str) -> tarfile.TarInfo | None:
        tf = self._opened()
        while name not in self._seen and not self._scanned_to_end:
            member = tf.next()
            tf.members.clear()
            if member is None:
                self._scanned_to_end = True
            elif not member.isdir() and not is_unsafe_name(member.name):
                self._seen.setdefault(clean_name(member.name), member)
        return self._seen.get(name)

    def read(self, path: str) -> bytes:
        if is_unsafe_name(path):
            raise StudyError(UNSAFE_NAME)
        try:
            member = self._find(clean_name(path))
            if member is None:
                raise StudyError("no such file in archive")
            if member.issym() or member.islnk():
                raise StudyError(ARCHIVE_LINK)
            if not member.isreg():
                raise StudyError("device or special file in archive")
            check_size(member.size, self.max_bytes)
            data = read_capped(self._handle.extractfile(member), self.max_bytes, member.size)
        except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
            raise_if_transient(exc)
            raise StudyError(f"corrupt file in archive ({type(exc).__name__})") from None
        if len(data) != member.size:
            raise StudyError("truncated file in archive")
        return data


def _members(tf: tarfile.TarFile, root: Path) -> Iterator[tarfile.TarInfo]:
    """Member by member, forgetting each one (TarFile keeps every member it has read otherwise)."""
    count = 0
    while True:
        try:
            member = tf.next()
        except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
            raise DataError(f"{root}: corrupt tar archive after {count} members ({type(exc).__name__})") from None
        tf.members.clear()
        if member is None:
            return
        count += 1
        yield member


# --- choosing the kind -------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveKind:
    detect: Callable[[Path], bool]  # called on an existing path; kinds exclude each other
    open: Callable[[Path, int], Archive]  # (path, max_bytes)


ARCHIVE_KINDS: Registry[ArchiveKind] = Registry("archive kind")


def _has_zip_magic(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) in ZIP_MAGIC


ARCHIVE_KINDS.register("folder")(ArchiveKind(detect=Path.is_dir, open=FolderArchive))
ARCHIVE_KINDS.register("zip")(ArchiveKind(detect=_has_zip_magic, open=ZipArchive))
ARCHIVE_KINDS.register("tar")(ArchiveKind(
    detect=lambda p: p.is_file() and not _has_zip_magic(p) and tarfile.is_tarfile(p), open=TarArchive))


def open_archive(path: Path, max_bytes: int = MAX_FILE_BYTES) -> Archive:
    """The archive at ``path``; DataError naming the path when it is missing or of no known kind.
    ``max_bytes``: the largest file ``read`` returns (MEDQ_MAX_STUDY_BYTES)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    try:
        for name in ARCHIVE_KINDS:
            kind = ARCHIVE_KINDS.get(name)
            if kind.detect(path):
                archive = kind.open(path, max_bytes)
                archive.check()
                return archive
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: a member name is flagged UTF-8 but is not (re-create the zip)") from None
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise DataError(f"{path}: cannot be opened as an archive ({type(exc).__name__})") from None
    raise DataError(f"{path}: not a folder, zip or tar archive "
                    f"(known kinds: {', '.join(ARCHIVE_KINDS.names())})")
