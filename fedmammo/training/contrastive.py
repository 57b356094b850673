"""Local contrastive pre-training (Li et al.): SimCLR, MSCL, MVCL and MSVCL on one centre's images.

One step draws ``batch_size`` source images (SimCLR, MSCL) or breasts (MVCL) and makes two
views of each, so a batch holds ``2 * batch_size`` samples:

- ``simclr``: two augmentations of the image in its own style (equation 1, all negatives);
- ``mscl``: two style variants of the same image (a blend of two of its styles, see
  :mod:`fedmammo.training.contrastive_styles`), domain-knowledge negatives;
- ``mvcl``: the CC and the MLO image of one breast, each in a random style variant;
- ``msvcl``: an MSCL and an MVCL batch per step, loss ``L_mscl + mvcl_weight * L_mvcl``.

Every view then gets the paper's diversifying operations: random crop (zoom), rotation within
+-10 degrees, a flip and brightness/contrast jitter of strength 0.2. The flip is vertical, not
horizontal: fedmammo flips right breasts so every chest wall is on the same side.

No DP: the NT-Xent loss of one sample depends on every other sample of the batch (its
negatives), so per-example gradient clipping does not bound one patient's influence and
DP-SGD's guarantee would not hold; :func:`pretrain_contrastive` refuses a DP session.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from fedmammo.data.pairs import breast_keys, contrastive_masks, view_pairs
from fedmammo.errors import ConfigError, DataError
from fedmammo.models.contrastive_losses import DEFAULT_TAU, nt_xent_loss
from fedmammo.progress import progress
from fedmammo.training.contrastive_styles import sample_style_variants
from fedmammo.training.state import StateDict, cpu_state

__all__ = [
    "PRETRAIN_SCHEMES",
    "ContrastiveResult",
    "augment_views",
    "encode_images",
    "pretrain_contrastive",
]

logger = logging.getLogger(__name__)


#: Pre-training schemes (the paper's v2 variants; ``simclr`` is the plain baseline).
PRETRAIN_SCHEMES: tuple[str, ...] = ("simclr", "mscl", "mvcl", "msvcl")


@dataclass
class ContrastiveResult:
    """What one local pre-training call did: per-epoch losses and the encoder's state."""

    scheme: str
    steps: int
    num_examples: int
    loss: float
    seconds: float
    state: StateDict = field(repr=False, default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def augment_views(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    min_crop: float = 0.6,
    max_degrees: float = 10.0,
    jitter: float = 0.2,
) -> torch.Tensor:
    """Random crop (area ``min_crop``-1), rotation, vertical flip and jitter of (N, 1, H, W)."""
    n = x.shape[0]
    u = torch.rand(n, 6, generator=generator, dtype=x.dtype)
    scale = torch.sqrt(min_crop + (1.0 - min_crop) * u[:, 0])  # side fraction of the crop
    theta = (2 * u[:, 1] - 1) * math.radians(max_degrees)
    flip = torch.where(u[:, 2] < 0.5, -1.0, 1.0).to(x.dtype)
    shift_x = (2 * u[:, 3] - 1) * (1 - scale)
    shift_y = (2 * u[:, 4] - 1) * (1 - scale)
    cos, sin = torch.cos(theta) * scale, torch.sin(theta) * scale
    affine = torch.stack(
        [
            torch.stack([cos, -sin * flip, shift_x], dim=1),
            torch.stack([sin, cos * flip, shift_y], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(affine, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    strength = 0.8 * jitter
    j = torch.rand(n, 2, generator=generator, dtype=x.dtype) * 2 - 1
    brightness = (1 + strength * j[:, 0]).view(n, 1, 1, 1)
    contrast = (1 + strength * j[:, 1]).view(n, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out * brightness - mean) * contrast + mean).clamp(0.0, 1.0)


def _bank(styles: np.ndarray) -> np.ndarray:
    bank = np.asarray(styles)
    if bank.ndim == 3:
        bank = bank[:, None]
    if bank.ndim != 4 or bank.shape[0] == 0:
        raise DataError(f"contrastive pre-training: styles must be (N, S, H, W), got {bank.shape}")
    return bank


def _check(scheme: str, bank: np.ndarray, frame: pd.DataFrame, privacy: Any) -> pd.DataFrame:
    if privacy is not None:
        raise ConfigError(
            "contrastive pre-training cannot run under DP-SGD: the NT-Xent loss of one image "
            "depends on every other image of its batch, so per-example clipping does not bound "
            "a patient's influence. Fix: turn privacy off for the pre-training phase (DP can "
            "apply to the downstream fine-tuning)."
        )
    if scheme not in PRETRAIN_SCHEMES:
        raise ConfigError(f"unknown pre-training scheme {scheme!r}; valid: {PRETRAIN_SCHEMES}")
    if len(frame) != len(bank):
        raise DataError(f"{len(frame)} manifest rows for {len(bank)} images")
    if scheme in ("mscl", "msvcl") and bank.shape[1] < 2:
        raise DataError(
            f"{scheme} needs every image in at least 2 styles, got 1; build a style bank with "
            "fedmammo.training.contrastive_styles.build_style_bank first"
        )
    pairs = view_pairs(frame)
    if scheme in ("mvcl", "msvcl") and pairs.empty:
        raise DataError(f"{scheme} needs breasts with a CC and an MLO image; the rows have none")
    return pairs


class _Batcher:
    """Draws the two-view batches of one scheme; keeps the keys the masks need."""

    def __init__(self, bank: np.ndarray, frame: pd.DataFrame, pairs: pd.DataFrame, seed: int):
        self.bank, self.pairs = bank, pairs
        self.patient = frame["patient_id"].astype(str).to_numpy()
        self.image = frame["image_id"].astype(str).to_numpy()
        self.view = frame["view"].astype(str).str.upper().to_numpy()
        self.breast = breast_keys(frame).astype(str).to_numpy()
        self.rng = np.random.default_rng(seed)

    def _keys(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "patient": self.patient[rows],
            "image": self.image[rows],
            "view": self.view[rows],
            "breast": self.breast[rows],
        }

    def draw(self, scheme: str, size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if scheme == "mvcl":
            take = self.rng.choice(len(self.pairs), size=min(size, len(self.pairs)), replace=False)
            rows = np.concatenate(
                [self.pairs["cc"].to_numpy()[take], self.pairs["mlo"].to_numpy()[take]]
            )
            images = sample_style_variants(self.bank, rows, self.rng)
        else:
            idx = self.rng.choice(len(self.bank), size=min(size, len(self.bank)), replace=False)
            rows = np.concatenate([idx, idx])
            if scheme == "simclr":
                images = np.asarray(self.bank[rows, 0], dtype=np.float32)
            else:
                images = sample_style_variants(self.bank, rows, self.rng)
        return images, self._keys(rows)


def _loss(z: torch.Tensor, keys: dict[str, np.ndarray], scheme: str, tau: float) -> torch.Tensor:
    pos, neg = contrastive_masks(**keys, scheme=scheme)
    return nt_xent_loss(z, torch.from_numpy(pos), torch.from_numpy(neg), tau=tau)


def pretrain_contrastive(
    encoder: nn.Module,
    styles: np.ndarray,
    frame: pd.DataFrame,
    *,
    scheme: str = "msvcl",
    tau: float = DEFAULT_TAU,
    epochs: int = 1,
    batch_size: int = 16,
    steps_per_epoch: int | None = None,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 1e-6,
    mvcl_weight: float = 1.0,
    augment: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    privacy: Any | None = None,
) -> ContrastiveResult:
    """Pre-train ``encoder`` in place on one centre's images; deterministic given ``seed``.

    ``styles`` is (N, S, H, W) in [0, 1] (image i in its own style at ``[:, 0]``, S - 1
    translations after it; (N, H, W) means S = 1) and ``frame`` the N manifest rows
    (image_id, patient_id, laterality, view). An epoch is ``ceil(N / batch_size)`` steps
    unless ``steps_per_epoch`` says otherwise. ``optimizer`` is ``adam`` or ``sgd``
    (momentum 0.9; the paper's SGD at lr 0.3 needs batch 256).
    """
    start = time.perf_counter()
    bank = _bank(styles)
    pairs = _check(scheme, bank, frame, privacy)
    if batch_size < 2:
        raise ConfigError(f"contrastive batch_size must be >= 2 (negatives), got {batch_size}")
    steps_per_epoch = steps_per_epoch or math.ceil(len(bank) / batch_size)
    parts = ("mscl", "mvcl") if scheme == "msvcl" else (scheme,)
    batcher = _Batcher(bank, frame, pairs, seed)
    gen = torch.Generator().manual_seed(seed)
    encoder.to(device).train()
    params = [p for p in encoder.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=lr, momentum=0.9, weight_decay=weight_decay
        )
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ConfigError(f"contrastive optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    result = ContrastiveResult(scheme=scheme, steps=0, num_examples=0, loss=math.nan, seconds=0.0)
    for epoch in progress(range(1, epochs + 1), f"{scheme} pre-training epochs"):
        sums = dict.fromkeys(("loss", *parts), 0.0)
        for _ in range(steps_per_epoch):
            drawn = [batcher.draw(part, batch_size) for part in parts]
            x = torch.from_numpy(np.concatenate([d[0] for d in drawn]))[:, None]
            if augment:
                x = augment_views(x, gen)
            z = encoder(x.to(device))
            losses, offset = {}, 0
            for part, (images, keys) in zip(parts, drawn, strict=True):
                losses[part] = _loss(z[offset : offset + len(images)], keys, part, tau)
                offset += len(images)
            loss = losses[parts[0]] + (mvcl_weight * losses["mvcl"] if scheme == "msvcl" else 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.steps += 1
            result.num_examples += len(x)
            sums["loss"] += float(loss.detach()) / steps_per_epoch
            for part in parts:
                sums[part] += float(losses[part].detach()) / steps_per_epoch
        result.history.append({"epoch": float(epoch), **sums})
    result.loss = result.history[-1]["loss"] if result.history else math.nan
    result.state = cpu_state(encoder)
    result.seconds = time.perf_counter() - start
    logger.info("contrastive %s: %d steps, loss %.4f", scheme, result.steps, result.loss)
    return result


@torch.no_grad()
def encode_images(
    encoder: nn.Module,
    images: np.ndarray,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Backbone features (N, feature_dim) of images (N, H, W) in [0, 1], in eval mode."""
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim != 3:
        raise DataError(f"encode_images: expected images (N, H, W), got {arr.shape}")
    was_training = encoder.training
    encoder.to(device).eval()
    out = [
        encoder.features(torch.from_numpy(arr[i : i + batch_size])[:, None].to(device))
        .cpu()
        .numpy()
        for i in range(0, len(arr), batch_size)
    ]
    encoder.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
