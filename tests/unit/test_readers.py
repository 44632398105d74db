"""Study files to display-ready grey images: real DICOM from pydicom and pydicom-data (a CR chest
radiograph, CT, MR, multi-frame, structured reports, compressed), and PNG/JPEG made here.
Expected pixel values are computed by hand from the stored values and the header's numbers."""

from __future__ import annotations

import io
import logging
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import JPEG2000, JPEGLSLossless

from medq.common.inference import dicom
from medq.common.inference.archive import open_archive
from medq.common.inference.readers import MAX_PIXELS, decode_image, sniff_format
from medq.common.inference.types import StudyError, StudySkipped


def shipped(name: str) -> Path:
    """A file shipped with pydicom or pydicom-data, never downloaded."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (it ships with pydicom-data)")
    return Path(path)


def file_bytes(name: str) -> bytes:
    return shipped(name).read_bytes()


def saved(ds) -> bytes:
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def expected_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR) to 0..255, written out."""
    fraction = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return np.rint(fraction * 255).astype(np.uint8)


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to a rounding step on a .5 boundary (float order of operations)."""
    difference = np.abs(actual.astype(int) - expected.astype(int))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99


# --- DICOM: real files -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chest():
    data = file_bytes("RG1_UNCR.dcm")
    return data, dcmread(io.BytesIO(data)), decode_image(data)


def test_a_cr_chest_radiograph_decodes_with_its_uids_and_nothing_about_the_patient(chest):
    data, ds, image = chest
    assert image.source_format == "dicom" and image.modality == "CR"
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == (1955, 1841) and image.size == (1841, 1955)
    assert image.uids == {"StudyInstanceUID": ds.StudyInstanceUID, "SeriesInstanceUID": ds.SeriesInstanceUID,
                          "SOPInstanceUID": ds.SOPInstanceUID}
    # this file stores PixelSpacing "0.000\0.000" and no ImagerPixelSpacing: no spacing, not 0 mm
    assert [float(v) for v in ds.PixelSpacing] == [0.0, 0.0] and "ImagerPixelSpacing" not in ds
    assert image.spacing_mm is None
    shown = repr((image.uids, image.modality, image.source_format, image.spacing_mm))
    for private in (str(ds.PatientName), ds.PatientID, "CompressedSamples"):
        assert private not in shown


def test_monochrome1_is_inverted_so_lungs_are_dark_and_the_mediastinum_bright(chest):
    data, ds, image = chest
    raw = ds.pixel_array.astype(np.float64)
    # WindowCenter 15000, WindowWidth 30000, MONOCHROME1: low stored values are shown white
    assert (ds.PhotometricInterpretation, float(ds.WindowCenter), float(ds.WindowWidth)) == ("MONOCHROME1", 15000, 30000)
    assert_close(image.pixels, 255 - expected_window(raw, 15000, 30000))

    h, w = image.pixels.shape
    region = lambda r0, r1, c0, c1: image.pixels[int(r0 * h):int(r1 * h), int(c0 * w):int(c1 * w)].mean()
    lungs = (region(0.25, 0.45, 0.20, 0.35) + region(0.25, 0.45, 0.62, 0.78)) / 2
    assert region(0.45, 0.65, 0.45, 0.55) - lungs > 50  # mediastinum against both lung fields

    ds.PhotometricInterpretation = "MONOCHROME2"
    assert np.array_equal(decode_image(saved(ds)).pixels, 255 - image.pixels)


def test_ct_goes_to_hounsfield_units_before_the_window():
    data = file_bytes("CT_small.dcm")
    ds = dcmread(io.BytesIO(data))
    raw = ds.pixel_array.astype(np.float64)
    hu = dicom.modality_values(ds, ds.pixel_array)
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    assert np.array_equal(hu, raw - 1024) and (hu.min(), hu.max()) == (-896, 1167)

    image = decode_image(data)  # no window in the file: the image's own HU range fills 0..255
    assert image.modality == "CT" and image.spacing_mm == (0.661468, 0.661468)
    assert np.array_equal(image.pixels, np.rint((hu + 896) * 255 / 2063).astype(np.uint8))

    ds.WindowCenter, ds.WindowWidth = 40, 400  # a soft-tissue window, in HU
    assert_close(decode_image(saved(ds)).pixels, expected_window(raw - 1024, 40, 400))


def test_mr_window_and_the_same_image_in_every_lossless_encoding_decodes_identically():
    data = file_bytes("MR_small.dcm")
    ds = dcmread(io.BytesIO(data))
    image = decode_image(data)
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (600, 1600) and "RescaleSlope" not in ds
    assert_close(image.pixels, expected_window(ds.pixel_array.astype(np.float64), 600, 1600))
    assert image.spacing_mm == (0.3125, 0.3125) and image.modality == "MR"

    no_meta = DicomBytesIO()
    no_meta.is_little_endian, no_meta.is_implicit_VR = True, True
    write_dataset(no_meta, ds)  # a bare dataset: no preamble, no DICM, no file meta
    variants = {name: file_bytes(name) for name in
                ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_jp2klossless.dcm")}
    variants["without preamble"] = data[132:]
    variants["without file meta"] = no_meta.getvalue()
    for name, variant in variants.items():
        assert np.array_equal(decode_image(variant).pixels, image.pixels), name


def test_spacing_comes_from_pixel_spacing_else_imager_pixel_spacing():
    ds = dcmread(shipped("CT_small.dcm"))
    ds.PixelSpacing = [0.5, 0.25]
    ds.ImagerPixelSpacing = [0.2, 0.3]
    assert decode_image(saved(ds)).spacing_mm == (0.5, 0.25)  # (row, column)
    del ds.PixelSpacing
    assert decode_image(saved(ds)).spacing_mm == (0.2, 0.3)
    del ds.ImagerPixelSpacing
    assert decode_image(saved(ds)).spacing_mm is None


def test_colour_dicom_becomes_grey_by_luma():
    ds = dcmread(shipped("US1_UNCR.dcm"))
    rgb = ds.pixel_array.astype(np.float64)
    luma = np.rint(rgb @ [0.299, 0.587, 0.114]).astype(np.uint8)
    assert ds.PhotometricInterpretation == "RGB"
    assert np.array_equal(decode_image(saved(ds)).pixels, luma)
    # YBR_FULL is turned into RGB first: the same picture stored both ways gives the same grey
    ybr, rgb = (decode_image(file_bytes(n)).pixels.astype(int)
                for n in ("SC_ybr_full_uncompressed.dcm", "SC_rgb.dcm"))
    assert np.abs(ybr - rgb).max() <= 2
    palette = decode_image(file_bytes("OBXXXX1A.dcm")).pixels  # PALETTE COLOR ultrasound
    assert palette.shape == (600, 800) and palette.std() > 10


def test_a_voi_lut_keeps_the_order_of_stored_values_and_fills_the_display_range():
    ds = dcmread(shipped("vlut_04.dcm"))
    assert "VOILUTSequence" in ds and "WindowCenter" not in ds
    pixels = decode_image(saved(ds)).pixels.ravel()
    order = np.argsort(ds.pixel_array.ravel(), kind="stable")
    assert (np.diff(pixels[order].astype(int)) >= 0).all()
    assert (pixels.min(), pixels.max()) == (0, 255)


@pytest.mark.parametrize("name, reason", [
    ("rtstruct.dcm", "no pixel data (RTSTRUCT)"),
    ("test-SR.dcm", "no pixel data (SR)"),
    ("waveform_ecg.dcm", "no pixel data (ECG)"),
])
def test_objects_without_pixels_are_skipped_not_failed(name, reason):
    with pytest.raises(StudySkipped) as skipped:
        decode_image(file_bytes(name))
    assert str(skipped.value) == reason and skipped.value.state == "skipped"


def test_without_a_modality_the_skip_reason_names_the_sop_class():
    ds = dcmread(shipped("test-SR.dcm"))
    del ds.Modality
    with pytest.raises(StudySkipped, match=r"^no pixel data \(Comprehensive SR Storage\)$"):
        decode_image(saved(ds))


def test_multi_frame_images_are_refused_with_the_frame_count():
    with pytest.raises(StudyError) as refused:
        decode_image(file_bytes("emri_small.dcm"))
    assert str(refused.value) == "multi-frame image (10 frames) is not supported"
    assert refused.value.state == "failed"


def test_a_compressed_syntax_without_a_decoder_is_refused_by_name():
    data = file_bytes("MR_small_jpeg_ls_lossless.dcm")
    if get_decoder(JPEGLSLossless).is_available:  # a JPEG-LS plugin is installed: it must decode
        assert np.array_equal(decode_image(data).pixels, decode_image(file_bytes("MR_small.dcm")).pixels)
        return
    with pytest.raises(StudyError) as refused:
        decode_image(data)
    assert str(refused.value) == ("compressed transfer syntax JPEG-LS Lossless Image Compression "
                                  "and no decoder installed")


@pytest.mark.parametrize("name, syntax", [("JPEG-LL.dcm", "JPEG Lossless"), ("JPGExtended.dcm", "JPEG Extended"),
                                          ("SC_rgb_jpeg_gdcm.dcm", "JPEG Lossless")])
def test_jpeg_lossless_and_extended_decode_with_the_dicom_extra(name, syntax):
    """medq[dicom] (pylibjpeg) decodes what Pillow cannot; without it they are refused by name."""
    data = file_bytes(name)
    ds = dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID.name.startswith(syntax)
    if not get_decoder(ds.file_meta.TransferSyntaxUID).is_available:
        with pytest.raises(StudyError, match=f"^compressed transfer syntax {syntax}.* and no decoder installed"):
            decode_image(data)
        pytest.skip("medq[dicom] is not installed (the CI installs it)")
    image = decode_image(data)
    assert image.pixels.shape == (ds.Rows, ds.Columns) and image.pixels.std() > 10


def test_pixel_data_every_installed_decoder_refuses_says_why_not_that_none_is_installed():
    data = file_bytes("JPEG-lossy.dcm")  # a 12-bit JPEG Extended file libjpeg finds a misplaced marker in
    if not get_decoder(dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID).is_available:
        pytest.skip("medq[dicom] is not installed (the CI installs it)")
    with pytest.raises(StudyError, match=r"^JPEG Extended \(Process 2 and 4\) pixel data that no installed decoder "
                                         r"could decode \(pylibjpeg: .*misplaced marker"):
        decode_image(data)


def test_jpeg2000_decodes_when_a_decoder_is_installed_and_is_refused_otherwise():
    data = file_bytes("JPEG2000.dcm")
    if not get_decoder(JPEG2000).is_available:
        with pytest.raises(StudyError, match="^compressed transfer syntax JPEG 2000 Image Compression and no decoder"):
            decode_image(data)
        return
    image = decode_image(data)  # Pillow built with OpenJPEG
    assert image.pixels.shape == (1024, 256) and image.spacing_mm == (2.26, 2.26)
    assert np.array_equal(image.pixels, decode_image(file_bytes("JPEG2000_UNC.dcm")).pixels)


def test_dicom_size_limits_are_checked_on_the_header_before_decoding():
    with pytest.raises(StudyError, match=r"^image too small \(3x3; minimum 32x32\)$"):
        decode_image(file_bytes("SC_rgb_small_odd.dcm"))
    ds = dcmread(shipped("CT_small.dcm"))
    ds.Rows = ds.Columns = 20000  # the pixel data is still 128 x 128: decoding would fail differently
    with pytest.raises(StudyError, match=r"^image too large \(20000x20000; maximum 16384 px a side"):
        decode_image(saved(ds))


def test_truncated_dicom_pixel_data_fails_the_study():
    with pytest.raises(StudyError, match=r"^truncated or corrupt pixel data"):
        decode_image(file_bytes("MR_truncated.dcm"))


def test_header_values_that_could_carry_a_name_are_neither_quoted_nor_returned(caplog):
    """pydicom warns (and logs) with the offending value quoted, and its conversion errors quote
    it too; neither may reach a log or a study record. Values are swapped in the file's bytes."""
    data = file_bytes("CT_small.dcm")
    ds = dcmread(io.BytesIO(data))
    uid = ds.StudyInstanceUID.encode()
    tampered = data.replace(uid, b"Doe^John".ljust(len(uid), b"."))
    with pytest.warns(UserWarning, match="Doe"):  # pydicom on its own does quote it
        dcmread(io.BytesIO(tampered)).StudyInstanceUID
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        image = decode_image(tampered)
        spacing = data.replace(b"0.661468\\0.661468", b"Doe^John\\0.661468")  # not a number
        assert decode_image(spacing).spacing_mm is None
    assert image.pixels.shape == (128, 128)
    assert set(image.uids) == {"SeriesInstanceUID", "SOPInstanceUID"}  # the malformed UID is left out
    assert not [w for w in caught if "Doe" in str(w.message)] and "Doe" not in caplog.text


