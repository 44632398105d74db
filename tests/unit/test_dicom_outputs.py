"""What every DICOM output shares: stable UIDs, the checkpoint hash, headers, files on disk."""

from __future__ import annotations

import hashlib
import os
import pickle

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID, ImplicitVRLittleEndian, generate_uid

from medq.common.inference import dicom_outputs
from medq.common.inference.dicom_outputs import (
    Algorithm, checkpoint_digest, derived_uid, header_of, write_dicom,
)
from medq.common.inference.types import StudyError
from tests.unit.dicom_series import ALGORITHM, strict_writing


def test_derived_uids_are_valid_and_the_same_for_the_same_parts():
    uid = derived_uid("job 7", "1.2.3.4", "seg-series")
    assert uid == derived_uid("job 7", "1.2.3.4", "seg-series")  # a re-sent study keeps its UIDs
    assert UID(uid).is_valid and uid.startswith("2.25.") and len(uid) <= 64
    others = {derived_uid("job 8", "1.2.3.4", "seg-series"), derived_uid("job 7", "1.2.3.4", "seg-instance"),
              derived_uid("job 7", "1.2.3.", "4seg-series")}  # parts are not simply glued together
    assert uid not in others and len(others) == 3
    with pytest.raises(ValueError):
        derived_uid()


def test_pydicom_generate_uid_without_a_prefix_ignores_its_entropy():
    """Why derived_uid makes its own UUID: this call, the obvious one, is random."""
    assert generate_uid(prefix=None, entropy_srcs=["a"]) != generate_uid(prefix=None, entropy_srcs=["a"])


def test_checkpoint_digest_is_the_files_sha256_and_hashes_each_file_once(tmp_path, monkeypatch):
    monkeypatch.setattr(dicom_outputs, "_digests", {})
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    first.write_bytes(os.urandom(3 * 1024 * 1024 + 5))  # more than one 1 MiB block
    second.write_bytes(b"second member")
    assert checkpoint_digest(first) == hashlib.sha256(first.read_bytes()).hexdigest()
    both = hashlib.sha256(first.read_bytes() + second.read_bytes()).hexdigest()
    assert checkpoint_digest([first, second]) == both
    assert checkpoint_digest([second, first]) != both

    stat = first.stat()  # the same size and time: the cached digest, the file is not read again
    remembered = checkpoint_digest(first)
    first.write_bytes(b"x" * stat.st_size)
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert checkpoint_digest(first) == remembered
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # rewritten: hashed again
    assert checkpoint_digest(first) == hashlib.sha256(b"x" * stat.st_size).hexdigest()


def test_the_algorithm_identifies_itself_as_medq_ai_with_job_and_checkpoint():
    (item,) = ALGORITHM.identification()
    assert item.AlgorithmName == "medq CT lesion UNet++" and item.AlgorithmVersion == "0.1.0"
    family = item.AlgorithmFamilyCodeSequence[0]
    assert (family.CodeValue, family.CodingSchemeDesignator, family.CodeMeaning) == (
        "123110", "DCM", "Artificial Intelligence")
    assert item.AlgorithmParameters == "family=segment,checkpoint_sha256=0123456789abcdef,model_job=42"
    assert ALGORITHM.device_uid == Algorithm("segment", "other title", "0.2", None, "0123456789abcdef" * 4).device_uid
    with pytest.raises(ValueError, match="over 64 characters"):
        Algorithm("segment", "x" * 70, "0.1.0", None, "00")


def test_a_header_has_no_pixel_data_and_travels_through_pickle():
    data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    header = header_of(data)
    assert "PixelData" not in header and header.Rows == 128
    again = pickle.loads(pickle.dumps(header))
    assert again.SOPInstanceUID == header.SOPInstanceUID and again.file_meta.TransferSyntaxUID == header.file_meta.TransferSyntaxUID
    assert len(pickle.dumps(header)) < len(data) // 2  # not the file's bytes again
    with pytest.raises(StudyError, match="unrecognised file format"):
        header_of(b"not a DICOM file at all " * 10)


def test_write_dicom_adds_the_file_meta_and_leaves_no_partial_file(tmp_path):
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", derived_uid("t", "sc")
    ds.PatientID, ds.Modality = "P1", "OT"
    with strict_writing():
        path = write_dicom(tmp_path / "out" / "sc.dcm", ds)
    assert path.read_bytes()[128:132] == b"DICM" and sorted(p.name for p in path.parent.iterdir()) == ["sc.dcm"]
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # explicit VR little endian
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID and back.PatientID == "P1"

    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # the dataset's own syntax is kept
    assert pydicom.dcmread(write_dicom(tmp_path / "implicit.dcm", ds)).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian

    broken = Dataset()  # no SOP instance: nothing at all is written
    with pytest.raises(AttributeError):
        write_dicom(tmp_path / "broken.dcm", broken)
    assert not (tmp_path / "broken.dcm").exists() and not (tmp_path / "broken.dcm.tmp").exists()
