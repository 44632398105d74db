"""Study archives: what a hospital export enumerates to, what is refused, and that enumeration
streams. Folder, zip and tar are built here from a handful of small PNGs."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medq.common.errors import DataError
from medq.common.inference import archive as archive_module
from medq.common.inference.archive import (
    MAX_FILE_BYTES, NO_PERMISSION, NOT_UTF8, NOT_UTF8_FOLDER, OUTSIDE, UNSAFE_NAME, FolderArchive, TarArchive,
    ZipArchive, open_archive, read_capped,
)
from medq.common.inference.types import Entry, SkippedEntry, StudyError

# the folder order: per directory, by name ("a" before "a.png"; its contents come right after it)
FIVE = ["a/x.png", "a.png", "b/c/deep.png", "b/y.png", "z.png"]


def png_bytes(seed: int, size: int = 40) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def as_entries(archive) -> list[Entry | SkippedEntry]:
    return list(archive.entries())


@pytest.fixture
def five_folder(tmp_path) -> Path:
    root = tmp_path / "export"
    for k, name in enumerate(FIVE):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(png_bytes(k))
    return root


# --- choosing the kind -------------------------------------------------------------------------


def test_folder_zip_and_tar_of_the_same_files_enumerate_and_read_identically(five_folder, tmp_path):
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as zf:
        for name in reversed(FIVE):  # written out of order: the zip is sorted as a folder is walked
            zf.write(five_folder / name, name)
    for suffix, mode in ((".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")):
        with tarfile.open(tmp_path / f"export{suffix}", mode) as tf:
            tf.add(five_folder, arcname=".")  # like `tar -C export -cf export.tar .`: "./a/x.png"
    archives = [open_archive(five_folder), open_archive(tmp_path / "export.zip")] + [
        open_archive(tmp_path / f"export{s}") for s in (".tar", ".tar.gz", ".tgz")]

    assert [a.kind for a in archives] == ["folder", "zip", "tar", "tar", "tar"]
    expected = [Entry(name, (five_folder / name).stat().st_size) for name in FIVE]
    for archive in archives:
        assert as_entries(archive) == expected, archive.kind
        for name in reversed(FIVE):  # random access, backwards in a gzip stream too
            assert archive.read(name) == (five_folder / name).read_bytes()


def test_a_missing_path_or_a_file_that_is_no_archive_is_a_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="nowhere.zip: no such file or folder"):
        open_archive(tmp_path / "nowhere.zip")
    (tmp_path / "single.png").write_bytes(png_bytes(0))
    with pytest.raises(DataError, match=r"single.png: not a folder, zip or tar archive \(known kinds: folder, tar, zip\)"):
        open_archive(tmp_path / "single.png")
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(DataError, match="empty.tar: not a folder, zip or tar"):
        open_archive(tmp_path / "empty.tar")


def test_the_kind_comes_from_the_content_not_the_extension(five_folder, tmp_path):
    with zipfile.ZipFile(tmp_path / "export.tar", "w") as zf:  # a zip named .tar
        zf.write(five_folder / "z.png", "z.png")
    with tarfile.open(tmp_path / "export.zip", "w") as tf:  # a tar named .zip
        tf.add(five_folder / "z.png", arcname="z.png")
    assert open_archive(tmp_path / "export.tar").kind == "zip"
    assert open_archive(tmp_path / "export.zip").kind == "tar"


# --- unsafe members ----------------------------------------------------------------------------


def test_zip_members_with_dotdot_or_absolute_names_are_skipped_and_never_read(tmp_path):
    good = png_bytes(1)
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("../evil.png", good)
        zf.writestr(zipfile.ZipInfo("/etc/evil.png"), good)
        zf.writestr("scans/..\\..\\win.png", good)
        zf.writestr("scans/", b"")  # a directory: no entry
        zf.writestr("scans/good.png", good)
    archive = open_archive(tmp_path / "evil.zip")

    assert as_entries(archive) == [
        SkippedEntry("../evil.png", UNSAFE_NAME, "failed"),
        SkippedEntry("/etc/evil.png", UNSAFE_NAME, "failed"),
        SkippedEntry("scans/..\\..\\win.png", UNSAFE_NAME, "failed"),
        Entry("scans/good.png", len(good)),
    ]
    for name in ("../evil.png", "/etc/evil.png", "scans/../../evil.png"):
        with pytest.raises(StudyError, match=r"unsafe name in archive \(absolute or '..'\)"):
            archive.read(name)
    assert archive.read("scans/good.png") == good


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", target: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, len(data), target
    return info, io.BytesIO(data) if data else None


def test_tar_links_devices_and_unsafe_names_are_skipped_with_reasons(tmp_path):
    good = png_bytes(2)
    with tarfile.open(tmp_path / "evil.tar", "w") as tf:
        for info, data in (
            _tar_member("../evil.png", data=good),
            _tar_member("/abs.png", data=good),
            _tar_member("scans", tarfile.DIRTYPE),
            _tar_member("scans/link.png", tarfile.SYMTYPE, target="/etc/hostname"),
            _tar_member("scans/hard.png", tarfile.LNKTYPE, target="scans/good.png"),
            _tar_member("scans/tty", tarfile.CHRTYPE),
            _tar_member("scans/good.png", data=good),
            _tar_member("scans/empty.dcm"),
        ):
            tf.addfile(info, data)
    archive = open_archive(tmp_path / "evil.tar")

    assert as_entries(archive) == [
        SkippedEntry("../evil.png", UNSAFE_NAME),
        SkippedEntry("/abs.png", UNSAFE_NAME),
        SkippedEntry("scans/link.png", "link in archive (not followed)"),
        SkippedEntry("scans/hard.png", "link in archive (not followed)"),
        SkippedEntry("scans/tty", "device or special file in archive"),
        Entry("scans/good.png", len(good)),
        Entry("scans/empty.dcm", 0),  # zero bytes is a file: the reader fails it, not the archive
    ]
    with pytest.raises(StudyError, match="unsafe name"):
        archive.read("../evil.png")
    with pytest.raises(StudyError, match=r"link in archive \(not followed\)"):
        archive.read("scans/link.png")
    with pytest.raises(StudyError, match="device or special file"):
        archive.read("scans/tty")
    with pytest.raises(StudyError, match="no such file in archive"):
        archive.read("scans/absent.png")
    assert archive.read("scans/good.png") == good
    assert archive.read("scans/empty.dcm") == b""


def test_a_truncated_tar_is_a_data_error_at_enumeration_and_a_study_error_at_read(five_folder, tmp_path):
    with tarfile.open(tmp_path / "full.tar.gz", "w:gz") as tf:
        tf.add(five_folder, arcname=".")
    data = (tmp_path / "full.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) * 2 // 3])
    archive = open_archive(tmp_path / "cut.tar.gz")
    with pytest.raises(DataError, match=r"cut.tar.gz: corrupt tar archive after \d+ members"):
        as_entries(archive)
    with pytest.raises(StudyError, match="corrupt file in archive|truncated file in archive"):
        archive.read("z.png")

    with tarfile.open(tmp_path / "full.tar", "w") as tf:
        tf.add(five_folder, arcname=".")
    with tarfile.open(tmp_path / "full.tar") as tf:
        last = tf.getmember("./z.png")
    data = (tmp_path / "full.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: last.offset_data + 100])  # cut inside the last file
    archive = open_archive(tmp_path / "cut.tar")
    entries = []
    with pytest.raises(DataError, match=r"cut.tar: corrupt tar archive after 9 members"):
        entries.extend(archive.entries())
    assert [e.path for e in entries] == FIVE  # every file up to the cut was listed first
    assert archive.read("a.png") == (five_folder / "a.png").read_bytes()
    with pytest.raises(StudyError, match="truncated file in archive|corrupt file in archive"):
        archive.read("z.png")


# --- folders: symlinks, permissions, special files ---------------------------------------------


def test_folder_symlinks_out_of_the_archive_are_skipped_and_inside_ones_followed_once(tmp_path):
    root = tmp_path / "export"
    (root / "scans").mkdir(parents=True)
    (root / "scans/good.png").write_bytes(png_bytes(3))
    (root / "hostname").symlink_to("/etc/hostname")
    (root / "sneaky.png").symlink_to("../outside.png")
    (tmp_path / "outside.png").write_bytes(png_bytes(4))
    (root / "alias.png").symlink_to("scans/good.png")
    (root / "loop").symlink_to("loop")
    (root / "dangling.png").symlink_to("scans/gone.png")
    (root / "scans/self").symlink_to("..")  # a folder link: never walked, so no loop
    (root / "empty.dcm").write_bytes(b"")
    os.mkfifo(root / "pipe")
    archive = open_archive(root)

    size = len(png_bytes(3))
    assert as_entries(archive) == [
        Entry("alias.png", size),
        SkippedEntry("dangling.png", "broken symlink or symlink loop"),
        Entry("empty.dcm", 0),
        SkippedEntry("hostname", OUTSIDE),
        SkippedEntry("loop", "broken symlink or symlink loop"),
        SkippedEntry("pipe", "not a regular file (device, socket or pipe)"),
        Entry("scans/good.png", size),
        SkippedEntry("scans/self", "symlink to a folder (not followed)", state="skipped"),
        SkippedEntry("sneaky.png", OUTSIDE),
    ]
    assert archive.read("alias.png") == archive.read("scans/good.png")
    for name, reason in (("hostname", OUTSIDE), ("sneaky.png", OUTSIDE), ("../outside.png", "unsafe name"),
                         ("/etc/hostname", "unsafe name"), ("scans/self/hostname", OUTSIDE)):
        with pytest.raises(StudyError, match=reason):
            archive.read(name)
    with pytest.raises(StudyError, match="file no longer exists"):
        archive.read("dangling.png")


def test_an_unreadable_file_is_skipped_and_reading_it_fails_without_its_name(tmp_path, monkeypatch):
    """Real with chmod 000 for an ordinary user. Root reads everything (os.access says yes and
    open succeeds), so under root the permission check and the open are made to fail instead."""
    root = tmp_path / "export"
    root.mkdir()
    (root / "Doe John.png").write_bytes(png_bytes(5))
    (root / "Doe John.png").chmod(0)
    if os.geteuid() == 0:
        real_access, real_open = os.access, open

        def access(path, mode, *args, **kwargs):
            return False if str(path).endswith("Doe John.png") else real_access(path, mode, *args, **kwargs)

        def refusing_open(path, *args, **kwargs):
            if str(path).endswith("Doe John.png"):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(archive_module.os, "access", access)
        monkeypatch.setattr(archive_module, "open", refusing_open, raising=False)
    archive = open_archive(root)

    assert as_entries(archive) == [SkippedEntry("Doe John.png", NO_PERMISSION)]
    with pytest.raises(StudyError) as refused:
        archive.read("Doe John.png")
    assert str(refused.value) == NO_PERMISSION


def test_files_over_the_size_cap_are_refused_on_read(five_folder):
    archive = open_archive(five_folder, max_bytes=100)
    size = (five_folder / "z.png").stat().st_size
    with pytest.raises(StudyError, match=rf"file too large \({size:,} bytes; maximum 100, MEDQ_MAX_STUDY_BYTES\)"):
        archive.read("z.png")
    assert MAX_FILE_BYTES == 1024**3


# --- processes ---------------------------------------------------------------------------------


def _read_all(archive) -> list[bytes]:
    return [archive.read(name) for name in FIVE]


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_a_forked_or_unpickled_archive_reads_with_its_own_handle(kind, five_folder, tmp_path):
    path = tmp_path / f"export.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name in FIVE:
                zf.write(five_folder / name, name)
    else:
        with tarfile.open(path, "w") as tf:
            tf.add(five_folder, arcname=".")
    archive = open_archive(path)
    expected = [(five_folder / name).read_bytes() for name in FIVE]
    assert archive.read("z.png") == expected[-1]  # the parent's handle is open (and its offset moved)
    parent_handle = archive._handle

    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map(_read_all, [archive, archive]) == [expected, expected]
    clone = pickle.loads(pickle.dumps(archive))
    assert clone._handle is None and _read_all(clone) == expected
    assert archive._handle is parent_handle and _read_all(archive) == expected


# --- streaming ---------------------------------------------------------------------------------


def _peak_bytes(archive) -> tuple[int, int]:
    """(entries, peak traced bytes) of a second enumeration (the first warms caches and imports)."""
    sum(1 for _ in archive.entries())
    tracemalloc.start()
    try:
        count = sum(1 for _ in archive.entries())
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _nested_folder(root: Path, folders: int, per_folder: int = 200) -> None:
    for d in range(folders):
        folder = root / f"study{d:04d}"
        folder.mkdir(parents=True)
        for k in range(per_folder):
            (folder / f"{k:04d}.dcm").touch()


def test_folder_enumeration_memory_does_not_grow_with_the_number_of_files(tmp_path):
    """20 000 files vs 2 000, as an export is laid out (one folder per study, 200 files each):
    one directory listing is held at a time, so the peak stays flat. (A single flat folder of
    N files holds its N sorted names: memory grows with the largest folder, by design.)"""
    _nested_folder(tmp_path / "small", 10)
    _nested_folder(tmp_path / "large", 100)
    small = _peak_bytes(FolderArchive(tmp_path / "small"))
    large = _peak_bytes(FolderArchive(tmp_path / "large"))
    assert (small[0], large[0]) == (2_000, 20_000)
    assert large[1] < 2 * small[1], (small, large)


def _flat_tar(path: Path, count: int) -> None:
    with tarfile.open(path, "w") as tf:
        for k in range(count):
            tf.addfile(tarfile.TarInfo(f"s/{k:05d}.dcm"))


def test_tar_enumeration_forgets_members_as_it_goes(tmp_path):
    _flat_tar(tmp_path / "small.tar", 2_000)
    _flat_tar(tmp_path / "large.tar", 20_000)
    small = _peak_bytes(TarArchive(tmp_path / "small.tar"))
    large = _peak_bytes(TarArchive(tmp_path / "large.tar"))
    assert (small[0], large[0]) == (2_000, 20_000)
    assert large[1] < 2 * small[1], (small, large)


def test_zip_entries_are_archive_relative_posix_paths(tmp_path):
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as zf:
        zf.writestr("./Patient A//scan.png", b"1")
        zf.writestr("Patient A/scan.png", b"2")  # the same name once cleaned: one study, not two
    archive = ZipArchive(tmp_path / "x.zip")
    assert as_entries(archive) == [Entry("Patient A/scan.png", 1),
                                   SkippedEntry("Patient A/scan.png", "duplicate name in archive: the first file of "
                                                "this name is the study", "skipped")]
    assert archive.read("Patient A/scan.png") == b"1"


def test_names_that_are_not_utf8_fail_alone_with_a_name_the_store_can_keep(tmp_path):
    root = tmp_path / "export"
    root.mkdir()
    (root / "ok.png").write_bytes(b"x")
    os.close(os.open(bytes(root) + b"/caf\xe9.png", os.O_CREAT | os.O_WRONLY))
    os.mkdir(bytes(root) + b"/w\xffrd")
    with tarfile.open(tmp_path / "x.tar", "w", encoding="utf-8", errors="surrogateescape") as tf:
        info = tarfile.TarInfo("caf\udce9.png")
        tf.addfile(info, io.BytesIO(b""))
    folder = as_entries(open_archive(root))
    assert folder == [SkippedEntry("caf\\xe9.png", NOT_UTF8), Entry("ok.png", 1),
                      SkippedEntry("w\\xffrd", NOT_UTF8_FOLDER)]
    assert as_entries(open_archive(tmp_path / "x.tar")) == [SkippedEntry("caf\\xe9.png", NOT_UTF8)]
    assert all(e.path.encode("utf-8") for e in folder)  # storable as text


class _Lying:
    """A stream that produces more than its header declared (a zip bomb with a false size)."""

    def __init__(self, total: int):
        self.left = total

    def read(self, n: int) -> bytes:
        n = min(n, self.left)
        self.left -= n
        return b"\0" * n


def test_a_stream_that_inflates_past_the_limit_is_refused_holding_at_most_the_limit():
    assert read_capped(_Lying(10), limit=100, declared=10) == b"\0" * 10
    with pytest.raises(StudyError, match="over 100 bytes once decompressed, 10 declared"):
        read_capped(_Lying(10_000), limit=100, declared=10)


def test_a_zip_bomb_is_refused_on_its_declared_size_before_anything_is_inflated(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.dcm", b"\0" * 5_000_000)
    assert (tmp_path / "bomb.zip").stat().st_size < 20_000
    archive = open_archive(tmp_path / "bomb.zip", max_bytes=1_000_000)
    with pytest.raises(StudyError, match="file too large \\(5,000,000 bytes; maximum 1,000,000"):
        archive.read("bomb.dcm")


def test_a_corrupt_zip_or_one_with_a_false_utf8_name_is_refused_before_planning(tmp_path):
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("scan\u00e9.png", b"x")  # zipfile flags this name UTF-8
    data = good.read_bytes()
    (tmp_path / "false-utf8.zip").write_bytes(data.replace("scan\u00e9".encode(), b"scan\xff\xfe"))
    with pytest.raises(DataError, match="false-utf8.zip: a member name is flagged UTF-8 but is not"):
        open_archive(tmp_path / "false-utf8.zip")
    (tmp_path / "cut.zip").write_bytes(data[:-10])
    with pytest.raises(DataError, match=r"cut.zip: cannot be opened as an archive \(BadZipFile\)"):
        open_archive(tmp_path / "cut.zip")
