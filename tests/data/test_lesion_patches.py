"""Every lesion patch holds its lesion: boxes from the cache through patch_frame to patches."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from fedmammo.config import CentreProfile
from fedmammo.data.cache import ImageCache
from fedmammo.data.manifest import encode_lesions
from fedmammo.data.patches import build_patch_set
from fedmammo.data.prepare import CentreData, materialise_centre
from fedmammo.training.patch_classifier import patch_frame


def test_image_whose_lesion_was_dropped_is_neither_lesion_nor_healthy(
    tmp_path, make_dicom, breast, caplog
) -> None:
    # Prepare: a benign image whose only lesion lies outside the breast mask (the cache drops
    # it), one with a lesion inside the breast, and a healthy one
    lost = {"kind": "mass", "shape": "oval", "malignant": False, "box": [40, 8, 52, 20]}
    kept = {"kind": "mass", "shape": "oval", "malignant": True, "box": [10, 50, 22, 62]}
    manifest = pd.DataFrame(
        [
            {
                "image_id": i,
                "patient_id": i,
                "path": str(make_dicom(breast(128, 96, seed=n))),
                "lesions": encode_lesions(les),
                "malignant": y,
                "split": "train",
                "pixel_spacing": 0.1,
            }
            for n, (i, les, y) in enumerate(
                [("lost", [lost], 0), ("kept", [kept], 1), ("healthy", [], 0)]
            )
        ]
    )
    cache = ImageCache.build(manifest, tmp_path / "cache", size=(64, 48))
    data = CentreData(name="X", manifest=cache.manifest, cache=cache)
    # Execute
    with caplog.at_level(logging.WARNING, logger="fedmammo.training.patch_classifier"):
        frame = patch_frame(data, "train")
    ps = build_patch_set(cache.get, frame, out_size=16, seed=0)
    # Assert: 'lost' is left out (logged), so it gives neither a blank lesion patch nor
    # healthy patches; 'kept' gives one lesion patch, 'healthy' the healthy one
    assert frame["image_id"].tolist() == ["kept", "healthy"]
    assert any("dropped 1 lesions" in r.message for r in caplog.records)
    assert ps.labels.tolist() == [1, 0] and "lost" not in ps.image_ids.tolist()


@pytest.mark.parametrize("style", ["film"])
def test_phantom_lesion_patches_all_hold_their_lesion(tmp_path, style) -> None:
    # Prepare: a phantom centre with a lesion in every image side that has one; the film
    # style has large fatty regions that the breast mask can cut off (lesions at the edge)
    segment = {"manufacturer": "Mb", "patients": 24, "prevalence": 0.5, "lesion_prevalence": 1.0}
    if style:
        segment["style"] = style
    profile = CentreProfile.model_validate(
        {"name": f"lp{style}", "data": {"synthetic": {"image_height": 128, "segments": [segment]}}}
    )
    data = materialise_centre(profile, tmp_path, image_size=(80, 60))
    # Execute
    frame = patch_frame(data, None)
    ps = build_patch_set(data.cache.get, frame, out_size=16, seed=0, margin_px=60)
    # Assert: every cached lesion box lies in the image with positive size and on the breast;
    # every lesion patch contains its box and is not background
    n_boxes = 0
    for row in frame.itertuples():
        image = data.cache.get(row.image_id)
        for lesion in json.loads(row.lesions):
            x0, y0, x1, y1 = lesion["box"]
            assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
            region = image[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
            assert np.mean(region > 0) >= 0.5
            n_boxes += 1
    lesion = ps.labels == 1
    assert lesion.sum() == n_boxes > 0
    for patch, box, image_id in zip(ps.patches[lesion], ps.boxes[lesion], ps.image_ids[lesion]):
        assert np.mean(patch < 0.05) < 0.5, (image_id, box)