def test_a_header_value_pydicom_cannot_convert_fails_the_study_without_quoting_it():
    def with_bad_value(keyword: str, placeholder: str) -> bytes:
        ds = dcmread(shipped("CT_small.dcm"))
        setattr(ds, keyword, placeholder)
        if keyword == "WindowCenter":
            ds.WindowWidth = "400"
        original = saved(ds)
        assert original.count(placeholder.encode()) == 1
        return original.replace(placeholder.encode(), b"Doe^John")  # same length: the file stays valid

    with pytest.raises(StudyError) as refused:
        decode_image(with_bad_value("NumberOfFrames", "12345678"))
    assert str(refused.value) == "malformed value in the DICOM header (ValueError)"
    # a window that is not a number is no window: the image's own range is shown
    unwindowed = decode_image(file_bytes("CT_small.dcm")).pixels
    assert np.array_equal(decode_image(with_bad_value("WindowCenter", "12345678")).pixels, unwindowed)


# --- what is not DICOM -------------------------------------------------------------------------


def test_files_that_only_look_like_dicom_are_unrecognised():
    junk = b"\x08\x00\x05\x00" + np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8).tobytes()
    for data in (junk, file_bytes("no_meta.dcm"), b"hello, this is a letter, not a scan\n" * 20):
        with pytest.raises(StudyError, match=r"^unrecognised file format \(not a DICOM, PNG, JPEG, BMP or TIFF file\)$"):
            decode_image(data)


