"""Downstream inputs from a centre's cache: mass crops, CC-MLO matching pairs, labels.

Crops follow the paper (section IV-B): a square around the centre of the mass box whose side
is the box's long side enlarged by 20% (rounded to whole pixels), moved inside the image when
it overflows, then resized (224 in full runs, smaller in quick ones) with
:func:`fedmammo.data.patches.extract_patch`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedmammo.data.manifest import decode_lesions
from fedmammo.data.pairs import view_pairs
from fedmammo.data.patches import extract_patch, healthy_patch_boxes, lesion_patch_box
from fedmammo.data.prepare import CentreData
from fedmammo.errors import DataError
from fedmammo.evaluation.detection import box_iou
from fedmammo.training.patch_classifier import patch_frame

__all__ = [
    "CropSet",
    "MatchPairs",
    "birads_class",
    "density_labels",
    "downstream_frame",
    "mass_boxes",
    "mass_crop_box",
    "mass_crops",
    "matching_pairs",
]

logger = logging.getLogger(__name__)

Images = Callable[[str], np.ndarray] | Mapping[str, np.ndarray]
_EXTRA = ["laterality", "view", "manufacturer", "segment", "acr", "density"]


def downstream_frame(data: CentreData, split: str | None) -> pd.DataFrame:
    """Rows of a split with lesion boxes in the cache's frame plus view, vendor and labels."""
    frame = patch_frame(data, split)
    extra = data.manifest[["image_id", *_EXTRA]].astype({"image_id": str})
    return frame.merge(extra, on="image_id", how="left", validate="one_to_one")


def _load(images: Images, image_id: str) -> np.ndarray:
    return np.asarray(images[image_id] if isinstance(images, Mapping) else images(image_id))


def _usable(lesion: dict, kinds: Sequence[str]) -> bool:
    box = lesion.get("box")
    return lesion.get("kind") in kinds and bool(box) and box[2] > box[0] and box[3] > box[1]


def mass_boxes(lesions: object, kinds: Sequence[str] = ("mass",)) -> list[list[float]]:
    """Boxes of the lesions of ``kinds`` (manifest JSON or a list of records); boxes that are
    None (dropped by the cache) or empty are skipped."""
    records = lesions if isinstance(lesions, list) else decode_lesions(lesions)
    return [list(map(float, les["box"])) for les in records if _usable(les, kinds)]


def mass_crop_box(
    box: Sequence[float], image_shape: tuple[int, ...], *, enlarge: float = 0.2
) -> tuple[int, int, int, int]:
    """Square crop box: the mass box's long side enlarged by ``enlarge``, inside the image."""
    long_side = max(box[2] - box[0], box[3] - box[1])
    return lesion_patch_box(
        box, image_shape, margin_px=enlarge * long_side / 2, reference_spacing=1.0
    )


def birads_class(acr: object) -> int:
    """BI-RADS assessment -> class 0 (1-3), 1 (4) or 2 (5-6); -1 when missing.

    The paper's five classes (2-3, 4A, 4B, 4C, 5) need the 4A-4C subcategories, which the
    manifest's integer ``acr`` column does not hold.
    """
    if acr is None or pd.isna(acr):
        return -1
    value = int(acr)
    return 0 if value <= 3 else (1 if value == 4 else 2)


def density_labels(frame: pd.DataFrame, *, binary: bool = True) -> np.ndarray:
    """Density classes: dense (BI-RADS C/D) = 1 vs 0, or the four classes 0-3; -1 missing."""
    density = frame["density"].to_numpy(dtype="float64", na_value=np.nan)
    out = np.full(len(density), -1, dtype=np.int64)
    ok = np.isfinite(density)
    out[ok] = (density[ok] >= 3).astype(np.int64) if binary else density[ok].astype(np.int64) - 1
    return out


