"""Downstream classification from a pre-trained backbone: BI-RADS/malignancy on mass crops and
breast density on whole images (Li et al., III-C-3).

The paper fine-tunes the whole network with SGD (lr 0.001, momentum 0.9, weight decay 1e-5,
50 epochs, batch 128) and reports accuracy; here the same loop, with accuracy (and AUC for two
classes) and bootstrap CIs per segment. ``privacy`` takes a
:class:`fedmammo.privacy.engine.DPSession` (per-example losses, so DP-SGD applies; the
backbone must then use GroupNorm: ``build_contrastive_encoder(norm="group")``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmammo.errors import DataError
from fedmammo.evaluation.bootstrap import accuracy_ci
from fedmammo.evaluation.metrics import auc_ci
from fedmammo.progress import progress
from fedmammo.training.augment import vertical_flips
from fedmammo.training.downstream._common import (
    DownstreamResult,
    as_images,
    backbone_of,
    keys_or_none,
    make_optimizer,
    scoped_records,
)
from fedmammo.training.runtime import seed_torch

__all__ = ["EncoderClassifier", "evaluate_classifier", "predict_proba", "train_encoder_classifier"]


class EncoderClassifier(nn.Module):
    """A pre-trained backbone (copied) and a linear head: (N, 1, H, W) -> (N, classes) logits."""

    def __init__(self, encoder: nn.Module, num_classes: int, *, freeze_backbone: bool = False):
        super().__init__()
        self.backbone, features = backbone_of(encoder)
        self.head = nn.Linear(features, num_classes)
        if freeze_backbone:
            self.backbone.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def train_encoder_classifier(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    task: str = "classification",
    epochs: int = 1,
    batch_size: int = 16,
    lr: float = 1e-3,
    optimizer: str = "sgd",
    weight_decay: float = 1e-5,
    freeze_backbone: bool = False,
    augment: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    privacy: Any | None = None,
) -> DownstreamResult:
    """Fine-tune a classifier on images (N, H, W) in [0, 1] with labels 0..num_classes-1.

    ``model``: a prebuilt :class:`EncoderClassifier` with ``num_classes`` outputs (trained in
    place: a federated round continues the averaged model) or a contrastive encoder (a new
    classifier on a copy of its backbone, its head drawn with ``seed``). Samples labelled -1
    (missing) are dropped. ``augment`` flips vertically at random.
    """
    start = time.perf_counter()
    x = as_images(images, task)
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (len(x),):
        raise DataError(f"{task}: {y.shape[0]} labels for {len(x)} images")
    keep = y >= 0
    if not keep.any() or y.max() >= num_classes:
        raise DataError(f"{task}: need labels in 0..{num_classes - 1} (found {sorted(set(y))})")
    gen = seed_torch(seed)
    if isinstance(model, EncoderClassifier):
        if model.head.out_features != num_classes:
            raise DataError(
                f"{task}: the classifier has {model.head.out_features} outputs, "
                f"num_classes is {num_classes}"
            )
        if freeze_backbone:
            model.backbone.requires_grad_(False)
    else:
        model = EncoderClassifier(model, num_classes, freeze_backbone=freeze_backbone)
    model = model.to(device)
    model.train()
    opt = make_optimizer(model.parameters(), optimizer=optimizer, lr=lr, weight_decay=weight_decay)
    data = TensorDataset(x[keep], torch.from_numpy(y[keep]))
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen)
    if privacy is not None:
        model, opt, loader = privacy.attach(model, opt, loader)
    result = DownstreamResult(
        task=task, model=model, steps=0, num_examples=0, loss=math.nan, seconds=0
    )
    for epoch in progress(range(1, epochs + 1), "classification fine-tuning epochs"):
        total, seen = 0.0, 0
        for xb, yb in loader:
            if len(yb) == 0:  # Poisson sampling can draw an empty batch
                continue
            xb = vertical_flips(xb, gen) if augment else xb
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb.to(device)), yb.to(device))
            loss.backward()
            opt.step()
            result.steps += 1
            seen += len(yb)
            total += float(loss.detach()) * len(yb)
        result.num_examples += seen
        result.history.append({"epoch": float(epoch), "loss": total / max(seen, 1)})
    result.loss = result.history[-1]["loss"] if result.history else math.nan
    if privacy is not None:
        result.epsilon = privacy.after_training(result.steps)
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    images: np.ndarray,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Class probabilities (N, classes) of images (N, H, W), in eval mode."""
    x = as_images(images, "predict_proba")
    model.to(device).eval()
    out = [
        torch.softmax(model(x[i : i + batch_size].to(device)), 1).cpu().numpy()
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out)


def evaluate_classifier(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    segments: Any | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    patients: Any | None = None,
) -> list[dict[str, Any]]:
    """Accuracy (and AUC with two classes) with bootstrap CIs, overall and per segment.

    Records are ``{"segment", "metric", "value", "ci_low", "ci_high"}`` (segment None = all),
    like :func:`fedmammo.evaluation.metrics.metrics_by_segment`. Unlabelled (-1) samples are
    left out. With ``patients`` (one per sample) the CIs resample whole patients, as a
    patient's images are not independent cases; without, they resample the samples.
    """
    y = np.asarray(labels, dtype=np.int64)
    keep = y >= 0
    if not keep.any():
        raise DataError("evaluate_classifier: no labelled samples")
    seg = keys_or_none(segments, len(y))
    pat = keys_or_none(patients, len(y), "patients")
    seg, pat = (None if k is None else k[keep] for k in (seg, pat))
    proba = predict_proba(model, np.asarray(images)[keep])
    y = y[keep]
    pred = proba.argmax(axis=1)
    records = scoped_records(
        "accuracy",
        lambda idx, groups: accuracy_ci(y[idx], pred[idx], n_boot=n_boot, seed=seed, groups=groups),
        len(y),
        seg,
        pat,
    )
    if proba.shape[1] == 2:
        records += scoped_records(
            "auc",
            lambda idx, groups: auc_ci(y[idx], proba[idx, 1], groups=groups, with_ci=n_boot > 0),
            len(y),
            seg,
            pat,
        )
    return records