def test_a_text_file_named_dcm_and_an_empty_file_in_an_archive_fail_with_reasons(tmp_path):
    (tmp_path / "x.dcm").write_text("PatientName: Doe^John\n")
    (tmp_path / "empty.png").write_bytes(b"")
    archive = open_archive(tmp_path)
    with pytest.raises(StudyError, match=r"not a DICOM, PNG, JPEG, BMP or TIFF file"):
        decode_image(archive.read("x.dcm"))
    with pytest.raises(StudyError, match="^empty file$"):
        decode_image(archive.read("empty.png"))


# --- PNG and JPEG ------------------------------------------------------------------------------


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR for width x height, one tiny IDAT, IEND: a few bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_png_grey_rgb_and_16_bit_become_8_bit_grey():
    gradient = np.tile(np.arange(64, dtype=np.uint8) * 4, (40, 1))
    image = decode_image(encoded(Image.fromarray(gradient)))
    assert image.source_format == "png" and np.array_equal(image.pixels, gradient)
    assert image.spacing_mm is None and image.uids == {} and image.modality is None

    colour = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 64, 3), dtype=np.uint8))
    assert np.array_equal(decode_image(encoded(colour)).pixels, np.asarray(colour.convert("L")))

    wide = np.full((40, 64), 3000, dtype=np.uint16)  # a 12-bit radiograph in a 16-bit PNG
    wide[0, 0], wide[0, 1] = 1000, 5000
    sixteen = Image.fromarray(wide)
    assert sixteen.mode.startswith("I;16")
    pixels = decode_image(encoded(sixteen)).pixels
    assert (pixels[0, 0], pixels[0, 1], pixels[5, 5]) == (0, 255, 128)  # by its own range 1000..5000


