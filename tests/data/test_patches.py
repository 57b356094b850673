"""Tests for fedmammo.data.patches: patch geometry, background limit, identical pre-processing."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

import fedmammo.data.patches as patches_mod
from fedmammo.data.manifest import encode_lesions
from fedmammo.data.patches import (
    build_patch_set,
    extract_patch,
    healthy_patch_boxes,
    lesion_patch_box,
)
from fedmammo.errors import DataError


def _lesion(kind: str, box: list[float]) -> dict:
    return {"kind": kind, "shape": "oval", "malignant": True, "box": box}


def _breast(height: int = 200, width: int = 160, value: float = 0.5) -> np.ndarray:
    """Breast on the right half (value), background (0) on the left half."""
    image = np.zeros((height, width), dtype=np.float32)
    image[:, width // 2 :] = value
    return image


# --- lesion_patch_box -----------------------------------------------------------------


@pytest.mark.parametrize("spacing", [None, 0.07])
def test_lesion_box_has_exactly_60px_margin_on_longer_side_at_reference_spacing(spacing):
    # Prepare: a 40 x 20 lesion well inside a large image
    box = [200, 300, 240, 320]
    # Execute
    x0, y0, x1, y1 = lesion_patch_box(box, (1000, 800), spacing=spacing)
    # Assert: square; 60 px on both sides of the longer (x) extent; centred in y
    assert x1 - x0 == y1 - y0 == 40 + 120
    assert (box[0] - x0, x1 - box[2]) == (60, 60)
    assert (box[1] - y0, y1 - box[3]) == (70, 70)


def test_lesion_box_margin_scales_with_pixel_spacing():
    # Prepare: the same lesion at twice the reference spacing (half the pixels per mm)
    box = [200, 300, 240, 340]
    # Execute
    x0, y0, x1, y1 = lesion_patch_box(box, (1000, 800), spacing=0.14)
    fine = lesion_patch_box(box, (1000, 800), spacing=0.035)
    # Assert: margin 60 * 0.07 / 0.14 = 30 px, and 120 px at 0.035 mm
    assert (box[0] - x0, x1 - box[2], box[1] - y0, y1 - box[3]) == (30, 30, 30, 30)
    assert box[0] - fine[0] == 120


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ([5, 10, 45, 30], (0, 0, 160, 160)),  # overflows top-left
        ([270, 370, 300, 400], (150, 250, 300, 400)),  # 30 px lesion, 150 px side
    ],
)
def test_lesion_box_is_shifted_inside_the_image_keeping_its_size(box, expected):
    # Prepare: image 400 rows x 300 columns
    shape = (400, 300)
    # Execute
    result = lesion_patch_box(box, shape)
    # Assert: same square, translated (not cropped) inside the image, lesion still covered
    assert result == expected
    x0, y0, x1, y1 = result
    assert x0 <= box[0] and y0 <= box[1] and x1 >= box[2] and y1 >= box[3]


def test_lesion_box_larger_than_image_is_capped_to_a_square_inside():
    # Prepare: lesion + margins (160 px) larger than an 100 x 80 image
    # Execute
    x0, y0, x1, y1 = lesion_patch_box([20, 30, 60, 50], (100, 80))
    # Assert
    assert x1 - x0 == y1 - y0 == 80
    assert 0 <= x0 and 0 <= y0 and x1 <= 80 and y1 <= 100


def test_lesion_box_property_square_and_inside_for_random_boxes():
    # Prepare
    rng = np.random.default_rng(3)
    shape = (300, 200)
    for _ in range(200):
        x0, y0 = rng.uniform(0, 190), rng.uniform(0, 290)
        box = [x0, y0, x0 + rng.uniform(1, 40), y0 + rng.uniform(1, 40)]
        # Execute
        px0, py0, px1, py1 = lesion_patch_box(box, shape, spacing=float(rng.uniform(0.05, 0.1)))
        # Assert
        assert px1 - px0 == py1 - py0
        assert 0 <= px0 < px1 <= shape[1] and 0 <= py0 < py1 <= shape[0]


def test_empty_lesion_box_is_a_data_error():
    with pytest.raises(DataError, match="empty"):
        lesion_patch_box([10, 10, 10, 20], (100, 100))


# --- healthy_patch_boxes -----------------------------------------------------------------


def test_healthy_boxes_never_exceed_40_percent_background():
    # Prepare: half of the image is background, so many candidates must be rejected
    image = _breast(200, 160)
    rng = np.random.default_rng(0)
    # Execute
    boxes = healthy_patch_boxes(image, 50, size_px=48, rng=rng)
    # Assert
    assert len(boxes) == 50
    fractions = [np.mean(image[y0:y1, x0:x1] < 0.05) for x0, y0, x1, y1 in boxes]
    assert max(fractions) <= 0.4
    assert max(fractions) > 0.0  # the limit binds: boxes reach into the skin line
    assert all(x1 - x0 == y1 - y0 == 48 for x0, y0, x1, y1 in boxes)


def test_healthy_boxes_give_up_and_log_when_no_breast(caplog):
    # Prepare: an all-background image
    image = np.zeros((100, 100), dtype=np.float32)
    # Execute
    with caplog.at_level(logging.INFO, logger="fedmammo.data.patches"):
        boxes = healthy_patch_boxes(image, 3, size_px=32, rng=np.random.default_rng(0))
    # Assert
    assert boxes == []
    assert "found 0 of 3" in caplog.text


def test_healthy_boxes_accept_one_size_per_box():
    image = np.full((128, 128), 0.5, dtype=np.float32)
    boxes = healthy_patch_boxes(image, 3, size_px=[10, 20, 30], rng=np.random.default_rng(1))
    assert [b[2] - b[0] for b in boxes] == [10, 20, 30]


# --- extract_patch -------------------------------------------------------------------------


def test_extract_patch_downsamples_with_area_interpolation():
    # Prepare: a 2x2 checkerboard in a 256 px box; area averaging at 2x gives exactly 0.5
    image = (np.indices((256, 256)).sum(axis=0) % 2).astype(np.float32)
    # Execute
    patch = extract_patch(image, (0, 0, 256, 256), out_size=128)
    # Assert
    assert patch.shape == (128, 128) and patch.dtype == np.float32
    np.testing.assert_allclose(patch, 0.5, atol=1e-6)


def test_extract_patch_upsamples_small_boxes_without_changing_a_constant():
    image = np.full((100, 100), 0.3, dtype=np.float32)
    patch = extract_patch(image, (10, 10, 42, 42), out_size=64)
    assert patch.shape == (64, 64)
    np.testing.assert_allclose(patch, 0.3, atol=1e-6)


def test_extract_patch_random_zoom_and_shift_moves_the_patch():
    # Prepare: a horizontal ramp, so the patch mean reveals its x position
    image = np.tile(np.linspace(0, 1, 400, dtype=np.float32), (400, 1))
    box = (150, 150, 250, 250)
    centred = extract_patch(image, box, out_size=32)
    rng = np.random.default_rng(0)
    # Execute
    jittered = [extract_patch(image, box, out_size=32, rng=rng) for _ in range(200)]
    no_jitter = extract_patch(image, box, out_size=32, rng=rng, zoom_sd=0.0, shift_sd=0.0)
    # Assert: centred on average, but spread (shift sd 10% of 100 px on a 1/400 ramp)
    means = np.array([p.mean() for p in jittered])
    assert abs(means.mean() - centred.mean()) < 0.01
    assert 0.015 < means.std() < 0.04
    np.testing.assert_allclose(no_jitter, centred, atol=1e-6)


def test_same_box_same_rng_gives_identical_patches_whatever_the_class():
    # Prepare
    image = np.random.default_rng(0).random((300, 300)).astype(np.float32)
    box = (40, 60, 200, 220)
    # Execute: "lesion" and "healthy" extraction share one function and its arguments
    lesion = extract_patch(image, box, out_size=64, rng=np.random.default_rng(7))
    healthy = extract_patch(image, box, out_size=64, rng=np.random.default_rng(7))
    # Assert
    np.testing.assert_array_equal(lesion, healthy)


# --- build_patch_set -----------------------------------------------------------------------


@pytest.fixture
def centre():
    images = {
        "les1": _breast(256, 200, 0.6),
        "les2": _breast(256, 200, 0.7),
        "h1": _breast(256, 200, 0.4),
        "h2": _breast(256, 200, 0.45),
    }
    rows = pd.DataFrame(
        {
            "image_id": ["les1", "les2", "h1", "h2"],
            "lesions": [
                encode_lesions(
                    [
                        _lesion("mass", [130, 100, 150, 120]),
                        _lesion("calcification", [150, 30, 160, 40]),
                    ]
                ),
                encode_lesions([_lesion("mass", [120, 150, 160, 170])]),
                encode_lesions([]),
                pd.NA,
            ],
            "pixel_spacing": [0.14, 0.14, 0.14, pd.NA],
            "malignant": [1, 1, 0, pd.NA],
        }
    )
    return images, rows


def test_build_patch_set_all_lesions_balanced_with_healthy(centre):
    images, rows = centre
    # Execute
    ps = build_patch_set(images, rows, lesion_types="all", out_size=32, seed=0)
    # Assert: 3 lesions, as many healthy patches by default, from healthy images only
    assert ps.patches.shape == (6, 32, 32) and ps.patches.dtype == np.float32
    assert ps.labels.tolist() == [1, 1, 1, 0, 0, 0]
    assert sorted(ps.kinds[:3]) == ["calcification", "mass", "mass"]
    assert set(ps.image_ids[ps.labels == 0]) <= {"h1", "h2"}
    assert set(ps.kinds[ps.labels == 0]) == {"healthy"}
    for (x0, y0, x1, y1), image_id in zip(ps.boxes[ps.labels == 0], ps.image_ids[ps.labels == 0]):
        assert np.mean(images[image_id][y0:y1, x0:x1] < 0.05) <= 0.4


def test_build_patch_set_masses_only_and_spacing_margin(centre):
    images, rows = centre
    ps = build_patch_set(images, rows, lesion_types="masses", healthy_per_image=1, out_size=32)
    assert ps.labels.tolist() == [1, 1, 0, 0]
    assert set(ps.kinds[ps.labels == 1]) == {"mass"}
    # margin at 0.14 mm/pixel is 30 px: 20 px lesion -> 80 px square
    x0, y0, x1, y1 = ps.boxes[0]
    assert (x1 - x0, 130 - x0) == (80, 30)


def test_build_patch_set_uses_one_preprocessing_call_for_both_classes(centre, monkeypatch):
    # Prepare: record every call to extract_patch made while building the set
    images, rows = centre
    calls: list[dict] = []
    original = patches_mod.extract_patch

    def recording(image, box, **kwargs):
        calls.append(dict(kwargs))
        return original(image, box, **kwargs)

    monkeypatch.setattr(patches_mod, "extract_patch", recording)
    # Execute
    ps = build_patch_set(images, rows, out_size=32, augment=True, seed=1)
    # Assert: identical keyword arguments (same rng object, same zoom/shift) for both classes
    assert len(calls) == len(ps)
    lesion_kwargs = [c for c, y in zip(calls, ps.labels) if y == 1]
    healthy_kwargs = [c for c, y in zip(calls, ps.labels) if y == 0]
    assert all(c == lesion_kwargs[0] for c in lesion_kwargs + healthy_kwargs)
    assert lesion_kwargs[0]["rng"] is not None


def test_build_patch_set_without_augmentation_reproduces_extract_patch(centre):
    images, rows = centre
    ps = build_patch_set(images, rows, out_size=32, seed=2)
    for patch, box, image_id in zip(ps.patches, ps.boxes, ps.image_ids):
        np.testing.assert_array_equal(patch, extract_patch(images[image_id], box, out_size=32))


def test_build_patch_set_rejects_bad_inputs(centre):
    images, rows = centre
    with pytest.raises(DataError, match="unknown lesion subset 'tumours'"):
        build_patch_set(images, rows, lesion_types="tumours")
    images = dict(images, les1=(images["les1"] * 1000).astype(np.uint16))
    with pytest.raises(DataError, match="les1"):
        build_patch_set(images, rows)


def test_patch_set_select_keeps_fields_aligned(centre):
    images, rows = centre
    ps = build_patch_set(lambda i: images[i], rows, out_size=32)
    sub = ps.select(ps.labels == 0)
    assert len(sub) == 3 and set(sub.kinds) == {"healthy"} and sub.boxes.shape == (3, 4)


def test_lesion_on_background_or_outside_gives_no_blank_patch(caplog):
    # Prepare: breast on the right half; lesions well inside, at the breast edge (3/4 breast),
    # on the background (left half, as when the breast mask cut it) and half beyond the image
    image = _breast(200, 160, 0.5)
    image[100:110, 120:130] = 0.9  # the inner lesion
    image[50:60, 75:85] = 0.9  # the edge lesion (its breast part)
    lesions = [
        _lesion("mass", [120, 100, 130, 110]),
        _lesion("mass", [77, 50, 87, 60]),
        _lesion("calcification", [10, 10, 30, 30]),
        _lesion("mass", [150, 190, 170, 210]),
    ]
    rows = pd.DataFrame({"image_id": ["x"], "lesions": [encode_lesions(lesions)], "malignant": [1]})
    # Execute
    with caplog.at_level(logging.WARNING, logger="fedmammo.data.patches"):
        ps = build_patch_set({"x": image}, rows, out_size=16, margin_px=5)
    # Assert: the background lesion is skipped and logged; every lesion patch holds its
    # lesion box (clipped to the image) and differs from background
    assert ps.labels.tolist() == [1, 1, 1]
    assert any("skipped 1 lesion boxes" in r.message for r in caplog.records)
    for lesion, (x0, y0, x1, y1), patch in zip(
        [lesions[0], lesions[1], lesions[3]], ps.boxes, ps.patches, strict=True
    ):
        bx0, by0, bx1, by1 = lesion["box"]
        assert x0 <= bx0 and y0 <= by0 and min(bx1, 160) <= x1 and min(by1, 200) <= y1
        assert np.mean(patch < 0.05) < 0.5 and patch.mean() > 0.3


def test_every_lesion_patch_shows_breast_for_random_boxes():
    # Property: whatever the box, a lesion patch is made only when its lesion is on the breast
    rng = np.random.default_rng(0)
    image = _breast(120, 100, 0.6)
    for _ in range(200):
        x0, y0 = rng.integers(-20, 110), rng.integers(-20, 130)
        box = [int(x0), int(y0), int(x0 + rng.integers(1, 30)), int(y0 + rng.integers(1, 30))]
        rows = pd.DataFrame(
            {"image_id": ["x"], "lesions": [encode_lesions([_lesion("mass", box)])]}
        )
        ps = build_patch_set({"x": image}, rows, out_size=8, healthy_per_image=0, margin_px=2)
        cx0, cy0 = max(box[0], 0), max(box[1], 0)
        cx1, cy1 = min(box[2], 100), min(box[3], 120)
        on_breast = cx1 > cx0 and cy1 > cy0 and np.mean(image[cy0:cy1, cx0:cx1] >= 0.05) >= 0.5
        assert len(ps) == int(on_breast)
        if on_breast:
            px0, py0, px1, py1 = ps.boxes[0]
            assert px0 <= cx0 and py0 <= cy0 and cx1 <= px1 and cy1 <= py1
            assert ps.patches[0].mean() > 0.05
