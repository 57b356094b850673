"""Style diversification at the centres (Li et al., III-B-1), without moving a pixel.

Why this design: the paper trains a CycleGAN between every pair of seen vendors on real
images of both, which needs the vendors' images in one place. Here each seen centre trains a
DCGAN on square tiles of its own breast tissue and shares only that generator (the GAN-sharing
machinery: :func:`fedmammo.training.gan.train_dcgan`); every seen centre receives the other
seen centres' generators, samples synthetic tiles of each other vendor, trains one CycleGAN per
other vendor between its own real tiles and those synthetic tiles, and translates its own
images into every other seen style (:mod:`fedmammo.training.contrastive_styles`). So M seen
centres train M(M-1) CycleGANs (not C(M, 2)), and no generator trained on real images of a
centre other than the tile DCGAN ever leaves it; the translated images stay where they are.

The pooled what-if node (simulation only, pixels moved) does what the paper does: C(M, 2)
CycleGANs between the real tiles of each pair of vendors, both directions used.

A centre keeps its bank (every training image in every seen style) and its translators on its
own disk (:class:`StyleStore`), for the pre-training rounds and the embedding maps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import textwrap
from collections.abc import Mapping
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from fedmammo.data.prepare import CentreData
from fedmammo.errors import ConfigError, DataError
from fedmammo.files import replace_npz
from fedmammo.methods.contrastive_dg.params import CycleGanParams, TileGanParams
from fedmammo.models.cyclegan import ResnetGenerator
from fedmammo.models.gans import GeneratorDescription, sample_generator
from fedmammo.training.contrastive_styles import (
    StyleBank,
    blend_styles,
    breast_tiles,
    train_style_translators,
    translate_images,
)
from fedmammo.training.cyclegan import train_cyclegan
from fedmammo.training.gan import GanResult, train_dcgan

__all__ = [
    "StyleStore",
    "build_centre_styles",
    "build_pooled_styles",
    "plot_style_grid",
    "styles_key",
    "train_rows",
    "train_tile_generator",
]

log = logging.getLogger(__name__)


def styles_key(*parts: object) -> str:
    """A short, stable name of a style bank (what determines it: seed, settings, data)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _checked(key: str) -> str:
    """``key`` if it is a plain name such as a :func:`styles_key` (a server sends it; it
    names files in the centre's folder): letters, digits, ``_`` and ``-``, at most 64."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(key)):
        raise ConfigError(
            f"style bank name {key!r} refused: letters, digits, _ and - only (at most 64)"
        )
    return key


def train_rows(data: CentreData, split: str = "train") -> tuple[pd.DataFrame, np.ndarray]:
    """Manifest rows of a split, labelled or not (reset index), and their images (N, H, W)."""
    frame = data.manifest.iloc[data.rows(split, label=None)].reset_index(drop=True)
    if frame.empty:
        raise DataError(f"centre {data.name!r}: no images in its {split!r} split")
    images = data.cache.images(data.cache.rows(frame["image_id"].astype(str)))
    return frame, images


def train_tile_generator(
    images: np.ndarray, tiles: TileGanParams, *, seed: int, centre: str
) -> tuple[GanResult, int]:
    """Train the centre's shareable tile DCGAN on ``tiles.n_tiles`` of its breast tiles."""
    real = breast_tiles(images, n=tiles.n_tiles, size=tiles.tile_size, seed=seed)
    result = train_dcgan(real, **tiles.gan_kwargs(), seed=seed, centre=centre)
    return result, len(real)


def build_centre_styles(
    images: np.ndarray,
    *,
    own_style: str,
    generators: Mapping[str, tuple[GeneratorDescription, Mapping[str, torch.Tensor]]],
    tiles: TileGanParams,
    cyclegan: CycleGanParams,
    seed: int,
) -> tuple[StyleBank, dict[str, nn.Module], int]:
    """The centre's bank (own style first, then the others sorted), translators, CycleGAN steps.

    ``generators``: style -> (description, weights) of the other seen centres' tile DCGANs.
    """
    own = breast_tiles(images, n=tiles.n_tiles, size=tiles.tile_size, seed=seed)
    synthetic: dict[str, np.ndarray] = {}
    for k, style in enumerate(sorted(generators)):
        desc, state = generators[style]
        if desc.patch_size != tiles.tile_size:
            raise DataError(
                f"generator of {style!r} makes {desc.patch_size}-px tiles, the recipe's "
                f"tile_size is {tiles.tile_size}"
            )
        synthetic[style] = sample_generator(desc, [state], tiles.n_synthetic, seed=seed + 7919 * k)
    translators, steps = train_style_translators(own, synthetic, seed=seed, **cyclegan.model_dump())
    return _bank(images, own_style, translators), translators, steps


def _bank(images: np.ndarray, own_style: str, translators: Mapping[str, nn.Module]) -> StyleBank:
    names = sorted(translators)
    stack = [np.asarray(images, np.float32)] + [
        translate_images(translators[s], images) for s in names
    ]
    return StyleBank(images=np.stack(stack, axis=1), styles=(own_style, *names))