def test_jpeg_decodes_to_grey():
    smooth = np.add.outer(np.arange(48), np.arange(64)).astype(np.uint8) * 2
    image = decode_image(encoded(Image.fromarray(smooth).convert("RGB"), "JPEG", quality=95))
    assert image.source_format == "jpeg" and image.pixels.shape == (48, 64)
    assert np.abs(image.pixels.astype(int) - smooth).mean() < 2


def test_too_small_and_too_large_images_are_refused_before_decoding():
    with pytest.raises(StudyError, match=r"^image too small \(1x1; minimum 32x32\)$"):
        decode_image(encoded(Image.new("L", (1, 1))))
    with pytest.raises(StudyError, match=r"^image too small \(31x500; minimum 32x32\)$"):
        decode_image(encoded(Image.new("L", (31, 500))))
    huge = png_header_claiming(20000, 20000)
    assert len(huge) < 200
    tracemalloc.start()
    try:
        with pytest.raises(StudyError) as refused:
            decode_image(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(refused.value) == "image too large (20000x20000; maximum 16384 px a side and 100,000,000 pixels)"
    assert peak < 10 * 1024**2  # nothing near the 400 MB the header claims
    assert MAX_PIXELS == 100_000_000
    with pytest.raises(StudyError, match=r"^image too large \(10001x10000;"):  # sides fine, pixels not
        decode_image(png_header_claiming(10001, 10000))


def test_truncated_png_and_jpeg_fail_as_corrupt():
    noise = Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8))
    for data in (encoded(noise), encoded(noise, "JPEG")):
        with pytest.raises(StudyError, match="^truncated or corrupt image$"):
            decode_image(data[: len(data) // 2])


def test_the_reader_is_chosen_by_content():
    png = encoded(Image.new("L", (40, 40)))
    assert [sniff_format(d) for d in (png, encoded(Image.new("L", (40, 40)), "JPEG"),
                                      file_bytes("CT_small.dcm"), file_bytes("CT_small.dcm")[132:], b"GIF89a")] == [
        "png", "jpeg", "dicom", "dicom", None]


# --- BMP and TIFF (the ISBI cephalograms are BMP) -------------------------------------------


@pytest.mark.parametrize("fmt, name", [("BMP", "bmp"), ("TIFF", "tiff")])
def test_bmp_and_tiff_decode_to_the_same_grey_pixels(fmt, name):
    from io import BytesIO

    from PIL import Image

    grey = np.random.default_rng(1).integers(0, 256, (40, 56), dtype=np.uint8)
    for image in (Image.fromarray(grey), Image.fromarray(grey).convert("RGB")):
        buffer = BytesIO()
        image.save(buffer, format=fmt)
        decoded = decode_image(buffer.getvalue())
        assert decoded.source_format == name and decoded.size == (56, 40)
        np.testing.assert_array_equal(decoded.pixels, grey)


def test_a_truncated_bmp_fails_alone_with_a_reason():
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(buffer, format="BMP")
    with pytest.raises(StudyError, match="truncated or corrupt image"):
        decode_image(buffer.getvalue()[:300])


def test_the_spacing_says_which_attribute_it_came_from():
    """PixelSpacing is in the patient's plane, ImagerPixelSpacing at the detector: the CSV's
    millimetres say which."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    assert decode_image(file_bytes("CT_small.dcm")).spacing_source == "PixelSpacing"
    ds.ImagerPixelSpacing = [0.2, 0.25]
    del ds.PixelSpacing
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    image = decode_image(out.getvalue())
    assert image.spacing_mm == (0.2, 0.25) and image.spacing_source == "ImagerPixelSpacing"
    assert decode_image(file_bytes("RG1_UNCR.dcm")).spacing_source is None  # its PixelSpacing is 0.000
