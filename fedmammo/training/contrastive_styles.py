"""Style diversification for contrastive pre-training (Li et al., III-B-1): CycleGAN + blending.

Given M seen vendor styles, every image gets M - 1 translated versions, and a training view
blends two of its styles: ``style_blend = style_A * (1 - alpha) + style_B * alpha`` with
``alpha`` from {0, 0.1, ..., 1} (equation 2).

No pixel leaves a centre. A centre receives the other seen centres' shared generators of
square breast tiles (the share-GANs machinery), trains one CycleGAN per other vendor on its
own real tiles (domain A) against synthetic tiles of that vendor (domain B) with
:func:`fedmammo.training.cyclegan.train_cyclegan`, and translates its own whole images with
``G_ab`` (fully convolutional: trained on square tiles, applied to the whole image, as the
paper trains on 512 x 512 crops). Each centre therefore trains M - 1 CycleGANs (M(M-1) in
all, not the paper's C(M, 2)): a CycleGAN whose input side saw only synthetic images would
translate real images worse, and a generator trained on a centre's real images never leaves
it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedmammo.data.patches import extract_patch, healthy_patch_boxes
from fedmammo.errors import DataError
from fedmammo.training.cyclegan import train_cyclegan

__all__ = [
    "BLEND_ALPHAS",
    "StyleBank",
    "blend_styles",
    "breast_tiles",
    "build_style_bank",
    "sample_style_variants",
    "train_style_translators",
    "translate_images",
]

logger = logging.getLogger(__name__)

#: The interpolation factors of equation 2: 0, 0.1, ..., 1.
BLEND_ALPHAS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


def blend_styles(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, alpha):
    """Equation 2: ``a * (1 - alpha) + b * alpha`` (``alpha`` scalar or one per image)."""
    if a.shape != b.shape:
        raise DataError(
            f"blend_styles: styles differ in shape {tuple(a.shape)} vs {tuple(b.shape)}"
        )
    if isinstance(a, torch.Tensor):
        alpha = torch.as_tensor(alpha, dtype=a.dtype, device=a.device)
    else:
        alpha = np.asarray(alpha, dtype=np.result_type(a.dtype, np.float32))
    if (alpha < 0).any() or (alpha > 1).any():
        raise DataError("blend_styles: alpha must lie in [0, 1]")
    if alpha.ndim == 1:
        alpha = alpha.reshape(-1, *([1] * (a.ndim - 1)))
    return a * (1 - alpha) + b * alpha


@dataclass
class StyleBank:
    """Each image in every style: ``images`` (N, S, H, W) in [0, 1]; ``styles[0]`` is its own."""

    images: np.ndarray
    styles: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def translate_images(
    generator: nn.Module, images: np.ndarray, *, batch_size: int = 16
) -> np.ndarray:
    """Translate whole images (N, H, W) in [0, 1] with a CycleGAN generator; returns [0, 1].

    Images are reflect-padded to multiples of 4 (the generator's two stride-2 stages) and the
    result cropped back, so any H x W works.
    """
    arr = np.asarray(images)
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise DataError(f"translate_images: expected images (N, H, W), got {arr.shape}")
    if float(arr.min()) < 0.0 or float(arr.max()) > 1.0:
        raise DataError("translate_images: images must be in [0, 1]")
    h, w = arr.shape[1:]
    pad_h, pad_w = (-h) % 4, (-w) % 4
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(arr), batch_size):
            x = torch.from_numpy(arr[start : start + batch_size].astype(np.float32))[:, None]
            x = x.to(device) * 2.0 - 1.0
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
            y = generator(x)[:, 0, :h, :w]
            out.append(((y + 1.0) / 2.0).clamp(0.0, 1.0).cpu().numpy())
    generator.train(was_training)
    return np.concatenate(out).astype(np.float32)


def build_style_bank(
    images: np.ndarray,
    translators: Mapping[str, nn.Module],
    *,
    own_style: str,
    batch_size: int = 16,
) -> StyleBank:
    """Stack each image with its translations into every style of ``translators`` (sorted)."""
    arr = np.asarray(images, dtype=np.float32)
    names = sorted(translators)
    if own_style in names:
        raise DataError(f"build_style_bank: {own_style!r} is the images' own style")
    stack = [arr] + [translate_images(translators[s], arr, batch_size=batch_size) for s in names]
    return StyleBank(images=np.stack(stack, axis=1), styles=(own_style, *names))


def breast_tiles(
    images: np.ndarray,
    *,
    n: int,
    size: int,
    seed: int = 0,
    max_background: float = 0.4,
) -> np.ndarray:
    """``n`` random square tiles (n, size, size) of breast tissue (at most 40% background).

    Style (texture, contrast, noise) is local, so CycleGANs and the tile GANs they learn
    from train on tiles; whole images are translated afterwards.
    """
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim != 3 or len(arr) == 0 or n < 1:
        raise DataError(f"breast_tiles: expected images (N, H, W) and n >= 1, got {arr.shape}")
    side = min(size, *arr.shape[1:])
    rng = np.random.default_rng(seed)
    tiles: list[np.ndarray] = []
    for _ in range(4):  # a few passes: some images hold little breast
        for i in rng.permutation(len(arr)):
            if len(tiles) == n:
                break
            found = healthy_patch_boxes(
                arr[i], 1, size_px=side, max_background=max_background, rng=rng, max_tries=20
            )
            tiles += [extract_patch(arr[i], box, out_size=size) for box in found]
    if len(tiles) < n:
        raise DataError(f"breast_tiles: found {len(tiles)} of {n} tiles with enough breast")
    return np.stack(tiles).clip(0.0, 1.0)


def train_style_translators(
    own_tiles: np.ndarray,
    other_tiles: Mapping[str, np.ndarray],
    *,
    seed: int = 0,
    **cyclegan_options,
) -> tuple[dict[str, nn.Module], int]:
    """Train one CycleGAN per other style (seed ``seed + k`` for the k-th in sorted order);
    return style -> ``G_ab`` (own -> that style) and the CycleGAN steps taken.

    ``other_tiles`` holds (synthetic) square tiles of each other vendor; ``cyclegan_options``
    go to :func:`~fedmammo.training.cyclegan.train_cyclegan` (epochs, batch_size, width...).
    """
    out: dict[str, nn.Module] = {}
    steps = 0
    for k, style in enumerate(sorted(other_tiles)):
        result = train_cyclegan(own_tiles, other_tiles[style], seed=seed + k, **cyclegan_options)
        out[style] = result.generator("ab")
        steps += result.steps
        logger.info("style translator -> %s: %d steps", style, result.steps)
    return out, steps


def sample_style_variants(
    bank: np.ndarray, index: Sequence[int] | np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One style variant per index: a blend of two random distinct styles, alpha from the grid.

    ``bank`` is (N, S, H, W); with S = 1 the image itself is returned.
    """
    index = np.asarray(index, dtype=np.int64)
    n_styles = bank.shape[1]
    if n_styles == 1:
        return np.asarray(bank[index, 0], dtype=np.float32)
    first = rng.integers(0, n_styles, size=len(index))
    second = (first + rng.integers(1, n_styles, size=len(index))) % n_styles
    alpha = rng.choice(np.asarray(BLEND_ALPHAS, dtype=np.float32), size=len(index))
    a = np.asarray(bank[index, first], dtype=np.float32)
    b = np.asarray(bank[index, second], dtype=np.float32)
    return blend_styles(a, b, alpha).astype(np.float32)
