"""CC-MLO mass matching (Li et al., III-C-2): a siamese embedding trained with a margin loss.

Both crops of a pair go through the same pre-trained backbone (copied) and a linear
embedding; training minimises equation 3
(:func:`fedmammo.models.contrastive_losses.margin_contrastive_loss`, m = 10). A pair is
predicted to match when the distance of its embeddings is below ``m / 2``, halfway between
where the loss pulls matches (0) and pushes non-matches (>= m); accuracy is reported with a
bootstrap CI. The paper's geometric features (ROI-to-nipple and ROI-to-chest-wall distances)
need nipple and pectoral segmentations that fedmammo does not have; only appearance is used.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmammo.errors import DataError
from fedmammo.evaluation.bootstrap import accuracy_ci
from fedmammo.models.contrastive_losses import DEFAULT_MARGIN, margin_contrastive_loss
from fedmammo.progress import progress
from fedmammo.training.downstream._common import (
    DownstreamResult,
    as_images,
    backbone_of,
    keys_or_none,
    make_optimizer,
    scoped_records,
)
from fedmammo.training.downstream.crops import MatchPairs
from fedmammo.training.runtime import seed_torch

__all__ = ["MatchingNet", "evaluate_matching", "pair_distances", "train_matching"]


class MatchingNet(nn.Module):
    """Siamese embedding: backbone (copied from the encoder) + linear map to ``embed_dim``."""

    def __init__(self, encoder: nn.Module, *, embed_dim: int = 64) -> None:
        super().__init__()
        self.backbone, features = backbone_of(encoder)
        self.embed = nn.Linear(features, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.backbone(x))


def _check(pairs: MatchPairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if len(pairs) == 0:
        raise DataError("mass matching: no CC-MLO pairs (no breast with one mass per view)")
    y = torch.from_numpy(np.asarray(pairs.match, dtype=np.int64))
    return as_images(pairs.cc, "matching cc"), as_images(pairs.mlo, "matching mlo"), y


def train_matching(
    model: nn.Module,
    pairs: MatchPairs,
    *,
    margin: float = DEFAULT_MARGIN,
    embed_dim: int = 64,
    epochs: int = 1,
    batch_size: int = 16,
    lr: float = 1e-3,
    optimizer: str = "sgd",
    weight_decay: float = 1e-5,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> DownstreamResult:
    """Fine-tune a :class:`MatchingNet` on CC-MLO crop pairs with the margin loss.

    ``model``: a prebuilt :class:`MatchingNet` (trained in place, ``embed_dim`` unused: a
    federated round continues the averaged model) or a contrastive encoder (a new
    :class:`MatchingNet` on a copy of its backbone, its embedding drawn with ``seed``).
    """
    start = time.perf_counter()
    cc, mlo, y = _check(pairs)
    gen = seed_torch(seed)
    if not isinstance(model, MatchingNet):
        model = MatchingNet(model, embed_dim=embed_dim)
    model = model.to(device).train()
    opt = make_optimizer(model.parameters(), optimizer=optimizer, lr=lr, weight_decay=weight_decay)
    result = DownstreamResult(
        task="matching", model=model, steps=0, num_examples=0, loss=math.nan, seconds=0.0
    )
    for epoch in progress(range(1, epochs + 1), "matching fine-tuning epochs"):
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for idx in order.split(batch_size):
            f1 = model(cc[idx].to(device))
            f2 = model(mlo[idx].to(device))
            loss = margin_contrastive_loss(f1, f2, y[idx].to(device), margin=margin)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.steps += 1
            total += float(loss.detach()) * len(idx)
        result.num_examples += len(y)
        result.history.append({"epoch": float(epoch), "loss": total / len(y)})
    result.loss = result.history[-1]["loss"]
    result.seconds = time.perf_counter() - start
    return result


@torch.no_grad()
def pair_distances(
    model: nn.Module, pairs: MatchPairs, *, batch_size: int = 64, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Euclidean distances (K,) between the embeddings of each pair's CC and MLO crops."""
    cc, mlo, _ = _check(pairs)
    model.to(device).eval()
    out = []
    for i in range(0, len(cc), batch_size):
        f1 = model(cc[i : i + batch_size].to(device))
        f2 = model(mlo[i : i + batch_size].to(device))
        out.append((f1 - f2).norm(dim=1).cpu().numpy())
    return np.concatenate(out)


def evaluate_matching(
    model: nn.Module,
    pairs: MatchPairs,
    *,
    margin: float = DEFAULT_MARGIN,
    threshold: float | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Matching accuracy (distance < ``threshold``, default ``margin / 2``) with bootstrap CIs,
    overall and per segment; the CIs resample the pairs' patients (``pairs.patient_ids``)."""
    threshold = margin / 2 if threshold is None else threshold
    predicted = (pair_distances(model, pairs) < threshold).astype(np.int64)
    y = np.asarray(pairs.match, dtype=np.int64)
    return scoped_records(
        "accuracy",
        lambda idx, groups: accuracy_ci(
            y[idx], predicted[idx], n_boot=n_boot, seed=seed, groups=groups
        ),
        len(y),
        keys_or_none(pairs.segments, len(y)),
        keys_or_none(pairs.patient_ids, len(y), "patient_ids"),
    )
