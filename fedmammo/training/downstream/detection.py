"""Mass detection (Li et al., III-C-1): FCOS fine-tuning from a pre-trained backbone, and AP.

Training follows the paper (SGD, lr 0.005, momentum 0.9, weight decay 1e-4, batch 8) with
random vertical flips (fedmammo keeps every chest wall on one side, so no horizontal flip).
Images without a mass are kept as negatives (empty targets). Evaluation is AP at IoU 0.5 with
a bootstrap CI over images (:mod:`fedmammo.evaluation.detection`). For the label-fraction
curve (Fig. 6), subsample the training rows by patient first, e.g. with
:func:`fedmammo.training.patch_classifier.choose_patients` (``subset="masses"``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from fedmammo.errors import DataError
from fedmammo.evaluation.detection import bootstrap_detection_ap
from fedmammo.progress import progress
from fedmammo.training.downstream._common import (
    DownstreamResult,
    as_images,
    keys_or_none,
    make_optimizer,
    scoped_records,
)
from fedmammo.training.downstream.crops import mass_boxes

__all__ = ["detection_targets", "evaluate_detector", "predict_detections", "train_detector"]


def detection_targets(frame: pd.DataFrame, *, kinds: Sequence[str] = ("mass",)) -> list[np.ndarray]:
    """Ground-truth boxes (k, 4) per row of ``frame`` (cache-frame lesion boxes of ``kinds``)."""
    return [
        np.asarray(mass_boxes(v, kinds), dtype=np.float32).reshape(-1, 4) for v in frame["lesions"]
    ]


def _target(boxes: np.ndarray, flip: bool, height: int) -> dict[str, torch.Tensor]:
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    if flip:
        b = torch.stack([b[:, 0], height - b[:, 3], b[:, 2], height - b[:, 1]], dim=1)
    return {"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)}


def train_detector(
    detector: nn.Module,
    images: np.ndarray,
    boxes: Sequence[np.ndarray],
    *,
    epochs: int = 1,
    batch_size: int = 8,
    lr: float = 0.005,
    optimizer: str = "sgd",
    weight_decay: float = 1e-4,
    augment: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> DownstreamResult:
    """Fine-tune an FCOS ``detector`` in place on images (N, H, W) and their boxes."""
    start = time.perf_counter()
    x = as_images(images, "mass detection")
    if len(boxes) != len(x):
        raise DataError(f"mass detection: {len(boxes)} box sets for {len(x)} images")
    height = x.shape[-2]
    gen = torch.Generator().manual_seed(seed)
    detector.to(device).train()
    opt = make_optimizer(
        detector.parameters(), optimizer=optimizer, lr=lr, weight_decay=weight_decay
    )
    result = DownstreamResult(
        task="detection", model=detector, steps=0, num_examples=0, loss=math.nan, seconds=0.0
    )
    for epoch in progress(range(1, epochs + 1), "detection fine-tuning epochs"):
        total = 0.0
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            flips = (
                (torch.rand(len(idx), generator=gen) < 0.5).tolist()
                if augment
                else [False] * len(idx)
            )
            batch = [
                (x[i].flip(-2) if f else x[i]).to(device)
                for i, f in zip(idx.tolist(), flips, strict=True)
            ]
            targets = [
                {k: v.to(device) for k, v in _target(boxes[i], f, height).items()}
                for i, f in zip(idx.tolist(), flips, strict=True)
            ]
            losses = detector(batch, targets)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.steps += 1
            total += float(loss.detach()) * len(idx)
        result.num_examples += len(x)
        result.history.append({"epoch": float(epoch), "loss": total / len(x)})
    result.loss = result.history[-1]["loss"]
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def predict_detections(
    detector: nn.Module,
    images: np.ndarray,
    *,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> list[dict[str, np.ndarray]]:
    """Per image: ``boxes`` (k, 4) and ``scores`` (k,) of the mass class, in eval mode."""
    x = as_images(images, "predict_detections")
    detector.to(device).eval()
    out: list[dict[str, np.ndarray]] = []
    for i in range(0, len(x), batch_size):
        for det in detector([im.to(device) for im in x[i : i + batch_size]]):
            keep = det["labels"] == 1
            out.append(
                {
                    "boxes": det["boxes"][keep].cpu().numpy(),
                    "scores": det["scores"][keep].cpu().numpy(),
                }
            )
    return out


def evaluate_detector(
    detector: nn.Module,
    images: np.ndarray,
    boxes: Sequence[np.ndarray],
    segments: Any | None = None,
    *,
    iou_threshold: float = 0.5,
    n_boot: int = 2000,
    seed: int = 0,
    patients: Any | None = None,
) -> list[dict[str, Any]]:
    """AP at ``iou_threshold`` (metric ``ap50``) with bootstrap CIs, overall and per segment;
    with ``patients`` (one per image) the CIs resample whole patients."""
    predictions = predict_detections(detector, images)
    seg = keys_or_none(segments, len(predictions))
    pat = keys_or_none(patients, len(predictions), "patients")

    def compute(idx: np.ndarray, groups: np.ndarray | None) -> tuple[float, float, float]:
        return bootstrap_detection_ap(
            [predictions[i] for i in idx],
            [boxes[i] for i in idx],
            iou_threshold=iou_threshold,
            n_boot=n_boot,
            seed=seed,
            groups=groups,
        )

    return scoped_records("ap50", compute, len(predictions), seg, pat)