@dataclass
class CropSet:
    """Mass crops (N, S, S) with labels (-1 missing), source image, patient and segment."""

    crops: np.ndarray
    labels: np.ndarray
    image_ids: np.ndarray
    patient_ids: np.ndarray
    segments: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def mass_crops(
    images: Images,
    frame: pd.DataFrame,
    *,
    out_size: int = 224,
    enlarge: float = 0.2,
    label: str = "malignant",
    kinds: Sequence[str] = ("mass",),
) -> CropSet:
    """One crop per mass of ``frame``; ``label`` is ``malignant`` (the lesion's) or ``birads``."""
    if label not in ("malignant", "birads"):
        raise DataError(f"mass_crops: label must be 'malignant' or 'birads', got {label!r}")
    crops, labels, ids, patients, segments, boxes = [], [], [], [], [], []
    for _, row in frame.iterrows():
        usable = [les for les in decode_lesions(row["lesions"]) if _usable(les, kinds)]
        if not usable:
            continue
        image = _load(images, str(row["image_id"]))
        for les in usable:
            box = mass_crop_box(les["box"], image.shape, enlarge=enlarge)
            crops.append(extract_patch(image, box, out_size=out_size))
            if label == "malignant":
                labels.append(int(bool(les.get("malignant"))) if "malignant" in les else -1)
            else:
                labels.append(birads_class(row.get("acr")))
            ids.append(str(row["image_id"]))
            patients.append(str(row["patient_id"]))
            segments.append(str(row.get("segment", "")))
            boxes.append(box)
    return CropSet(
        crops=np.stack(crops) if crops else np.zeros((0, out_size, out_size), np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        image_ids=np.asarray(ids, dtype=str),
        patient_ids=np.asarray(patients, dtype=str),
        segments=np.asarray(segments, dtype=str),
        boxes=np.asarray(boxes, dtype=np.int64).reshape(-1, 4),
    )


@dataclass
class MatchPairs:
    """CC and MLO crops (K, S, S) of one breast; ``match`` 1 = the same mass, 0 = not."""

    cc: np.ndarray
    mlo: np.ndarray
    match: np.ndarray
    patient_ids: np.ndarray
    segments: np.ndarray

    def __len__(self) -> int:
        return int(self.match.shape[0])


def _decoy(image: np.ndarray, mass: Sequence[float], side: int, rng) -> tuple[int, ...] | None:
    """A random breast square of ``side`` not overlapping ``mass`` (a false-positive stand-in)."""
    for _ in range(10):
        found = healthy_patch_boxes(image, 1, size_px=side, rng=rng, max_tries=10)
        if found and box_iou([found[0]], [mass])[0, 0] == 0.0:
            return found[0]
    return None


def matching_pairs(
    images: Images,
    frame: pd.DataFrame,
    *,
    out_size: int = 224,
    enlarge: float = 0.2,
    seed: int = 0,
    kinds: Sequence[str] = ("mass",),
) -> MatchPairs:
    """Positive and negative CC-MLO crop pairs of the breasts with one mass in each view.

    Positive: the mass crop of the CC and of the MLO image (with one mass per view the
    correspondence is certain; breasts with several masses are left out, since the manifest
    does not say which CC mass is which MLO mass). Negatives stand in for the paper's false
    positive detections: the mass crop of one view with a same-sized crop of breast tissue
    away from the mass in the other view (alternating which view holds the mass).
    """
    rng = np.random.default_rng(seed)
    cc, mlo, match, patients, segments = [], [], [], [], []
    frame = frame.reset_index(drop=True)
    for k, pair in view_pairs(frame).iterrows():
        rows = frame.iloc[int(pair["cc"])], frame.iloc[int(pair["mlo"])]
        masses = [mass_boxes(r["lesions"], kinds) for r in rows]
        if any(len(m) != 1 for m in masses):
            continue
        imgs = [_load(images, str(r["image_id"])) for r in rows]
        boxes = [
            mass_crop_box(m[0], im.shape, enlarge=enlarge)
            for m, im in zip(masses, imgs, strict=True)
        ]
        crops = [extract_patch(im, b, out_size=out_size) for im, b in zip(imgs, boxes, strict=True)]
        decoy_view = k % 2  # which view gets the decoy in the negative pair
        decoy = _decoy(
            imgs[decoy_view],
            masses[decoy_view][0],
            boxes[decoy_view][2] - boxes[decoy_view][0],
            rng,
        )
        pairs = [(crops[0], crops[1], 1)]
        if decoy is not None:
            fake = extract_patch(imgs[decoy_view], decoy, out_size=out_size)
            negative = [crops[0], crops[1]]
            negative[decoy_view] = fake
            pairs.append((negative[0], negative[1], 0))
        for a, b, y in pairs:
            cc.append(a)
            mlo.append(b)
            match.append(y)
            patients.append(str(pair["patient_id"]))
            segments.append(str(rows[0].get("segment", "")))
    empty = np.zeros((0, out_size, out_size), np.float32)
    return MatchPairs(
        cc=np.stack(cc) if cc else empty,
        mlo=np.stack(mlo) if mlo else empty,
        match=np.asarray(match, dtype=np.int64),
        patient_ids=np.asarray(patients, dtype=str),
        segments=np.asarray(segments, dtype=str),
    )
