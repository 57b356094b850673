"""Detection AP at IoU 0.5 (VOC all-point interpolation) with a bootstrap CI over images.

Written here rather than taken from torchmetrics: its ``MeanAveragePrecision`` needs
pycocotools (a C extension, the ``detection`` extra) or faster-coco-eval plus
lightning-utilities, computes COCO's AP@[.5:.95] by default, and re-running the COCO machinery
for every bootstrap resample would be slow; one class at one IoU is 40 lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedmammo.errors import DataError
from fedmammo.evaluation.bootstrap import bootstrap_statistic

__all__ = ["average_precision", "bootstrap_detection_ap", "box_iou", "detection_ap", "match_image"]


def box_iou(a: Any, b: Any) -> np.ndarray:
    """IoU matrix (n, m) of boxes ``[x0, y0, x1, y1]`` (n, 4) and (m, 4)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_image(
    boxes: Any, scores: Any, gt_boxes: Any, *, iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, is_tp) of one image's detections, VOC style.

    In descending score, a detection is a true positive if its best-overlapping ground truth
    has IoU >= ``iou_threshold`` and was not matched before; otherwise a false positive.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="mergesort")
    iou = box_iou(np.asarray(boxes).reshape(-1, 4)[order], gt_boxes)
    taken = np.zeros(iou.shape[1], dtype=bool)
    tp = np.zeros(len(order), dtype=bool)
    if iou.shape[1]:
        for k, row in enumerate(iou):
            best = int(np.argmax(row))
            if row[best] >= iou_threshold and not taken[best]:
                taken[best] = tp[k] = True
    return scores[order], tp


def average_precision(scores: Any, is_tp: Any, n_gt: int) -> float:
    """All-point interpolated AP: area under the precision envelope over recall (NaN if no GT)."""
    if n_gt <= 0:
        return math.nan
    scores, tp = np.asarray(scores, dtype=np.float64), np.asarray(is_tp, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    tp = tp[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
    recall = np.concatenate([[0.0], ctp / n_gt])
    precision = np.concatenate([[1.0], ctp / np.maximum(ctp + cfp, 1)])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * envelope[1:]))


def _per_image(predictions: Sequence[dict], targets: Sequence[Any], iou_threshold: float):
    if len(predictions) != len(targets):
        raise DataError(f"{len(predictions)} predictions for {len(targets)} images")
    out = []
    for pred, gt in zip(predictions, targets, strict=True):
        gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
        s, tp = match_image(pred["boxes"], pred["scores"], gt, iou_threshold=iou_threshold)
        out.append((s, tp, len(gt)))
    return out


def detection_ap(
    predictions: Sequence[dict], targets: Sequence[Any], *, iou_threshold: float = 0.5
) -> float:
    """AP over images: ``predictions[i]`` has ``boxes`` (k, 4) and ``scores`` (k,);
    ``targets[i]`` the ground-truth boxes (m, 4) of image i."""
    per = _per_image(predictions, targets, iou_threshold)
    return _ap_of(per, np.arange(len(per)))


def _ap_of(per: list, index: np.ndarray) -> float:
    picked = [per[i] for i in index]
    if not picked:
        return math.nan
    scores = np.concatenate([p[0] for p in picked])
    tp = np.concatenate([p[1] for p in picked])
    return average_precision(scores, tp, sum(p[2] for p in picked))


def bootstrap_detection_ap(
    predictions: Sequence[dict],
    targets: Sequence[Any],
    *,
    iou_threshold: float = 0.5,
    n_boot: int = 2000,
    seed: int = 0,
    groups: Any = None,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Return (AP, CI low, CI high), resampling images with replacement, or with ``groups``
    (one key per image: its patient) whole patients."""
    per = _per_image(predictions, targets, iou_threshold)
    return bootstrap_statistic(
        lambda idx: _ap_of(per, idx),
        len(per),
        n_boot=n_boot,
        seed=seed,
        groups=groups,
        confidence=confidence,
    )