def build_pooled_styles(
    parts: Mapping[str, np.ndarray],
    *,
    tiles: TileGanParams,
    cyclegan: CycleGanParams,
    seed: int,
) -> tuple[dict[str, StyleBank], dict[str, dict[str, nn.Module]], int]:
    """The paper's style diversification on pooled real images: one CycleGAN per pair of
    vendors (C(M, 2)), both directions used. Returns banks and translators per style, steps."""
    real = {
        s: breast_tiles(im, n=tiles.n_tiles, size=tiles.tile_size, seed=seed + k)
        for k, (s, im) in enumerate(sorted(parts.items()))
    }
    translators: dict[str, dict[str, nn.Module]] = {s: {} for s in parts}
    steps = 0
    for k, (a, b) in enumerate(combinations(sorted(parts), 2)):
        result = train_cyclegan(real[a], real[b], seed=seed + k, **cyclegan.model_dump())
        translators[a][b], translators[b][a] = result.generator("ab"), result.generator("ba")
        steps += result.steps
    banks = {s: _bank(parts[s], s, translators[s]) for s in parts}
    return banks, translators, steps


class StyleStore:
    """A centre's own folder for its style bank and translators (never sent anywhere)."""

    def __init__(self, root: str | Path, centre: str) -> None:
        self.folder = Path(root) / centre

    def _bank_path(self, key: str) -> Path:
        return self.folder / f"styles-{_checked(key)}.npz"

    def _translator_path(self, key: str) -> Path:
        return self.folder / f"translators-{_checked(key)}.pt"

    def has(self, key: str) -> bool:
        """True when the bank ``key`` is on disk."""
        return self._bank_path(key).is_file()

    def save(
        self,
        key: str,
        bank: StyleBank,
        image_ids: list[str],
        translators: Mapping[str, nn.Module],
        cyclegan: CycleGanParams,
    ) -> None:
        """Write the bank (float16 images, style names, image ids) and the translators."""
        self.folder.mkdir(parents=True, exist_ok=True)
        arrays = {
            "images": bank.images.astype(np.float16),
            "styles": np.asarray(bank.styles),
            "image_ids": np.asarray(image_ids),
        }
        replace_npz(self._bank_path(key), arrays)
        torch.save(
            {
                "width": cyclegan.width,
                "n_blocks": cyclegan.n_blocks,
                "states": {s: g.state_dict() for s, g in translators.items()},
            },
            self._translator_path(key),
        )

    def bank(self, key: str, image_ids: list[str]) -> StyleBank:
        """The bank ``key`` for exactly these images, in this order."""
        if not self.has(key):
            raise DataError(
                f"no style bank {key!r} in {self.folder}: the server sends train.style_bank "
                "before the pre-training rounds that need it (run the whole scenario again)"
            )
        with np.load(self._bank_path(key)) as z:
            images, styles, ids = z["images"], tuple(map(str, z["styles"])), list(z["image_ids"])
        if list(map(str, ids)) != list(map(str, image_ids)):
            raise DataError(f"style bank {key!r} in {self.folder} holds other images; rebuild it")
        return StyleBank(images=images.astype(np.float32), styles=styles)

    def translators(self, key: str) -> dict[str, nn.Module]:
        """The stored translators (style -> generator, eval mode); empty when there are none."""
        path = self._translator_path(key)
        if not path.is_file():
            return {}
        saved = torch.load(path, weights_only=True)
        out = {}
        for style, state in saved["states"].items():
            gen = ResnetGenerator(width=int(saved["width"]), n_blocks=int(saved["n_blocks"]))
            gen.load_state_dict(state)
            out[style] = gen.eval()
        return out


def plot_style_grid(
    bank: StyleBank,
    path: str | Path,
    *,
    n_images: int = 4,
    seed: int = 0,
    title: str = "",
    dpi: int = 100,
) -> Path:
    """Rows of images in every style of the bank, then blends of the first two styles
    (equation 2, alpha 0.25, 0.5, 0.75)."""
    n = min(n_images, len(bank))
    pick = np.random.default_rng(seed).choice(len(bank), size=n, replace=False)
    alphas = (0.25, 0.5, 0.75) if len(bank.styles) > 1 else ()
    labels = list(bank.styles) + [f"{bank.styles[0]}/{bank.styles[1]} a={a}" for a in alphas]
    from matplotlib.figure import Figure

    from fedmammo.evaluation.figures import write_png

    fig = Figure(figsize=(1.3 * len(labels), 1.6 * n + 0.6), layout="constrained")
    axes = fig.subplots(n, len(labels), squeeze=False)
    for r, i in enumerate(pick):
        tiles = [bank.images[i, s] for s in range(len(bank.styles))]
        tiles += [blend_styles(bank.images[i, 0], bank.images[i, 1], a) for a in alphas]
        for c, tile in enumerate(tiles):
            ax = axes[r, c]
            ax.imshow(np.asarray(tile, np.float32), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(labels[c], fontsize=7)
    text = title or "Style bank: own style, translations, blends"
    fig.suptitle("\n".join(textwrap.wrap(text, width=max(30, 18 * len(labels)))), fontsize=8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(fig, out, dpi)
    return out
