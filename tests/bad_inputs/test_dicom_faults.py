"""Bad DICOM input, one row per fault: the message names file and tag; the other images survive.

Each cache row writes one faulty file beside two readable ones and builds the image cache:
the faulty image is skipped with a one-line reason naming the file (and the DICOM tag where
one is at fault), a warning is logged, and the two readable images are cached exactly as they
are when read alone. The adapter rows do the same through the dicom-folder adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from bad_inputs_builders import dicoms, good_dicom, manifest_of, trees

from fedmammo.data.adapters import load_manifest
from fedmammo.data.cache import ImageCache

Make = Callable[[Path], Path]
WINDOW = {"WindowCenter": 900, "WindowWidth": 1800}


def header(**tags: object) -> Make:
    """A readable image written with ``tags`` (None deletes a tag)."""
    return lambda path: good_dicom(path, **tags)


def element(keyword: str, vr: str, value: object, **tags: object) -> Make:
    """A readable image whose ``keyword`` is then stored raw as ``vr`` holding ``value``."""
    return lambda path: dicoms.set_element(good_dicom(path, **tags), keyword, vr, value)


def truncated(keep: int) -> Make:
    """A readable image cut to its first ``keep`` bytes (negative: all but the last -keep)."""

    def make(path: Path) -> Path:
        data = good_dicom(path).read_bytes()
        path.write_bytes(data[:keep])
        return path

    return make


def cut_in_compressed_pixels(path: Path) -> Path:
    """A JPEG 2000 image cut short inside its encapsulated pixel data, as a download cut short
    is (pydicom stops at the end of the file with a warning and drops the pixel data)."""
    trees.write_dicom(path, jpeg2000=True)
    path.write_bytes(path.read_bytes()[:-12])
    return path


def syntax(uid: bytes) -> Make:
    """A readable image whose file meta claims transfer syntax ``uid`` (same byte length)."""

    def make(path: Path) -> Path:
        data = good_dicom(path).read_bytes()
        old = b"1.2.840.10008.1.2.1\0"  # Explicit VR Little Endian, as written
        assert data.count(old) == 1 and len(uid) == len(old)
        path.write_bytes(data.replace(old, uid))
        return path

    return make


def raw_file(content: bytes | None) -> Make:
    """A file holding ``content`` (None: no file at all)."""

    def make(path: Path) -> Path:
        if content is not None:
            path.write_bytes(content)
        return path

    return make


def jpeg2000_stream(path: Path) -> Path:
    """A JPEG 2000 file whose codestream is truncated garbage (the adapters' fake one)."""
    trees.write_dicom(path, jpeg2000=True)
    return path


CACHE_FAULTS = [
    # --- missing tags
    pytest.param(header(Rows=None), "(0028,0010) Rows is missing", id="missing-rows"),
    pytest.param(header(Columns=None), "(0028,0011) Columns is missing", id="missing-columns"),
    pytest.param(
        header(BitsAllocated=None), "(0028,0100) BitsAllocated is missing", id="missing-bits"
    ),
    pytest.param(
        header(PhotometricInterpretation=None),
        "(0028,0004) PhotometricInterpretation=-",
        id="missing-photometric",
    ),
    pytest.param(header(PixelData=None), "no (7FE0,0010) PixelData", id="missing-pixel-data"),
    # --- NaN and infinity
    pytest.param(
        element("RescaleSlope", "DS", "NaN"),
        "(0028,1053) RescaleSlope='NaN' is not a finite number",
        id="nan-slope",
    ),
    pytest.param(
        element("RescaleSlope", "DS", "inf"),
        "(0028,1053) RescaleSlope='inf' is not a finite number",
        id="inf-slope",
    ),
    pytest.param(
        element("RescaleIntercept", "DS", "NaN"),
        "(0028,1052) RescaleIntercept='NaN' is not a finite number",
        id="nan-intercept",
    ),
    pytest.param(
        element("RescaleIntercept", "DS", "-inf"),
        "(0028,1052) RescaleIntercept='-inf' is not a finite number",
        id="minus-inf-intercept",
    ),
    pytest.param(
        element("WindowCenter", "DS", "NaN", **WINDOW),
        "(0028,1050) WindowCenter='NaN' is not a finite number",
        id="nan-window-center",
    ),
    pytest.param(
        element("WindowWidth", "DS", "NaN", **WINDOW),
        "(0028,1051) WindowWidth='NaN' is not a finite number",
        id="nan-window-width",
    ),
    pytest.param(
        element("PixelPaddingValue", "DS", "nan"),
        "(0028,0120) PixelPaddingValue='nan' is not a finite number",
        id="nan-padding-value",
    ),
    # --- negative or zero
    pytest.param(
        element("Rows", "SS", -5), "(0028,0010) Rows=-5 must be a positive", id="negative-rows"
    ),
    pytest.param(
        element("Columns", "US", 0), "(0028,0011) Columns=0 must be a positive", id="zero-columns"
    ),
    pytest.param(
        element("SamplesPerPixel", "US", 0),
        "(0028,0002) SamplesPerPixel=0 must be a positive",
        id="zero-samples",
    ),
    pytest.param(
        header(WindowCenter=900, WindowWidth=-100),
        "(0028,1051) WindowWidth=-100.0 must be >= 1",
        id="negative-window-width",
    ),
    pytest.param(element("RescaleSlope", "DS", "0"), "(0028,1053) RescaleSlope=0", id="zero-slope"),
    # --- huge
    pytest.param(
        header(Rows=40000, Columns=40000),
        "1,600 megapixels exceeds the reader's cap of 100",
        id="huge-40000-squared",
    ),
    pytest.param(
        header(Rows=20000, Columns=5001),
        "(0028,0011) Columns=5001",
        id="huge-just-over-the-cap",
    ),
    pytest.param(header(NumberOfFrames=2), "(0028,0008) NumberOfFrames=2", id="multi-frame"),
    # --- wrong VR or invalid codes
    pytest.param(
        element("RescaleSlope", "LO", "abc"),
        "(0028,1053) RescaleSlope='abc' is not a number",
        id="text-slope",
    ),
    pytest.param(
        element("RescaleIntercept", "DS", "one"),
        "(0028,1052) RescaleIntercept='one' is not a number",
        id="text-intercept",
    ),
    pytest.param(
        element("WindowCenter", "OB", b"\x01\x02", **WINDOW),
        "(0028,1050) WindowCenter=b'\\x01\\x02' is not a number",
        id="bytes-window-center",
    ),
    pytest.param(
        element("Rows", "DS", "64.5"), "(0028,0010) Rows='64.5' is not an integer", id="real-rows"
    ),
    pytest.param(
        element("BitsAllocated", "US", 12),
        "(0028,0100) BitsAllocated=12 must be 1, 8, 16, 32 or 64",
        id="bits-allocated-12",
    ),
    pytest.param(
        header(BitsStored=20),
        "(0028,0101) BitsStored=20 exceeds (0028,0100) BitsAllocated=16",
        id="bits-stored-over-allocated",
    ),
    pytest.param(
        element("PixelRepresentation", "US", 2),
        "(0028,0103) PixelRepresentation must be 0 or 1",
        id="pixel-representation-2",
    ),
    pytest.param(
        header(VOILUTFunction="CUBIC", **WINDOW),
        "(0028,1056) VOILUTFunction='CUBIC'",
        id="unknown-voi-function",
    ),
    # --- truncated pixel data
    pytest.param(truncated(-200), "pixel data is less than expected", id="truncated-file"),
    pytest.param(
        header(PixelData=b"\0" * 100), "pixel data is less than expected", id="short-pixel-data"
    ),
    pytest.param(truncated(300), "no (7FE0,0010) PixelData", id="cut-in-the-header"),
    pytest.param(
        cut_in_compressed_pixels,
        "the file ends before its (7FE0,0010) PixelData (",
        id="cut-in-compressed-pixels",
        marks=pytest.mark.filterwarnings("ignore:End of file reached"),
    ),
    # --- wrong transfer syntax
    pytest.param(
        syntax(b"1.2.840.10008.1.2.5\0"),
        "pixel data cannot be decoded as RLE Lossless",
        id="rle-declared-raw-pixels",
        marks=pytest.mark.filterwarnings("ignore:The number of bytes of compressed pixel data"),
    ),
    pytest.param(
        syntax(b"1.2.840.99999.1.2.1\0"),
        "(0002,0010) TransferSyntaxUID=1.2.840.99999.1.2.1 is not a DICOM transfer syntax",
        id="not-a-transfer-syntax",
    ),
    pytest.param(
        syntax(b"1.2.840.10008.1.2.2\0"), "(7FE0,0010) PixelData", id="big-endian-declared"
    ),
    pytest.param(jpeg2000_stream, "JPEG 2000", id="broken-jpeg2000-stream"),
    # --- unreadable file
    pytest.param(raw_file(b"not a DICOM file\n" * 3), "not a readable DICOM", id="text-file"),
    pytest.param(raw_file(b""), "not a readable DICOM", id="empty-file"),
    pytest.param(raw_file(None), "file not found", id="missing-file"),
    # --- readable but refused
    pytest.param(
        header(PresentationIntentType="FOR PROCESSING"), "FOR PROCESSING", id="for-processing"
    ),
    pytest.param(
        lambda path: dicoms.write_dicom(path, np.full((64, 48), 700, dtype=np.uint16)),
        "no breast found (the image is blank)",
        id="blank-image",
    ),
]


@pytest.mark.parametrize(("make", "fragment"), CACHE_FAULTS)
def test_dicom_fault_is_skipped_and_the_others_are_cached(
    tmp_path: Path, good_pair, good_pixels, caplog, make: Make, fragment: str
) -> None:
    # Prepare: the faulty file beside the two readable ones
    bad = make(tmp_path / "bad.dcm")
    manifest = manifest_of({"good0": good_pair["good0"], "bad": bad, "good1": good_pair["good1"]})
    # Execute
    with caplog.at_level(logging.WARNING, logger="fedmammo.data.cache"):
        cache = ImageCache.build(manifest, tmp_path / "cache", size=(32, 24))
    # Assert: one line naming the file and what is wrong; the others cached as read alone
    [(image_id, reason)] = cache.skipped
    assert image_id == "bad" and str(bad) in reason and fragment in reason, reason
    assert "\n" not in reason
    assert any(r.getMessage().startswith("skipping image bad: ") for r in caplog.records)
    assert list(cache.manifest["image_id"]) == ["good0", "good1"]
    for image_id, expected in good_pixels.items():
        np.testing.assert_allclose(cache.get(image_id), expected, atol=0.5 / 65535 + 1e-7)


def _duplicate_uid(root: Path, good: dict[str, Path]) -> Path:
    import pydicom

    uid = str(pydicom.dcmread(good["good0"], stop_before_pixels=True).SOPInstanceUID)
    return good_dicom(root / "z_copy.dcm", SOPInstanceUID=uid)


ADAPTER_FAULTS = [
    pytest.param(
        _duplicate_uid,
        "duplicate SOPInstanceUID (the largest file is kept, as a smaller copy may be "
        "truncated; the first in path order among equal sizes)",
        id="duplicate-uid",
    ),
    pytest.param(
        lambda root, good: trees.write_garbage(root / "broken.dcm"),
        "unreadable DICOM header",
        id="unreadable-file",
    ),
    pytest.param(
        lambda root, good: good_dicom(root / "ct.dcm", Modality="CT"),
        "modality CT is not MG",
        id="wrong-modality",
    ),
]


@pytest.mark.parametrize(("make", "reason"), ADAPTER_FAULTS)
def test_dicom_fault_in_a_folder_is_skipped_and_the_others_listed(
    tmp_path: Path, caplog, make: Callable[[Path, dict[str, Path]], Path], reason: str
) -> None:
    # Prepare: two readable images and the faulty file in one folder
    good = {f"good{i}": good_dicom(tmp_path / f"good{i}.dcm", seed=i) for i in range(2)}
    bad = make(tmp_path, good)
    # Execute
    with caplog.at_level(logging.WARNING):
        df = load_manifest("dicom-folder", tmp_path)
    # Assert: counted under its reason, logged naming the file; the readable images listed
    assert df.attrs["skip_reasons"] == {reason: 1}
    assert sorted(df["path"]) == sorted(str(p.resolve()) for p in good.values())
    assert any(str(bad) in r.getMessage() and reason in r.getMessage() for r in caplog.records)


def test_a_stream_no_plugin_decodes_is_one_error_without_a_traceback_per_plugin(
    tmp_path: Path, caplog
) -> None:
    from fedmammo.data.dicom import UnreadableImageError, read_pixels

    bad = jpeg2000_stream(tmp_path / "bad.dcm")
    with caplog.at_level(logging.DEBUG), pytest.raises(UnreadableImageError) as error:
        read_pixels(bad)
    # one error naming the file and each plugin's failure; pydicom logged no traceback
    assert str(error.value).startswith(f"{bad}: pixel data cannot be decoded as JPEG 2000")
    assert "pylibjpeg" in str(error.value) and "\n" not in str(error.value)
    assert [
        r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR
    ] == []
    assert logging.getLogger("pydicom.pixels.decoders.base").filters == []  # removed after
