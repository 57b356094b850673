"""Lesion-patch classifier training with best-validation-AUPRC model selection (GAN-sharing paper,
2.3).

The seed's loop: cross-entropy on the classifier's (log-)probabilities, SGD (lr 0.001, momentum
0.9), at most 100 epochs, validation after every epoch, and the weights of the epoch with the
best validation AUPRC kept. Patches are ``(N, S, S)`` float arrays in [0, 1]; training batches
get random horizontal and vertical flips (a lesion patch has no preferred orientation).

Patches come from a centre's image cache: :func:`patch_frame` gives manifest rows in the
cache's frame (lesion boxes and pixel spacing of the cached image, which is what
:func:`fedmammo.data.patches.build_patch_set` needs), :func:`choose_patients` the seeded subset
of a data fraction. No Flower imports here.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from fedmammo.data.manifest import decode_lesions, encode_lesions
from fedmammo.data.patches import LESION_SUBSETS
from fedmammo.data.prepare import CentreData
from fedmammo.errors import DataError
from fedmammo.progress import progress
from fedmammo.training.augment import random_flips
from fedmammo.training.runtime import Runtime, seed_torch
from fedmammo.training.state import StateDict, cpu_state

__all__ = [
    "PatchClassifierResult",
    "choose_patients",
    "count_lesions",
    "patch_frame",
    "predict_patch_scores",
    "train_patch_classifier",
]

log = logging.getLogger(__name__)


@dataclass
class PatchClassifierResult:
    """The selected epoch, its validation AUPRC, the per-epoch history and the kept weights."""

    best_epoch: int
    best_val_auprc: float
    epochs_run: int
    steps: int
    seconds: float
    state: StateDict = field(repr=False, default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)  # epoch, loss, val_auprc


def patch_frame(data: CentreData, split: str | None) -> pd.DataFrame:
    """Rows of a split with lesion boxes and pixel spacing in the cached image's frame.

    Columns: image_id, patient_id, malignant, lesions (JSON), pixel_spacing (mm per cached
    pixel: the DICOM spacing divided by the cache's scale). Lesions the cache could not place
    inside the stored breast (box None, or an empty box from a cache built before that check)
    are dropped; an image left with no lesion is left out (it is no healthy image either).
    """
    manifest = data.manifest.iloc[data.rows(split, label=None)]
    rows = []
    dropped = left_out = 0
    for image_id, patient, malignant, spacing in zip(
        manifest["image_id"],
        manifest["patient_id"],
        manifest["malignant"],
        manifest["pixel_spacing"],
        strict=True,
    ):
        geometry = data.cache.geometry(image_id)
        records = data.cache.boxes(image_id)
        lesions = [
            les
            for les in records
            if les.get("box") and les["box"][2] > les["box"][0] and les["box"][3] > les["box"][1]
        ]
        dropped += len(records) - len(lesions)
        if records and not lesions:
            left_out += 1
            continue
        rows.append(
            {
                "image_id": str(image_id),
                "patient_id": str(patient),
                "malignant": malignant,
                "lesions": encode_lesions(lesions),
                "pixel_spacing": pd.NA if pd.isna(spacing) else float(spacing) / geometry.scale,
            }
        )
    if dropped:
        log.warning(
            "centre %s, split %s: dropped %d lesions without a usable box (outside the stored "
            "breast, or none given); left out %d images with no lesion left",
            data.name,
            split,
            dropped,
            left_out,
        )
    columns = ["image_id", "patient_id", "malignant", "lesions", "pixel_spacing"]
    return pd.DataFrame(rows, columns=columns)


def _kept(lesions: list[dict], subset: str) -> list[dict]:
    kinds = LESION_SUBSETS[subset]
    return [les for les in lesions if kinds is None or les.get("kind") in kinds]


def count_lesions(frame: pd.DataFrame, subset: str) -> int:
    """Number of lesions of ``subset`` (``all`` / ``masses``) in the rows of ``frame``."""
    return sum(len(_kept(decode_lesions(v), subset)) for v in frame["lesions"])


def choose_patients(
    frame: pd.DataFrame, fraction: float, *, subset: str, seed: int
) -> pd.DataFrame:
    """A seeded ``fraction`` of the patients of ``frame``, stratified by having a lesion.

    Patients with a lesion of ``subset`` and the others are subsampled separately (at least
    one of each group), so a reduced training set keeps its lesion/healthy mix.
    """
    if not 0 < fraction <= 1:
        raise DataError(f"data fraction must be in (0, 1], got {fraction}")
    if fraction == 1 or frame.empty:
        return frame
    has = frame.groupby("patient_id")["lesions"].agg(
        lambda col: any(_kept(decode_lesions(v), subset) for v in col)
    )
    rng = np.random.default_rng(seed)
    keep: list[str] = []
    for group in (has[has].index, has[~has].index):
        ids = sorted(map(str, group))
        if ids:
            k = max(1, round(fraction * len(ids)))
            keep += list(rng.choice(ids, size=k, replace=False))
    return frame[frame["patient_id"].isin(keep)]


def _tensor(patches: np.ndarray, name: str) -> torch.Tensor:
    arr = np.asarray(patches, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise DataError(f"patch classifier {name}: expected patches (N, S, S), got {arr.shape}")
    return torch.from_numpy(arr).unsqueeze(1)


def _labels(labels: np.ndarray, n: int, name: str) -> torch.Tensor:
    y = np.asarray(labels)
    if y.shape != (n,) or not np.isin(y, (0, 1)).all():
        raise DataError(f"patch classifier {name}: expected {n} labels in {{0, 1}}, got {y.shape}")
    return torch.from_numpy(y.astype(np.int64))


def _log_loss(y: np.ndarray, score: np.ndarray) -> float:
    p = np.clip(score.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _auprc(y: np.ndarray, score: np.ndarray) -> float:
    if y.min() == y.max():
        return math.nan
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, score))


@torch.no_grad()
def predict_patch_scores(
    model: nn.Module,
    patches: np.ndarray,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
) -> np.ndarray:
    """Return the lesion probability (softmax of class 1) of every patch, in order.

    ``channels_last`` as in :func:`train_patch_classifier` (the model's own format is kept when
    it already is channels_last).
    """
    run = Runtime(device=str(device), channels_last=channels_last)
    x = _tensor(patches, "patches")
    was_training = model.training
    run.prepare(model).eval()
    out = [
        torch.softmax(model(run.batch(batch)), dim=1)[:, 1].cpu().numpy()
        for batch in x.split(batch_size)
    ]
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def train_patch_classifier(
    model: nn.Module,
    train_patches: np.ndarray,
    train_labels: np.ndarray,
    val_patches: np.ndarray,
    val_labels: np.ndarray,
    *,
    epochs: int = 100,
    batch_size: int = 16,
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    patience: int | None = None,
    augment: bool = True,
    optimizer: Literal["sgd", "adamw"] = "sgd",
    channels_last: bool = False,
    fused_optimizer: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> PatchClassifierResult:
    """Train ``model`` with SGD (``momentum``; the GAN-sharing paper's CNN) or AdamW (the Swin
    transformer's own recipe; ``momentum`` unused) and load the weights of the
    best-validation-AUPRC epoch.

    Ties in validation AUPRC (frequent on small validation sets, where it reaches 1) go to the
    epoch with the lower validation log-loss. ``patience`` stops after that many epochs without
    a better validation score (None: run all ``epochs``). A validation set with one class has
    no AUPRC: the last epoch is kept.

    ``channels_last`` stores the model and batches as ``torch.channels_last`` (oneDNN's
    vectorised convolution and max-pooling kernels: a patch CNN step about 1.7x faster on CPU);
    ``fused_optimizer`` takes the optimizer's fused step (one kernel for all parameters:
    AdamW's step on a small Swin about 1.18x faster). Both round differently from the default
    kernels, so a run is reproducible with the same settings but not bit for bit across them;
    off, the loop is the one of earlier fedmammo releases.
    """
    if not 1 <= epochs <= 10_000:
        raise DataError(f"patch classifier: epochs must be in 1..10000, got {epochs}")
    start = time.perf_counter()
    x = _tensor(train_patches, "train_patches")
    y = _labels(train_labels, len(x), "train_labels")
    if len(x) < 2:
        raise DataError(f"patch classifier: needs at least 2 training patches, got {len(x)}")
    val_x = np.asarray(val_patches, dtype=np.float32)
    val_y = np.asarray(val_labels).astype(np.int64)
    gen = seed_torch(seed)  # dropout draws from the global generator
    run = Runtime(device=str(device), channels_last=channels_last)
    run.prepare(model).train()
    fused = {"fused": True} if fused_optimizer else {}
    if optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=lr, weight_decay=weight_decay, **fused
        )
    elif optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, **fused
        )
    else:
        raise DataError(f"patch classifier: optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    best_epoch, best, since_best, steps = 0, (-math.inf, -math.inf), 0, 0
    best_state: StateDict = {}
    history: list[dict[str, float]] = []
    epoch = 0
    for epoch in progress(range(1, epochs + 1), "patch classifier epochs"):
        model.train()
        total, seen = 0.0, 0
        order = torch.randperm(len(x), generator=gen)
        batches = list(order.split(batch_size))
        if len(batches) > 1 and len(batches[-1]) == 1:  # batch norm cannot train on one sample
            batches.pop()
        for idx in batches:
            xb = random_flips(x[idx], gen) if augment else x[idx]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(run.batch(xb)), y[idx].to(run.torch_device))
            loss.backward()
            opt.step()
            steps += 1
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        auprc, val_loss = math.nan, math.nan
        if len(val_y):
            scores = predict_patch_scores(model, val_x, device=device, channels_last=channels_last)
            auprc, val_loss = _auprc(val_y, scores), _log_loss(val_y, scores)
        history.append(
            {
                "epoch": float(epoch),
                "loss": total / max(seen, 1),
                "val_auprc": auprc,
                "val_loss": val_loss,
            }
        )
        key = (auprc, -val_loss)
        if not math.isnan(auprc) and key > best:
            best_epoch, best, since_best = epoch, key, 0
            best_state = cpu_state(model)
        else:
            since_best += 1
        if patience is not None and best_epoch and since_best >= patience:
            break
    if not best_state:  # no usable validation AUPRC: keep the last epoch
        best_epoch = epoch
        best_state = cpu_state(model)
    model.load_state_dict(best_state)
    model.eval()
    seconds = time.perf_counter() - start
    best_auprc = best[0] if math.isfinite(best[0]) else math.nan
    log.info(
        "patch classifier: best epoch %d of %d (val AUPRC %.3f), %.1f s",
        best_epoch,
        epoch,
        best_auprc,
        seconds,
    )
    return PatchClassifierResult(
        best_epoch=best_epoch,
        best_val_auprc=best_auprc,
        epochs_run=epoch,
        steps=steps,
        seconds=seconds,
        state=best_state,
        history=history,
    )
