"""Lesion and healthy patches from cached mammograms, with one pre-processing for both classes.

Geometry follows GAN-sharing paper (section 2.1): a lesion patch is a square around the lesion's
bounding
box with a 60 px margin at INbreast's 0.07 mm/pixel (scaled with the image's pixel spacing),
shifted inside the image when it overflows; a healthy patch is a random square inside a breast
without lesions holding at most 40% background pixels. Both classes then go through the same
:func:`extract_patch` (optional random zoom and translation, then area resize), so no
class-specific pre-processing artefact can be learned.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fedmammo.data.manifest import decode_lesions
from fedmammo.errors import DataError

__all__ = [
    "LESION_SUBSETS",
    "PatchSet",
    "build_patch_set",
    "extract_patch",
    "healthy_patch_boxes",
    "lesion_patch_box",
]

logger = logging.getLogger(__name__)

Box = tuple[int, int, int, int]

#: Named lesion subsets: ``None`` keeps every kind (masses, calcifications, distortions, ...).
LESION_SUBSETS: dict[str, tuple[str, ...] | None] = {"all": None, "masses": ("mass",)}

#: Healthy patch side when the set has no lesion box to copy sizes from (240 px at 0.07 mm).
_FALLBACK_HEALTHY_MM = 16.8


def _fit_square(cx: float, cy: float, side: int, height: int, width: int) -> Box:
    """Return the square of ``side`` centred on (cx, cy), capped and shifted inside the image."""
    side = max(1, min(int(side), height, width))
    x0 = int(math.floor(cx - side / 2.0))
    y0 = int(math.floor(cy - side / 2.0))
    x0 = min(max(x0, 0), width - side)
    y0 = min(max(y0, 0), height - side)
    return x0, y0, x0 + side, y0 + side


def _margin(margin_px: float, reference_spacing: float, spacing: float | None) -> int:
    if spacing is None or not np.isfinite(spacing):
        return int(round(margin_px))
    if spacing <= 0:
        raise DataError(f"pixel spacing must be positive, got {spacing} mm; fix pixel_spacing")
    return int(round(margin_px * reference_spacing / spacing))


def lesion_patch_box(
    box: Sequence[float],
    image_shape: tuple[int, ...],
    *,
    margin_px: float = 60,
    reference_spacing: float = 0.07,
    spacing: float | None = None,
) -> Box:
    """Return the square patch box ``(x0, y0, x1, y1)`` around a lesion box, inside the image.

    The margin is ``margin_px`` at ``reference_spacing`` mm/pixel, i.e. ``margin_px *
    reference_spacing / spacing`` pixels at ``spacing``; the lesion's longer side gets exactly
    that margin, the shorter side more (the patch is square). A patch overflowing the image is
    translated inside it; a patch larger than the image's shorter side is capped to that side
    (still square, centred on the lesion, which may then be cut).
    """
    if len(box) != 4:
        raise DataError(f"lesion box must be [x0, y0, x1, y1], got {list(box)}")
    height, width = int(image_shape[0]), int(image_shape[1])
    bx0, by0 = math.floor(box[0]), math.floor(box[1])
    bx1, by1 = math.ceil(box[2]), math.ceil(box[3])
    if bx1 <= bx0 or by1 <= by0:
        raise DataError(f"lesion box {list(box)} is empty (x1 <= x0 or y1 <= y0)")
    margin = _margin(margin_px, reference_spacing, spacing)
    side = max(bx1 - bx0, by1 - by0) + 2 * margin
    return _fit_square((bx0 + bx1) / 2.0, (by0 + by1) / 2.0, side, height, width)


def healthy_patch_boxes(
    image: np.ndarray,
    n: int,
    *,
    size_px: int | Sequence[int],
    max_background: float = 0.4,
    rng: np.random.Generator,
    background_threshold: float = 0.05,
    max_tries: int | None = None,
) -> list[Box]:
    """Return up to ``n`` random square boxes holding at most ``max_background`` background.

    Background pixels are those below ``background_threshold``. ``size_px`` is one side for all
    boxes or one side per box. After ``max_tries`` candidates (default ``100 * n``) the boxes
    found so far are returned and the shortfall is logged.
    """
    height, width = image.shape[:2]
    sizes = [int(size_px)] * n if np.isscalar(size_px) else [int(s) for s in size_px]
    if len(sizes) != n:
        raise DataError(f"healthy_patch_boxes: {len(sizes)} sizes given for n={n} boxes")
    background = np.zeros((height + 1, width + 1), dtype=np.int64)
    background[1:, 1:] = np.cumsum(np.cumsum(image < background_threshold, axis=0), axis=1)
    tries = 100 * n if max_tries is None else max_tries
    boxes: list[Box] = []
    for _ in range(tries):
        if len(boxes) == n:
            break
        side = min(sizes[len(boxes)], height, width)
        x0 = int(rng.integers(0, width - side + 1))
        y0 = int(rng.integers(0, height - side + 1))
        x1, y1 = x0 + side, y0 + side
        count = background[y1, x1] - background[y0, x1] - background[y1, x0] + background[y0, x0]
        if count <= max_background * side * side:
            boxes.append((x0, y0, x1, y1))
    if len(boxes) < n:
        logger.info("healthy patches: found %d of %d boxes after %d tries", len(boxes), n, tries)
    return boxes


def extract_patch(
    image: np.ndarray,
    box: Sequence[int],
    *,
    out_size: int = 128,
    rng: np.random.Generator | None = None,
    zoom_sd: float = 0.1,
    shift_sd: float = 0.1,
) -> np.ndarray:
    """Crop a square box (randomly zoomed and shifted when ``rng`` is given) to ``out_size``.

    With ``rng`` the side is scaled by ``1 + zoom_sd * N(0, 1)`` (clipped to [0.5, 1.5]) and the
    centre moved by ``shift_sd * side * N(0, 1)`` in x and y; the result is kept inside the
    image. Down-sampling uses area interpolation (average over each output pixel's footprint);
    up-sampling (boxes smaller than ``out_size``, where area interpolation is undefined) uses
    anti-aliased bilinear interpolation. Returns float32 ``(out_size, out_size)``.
    """
    if image.ndim != 2:
        raise DataError(f"extract_patch expects an HxW image, got shape {image.shape}")
    height, width = image.shape
    x0, y0, x1, y1 = (int(v) for v in box)
    side = max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    if rng is not None:
        zoom = float(np.clip(1.0 + zoom_sd * rng.standard_normal(), 0.5, 1.5))
        dx, dy = shift_sd * side * rng.standard_normal(2)
        side = max(1, int(round(side * zoom)))
        cx, cy = cx + float(dx), cy + float(dy)
    x0, y0, x1, y1 = _fit_square(cx, cy, side, height, width)
    crop = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1], dtype=np.float32))
    crop = crop[None, None]
    if crop.shape[-1] >= out_size:
        out = F.interpolate(crop, size=(out_size, out_size), mode="area")
    else:
        out = F.interpolate(
            crop, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True
        )
    return out[0, 0].numpy().astype(np.float32, copy=False)


@dataclass
class PatchSet:
    """Patches with labels (1 lesion, 0 healthy), lesion kinds, source image ids and boxes."""

    patches: np.ndarray  # float32 (N, S, S) in [0, 1]
    labels: np.ndarray  # int64 (N,)
    kinds: np.ndarray  # str (N,): "mass", "calcification", ..., "healthy"
    image_ids: np.ndarray  # str (N,)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int64))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, index: np.ndarray | Sequence[int]) -> PatchSet:
        """Return the subset at ``index`` (integer indices or a boolean mask)."""
        index = np.asarray(index)
        boxes = self.boxes[index] if len(self.boxes) == len(self) else self.boxes
        return PatchSet(
            self.patches[index], self.labels[index], self.kinds[index], self.image_ids[index], boxes
        )


def _resolve_kinds(lesion_types: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if lesion_types is None:
        return None
    if isinstance(lesion_types, str):
        if lesion_types not in LESION_SUBSETS:
            raise DataError(
                f"unknown lesion subset {lesion_types!r}; use one of {sorted(LESION_SUBSETS)} "
                "or a list of lesion kinds"
            )
        return LESION_SUBSETS[lesion_types]
    return tuple(lesion_types)


def _load(images: Callable[[str], np.ndarray] | Mapping[str, np.ndarray], image_id: str):
    image = images[image_id] if isinstance(images, Mapping) else images(image_id)
    image = np.asarray(image)
    if image.ndim != 2 or not np.issubdtype(image.dtype, np.floating):
        raise DataError(
            f"image {image_id!r}: expected a float HxW array in [0, 1], got {image.dtype} "
            f"{image.shape}; normalise the cached image before extracting patches"
        )
    return image


def _lesion_in_image(
    image: np.ndarray, box: Sequence[float], background_threshold: float
) -> list[float] | None:
    """Return ``box`` clipped to the image, or None when it is empty there or on background.

    A lesion box of which less than half the pixels are breast (at least
    ``background_threshold``) would give a lesion patch without its lesion.
    """
    h, w = image.shape
    x0, y0 = max(float(box[0]), 0.0), max(float(box[1]), 0.0)
    x1, y1 = min(float(box[2]), float(w)), min(float(box[3]), float(h))
    if x1 <= x0 or y1 <= y0:
        return None
    region = image[math.floor(y0) : math.ceil(y1), math.floor(x0) : math.ceil(x1)]
    if np.mean(region >= background_threshold) < 0.5:
        return None
    return [x0, y0, x1, y1]


def _is_healthy(row: pd.Series, lesions: list[dict]) -> bool:
    if lesions:
        return False
    malignant = row.get("malignant", pd.NA)
    return bool(pd.isna(malignant) or int(malignant) == 0)


def _spacing(row: pd.Series) -> float | None:
    value = row.get("pixel_spacing", pd.NA)
    return None if pd.isna(value) else float(value)


def build_patch_set(
    images: Callable[[str], np.ndarray] | Mapping[str, np.ndarray],
    manifest_rows: pd.DataFrame,
    *,
    lesion_types: str | Iterable[str] | None = "all",
    healthy_per_image: int | None = None,
    out_size: int = 128,
    seed: int = 0,
    augment: bool = False,
    margin_px: float = 60,
    reference_spacing: float = 0.07,
    max_background: float = 0.4,
    background_threshold: float = 0.05,
    healthy_size_mm: float | None = None,
) -> PatchSet:
    """Extract lesion patches and healthy patches from the images of ``manifest_rows``.

    ``lesions`` boxes and ``pixel_spacing`` must be in the frame of the images ``images``
    returns (float HxW in [0, 1]). ``lesion_types`` is ``"all"``, ``"masses"`` or a list of
    kinds. Healthy patches come from rows without lesions (and not labelled malignant):
    ``healthy_per_image`` each, or by default as many in total as lesion patches, spread
    evenly. Healthy box sides are drawn from the lesion patch sides in mm (or
    ``healthy_size_mm``), so patch scale is no class cue. ``augment`` applies the random zoom
    and shift of :func:`extract_patch` to both classes.
    """
    for col in ("image_id", "lesions"):
        if col not in manifest_rows.columns:
            raise DataError(f"build_patch_set: manifest rows lack the {col!r} column")
    kinds_kept = _resolve_kinds(lesion_types)
    rng = np.random.default_rng(seed)
    aug_rng = rng if augment else None
    patches: list[np.ndarray] = []
    labels: list[int] = []
    kinds: list[str] = []
    ids: list[str] = []
    boxes: list[Box] = []
    sides_mm: list[float] = []
    healthy_rows: list[pd.Series] = []
    skipped = 0
    for _, row in manifest_rows.iterrows():
        image_id = str(row["image_id"])
        try:
            lesions = decode_lesions(row["lesions"])
        except ValueError as exc:
            raise DataError(f"image {image_id!r}: lesions column is not valid JSON: {exc}") from exc
        if _is_healthy(row, lesions):
            healthy_rows.append(row)
            continue
        chosen = [les for les in lesions if kinds_kept is None or les.get("kind") in kinds_kept]
        if not chosen:
            continue
        image = _load(images, image_id)
        spacing = _spacing(row)
        for lesion in chosen:
            box = lesion.get("box")
            if box is None or len(box) != 4:
                raise DataError(f"image {image_id!r}: lesion without a [x0, y0, x1, y1] box")
            visible = _lesion_in_image(image, box, background_threshold)
            if visible is None:
                skipped += 1
                continue
            pbox = lesion_patch_box(
                visible,
                image.shape,
                margin_px=margin_px,
                reference_spacing=reference_spacing,
                spacing=spacing,
            )
            patches.append(extract_patch(image, pbox, out_size=out_size, rng=aug_rng))
            labels.append(1)
            kinds.append(str(lesion.get("kind", "lesion")))
            ids.append(image_id)
            boxes.append(pbox)
            sides_mm.append((pbox[2] - pbox[0]) * (spacing or reference_spacing))
    if skipped:
        logger.warning(
            "build_patch_set: skipped %d lesion boxes outside their image or on background "
            "(less than half of the box is breast); no blank lesion patch was made",
            skipped,
        )
    n_lesion = len(patches)
    if healthy_per_image is None:
        quota = np.full(len(healthy_rows), n_lesion // max(len(healthy_rows), 1))
        quota[rng.permutation(len(healthy_rows))[: n_lesion % max(len(healthy_rows), 1)]] += 1
    else:
        quota = np.full(len(healthy_rows), int(healthy_per_image))
    if healthy_size_mm is not None:
        pool_mm = np.asarray([healthy_size_mm], dtype=float)
    else:
        pool_mm = np.asarray(sides_mm or [_FALLBACK_HEALTHY_MM], dtype=float)
    for row, n in zip(healthy_rows, quota, strict=True):
        if n == 0:
            continue
        image_id = str(row["image_id"])
        image = _load(images, image_id)
        spacing = _spacing(row) or reference_spacing
        sizes = [max(1, int(round(s / spacing))) for s in rng.choice(pool_mm, size=int(n))]
        found = healthy_patch_boxes(
            image,
            int(n),
            size_px=sizes,
            max_background=max_background,
            rng=rng,
            background_threshold=background_threshold,
        )
        for hbox in found:
            patches.append(extract_patch(image, hbox, out_size=out_size, rng=aug_rng))
            labels.append(0)
            kinds.append("healthy")
            ids.append(image_id)
            boxes.append(hbox)
    logger.info(
        "build_patch_set: %d lesion and %d healthy patches", n_lesion, len(patches) - n_lesion
    )
    return PatchSet(
        patches=np.stack(patches) if patches else np.zeros((0, out_size, out_size), np.float32),
        labels=np.asarray(labels, dtype=np.int64),
        kinds=np.asarray(kinds, dtype=str),
        image_ids=np.asarray(ids, dtype=str),
        boxes=np.asarray(boxes, dtype=np.int64).reshape(-1, 4),
    )
