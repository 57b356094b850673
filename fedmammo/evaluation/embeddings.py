"""Encoder embeddings by vendor (Li et al., Fig. 7): t-SNE maps and a vendor-separation score.

A style-invariant encoder mixes vendors in its embedding space: the t-SNE map shows it and
the vendor silhouette (near 0 or below: vendors mixed; near 1: one cluster per vendor) puts a
number on it. Like :mod:`fedmammo.evaluation.latent`, these run inside a centre on per-image
embeddings that must not leave it; only the figure and the score do.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fedmammo.errors import DataError
from fedmammo.evaluation.figures import write_png
from fedmammo.evaluation.latent import embed_2d

__all__ = ["plot_embeddings_by_vendor", "vendor_silhouette"]

log = logging.getLogger(__name__)

_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown")


def vendor_silhouette(embeddings: np.ndarray, vendors: Sequence[str]) -> float:
    """Mean silhouette of the vendor clusters (cosine distance; NaN with fewer than 2 vendors)."""
    z = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray([str(v) for v in vendors])
    if z.ndim != 2 or len(z) != len(labels):
        raise DataError(f"vendor_silhouette: {z.shape} embeddings for {len(labels)} vendors")
    if not 2 <= len(set(labels)) < len(labels):
        return float("nan")
    from sklearn.metrics import silhouette_score  # scikit-learn and matplotlib load where used

    return float(silhouette_score(z, labels, metric="cosine"))


def plot_embeddings_by_vendor(
    embeddings: Mapping[str, np.ndarray],
    vendors: Sequence[str],
    path: str | Path,
    *,
    method: str = "tsne",
    seed: int = 0,
    title: str | None = None,
    dpi: int = 100,
) -> dict[str, np.ndarray]:
    """Write one 2-D map per encoder (``embeddings[name]``, N x D) coloured by vendor.

    Returns the 2-D points of each panel; each panel's title carries its vendor silhouette.
    """
    if not embeddings:
        raise DataError("plot_embeddings_by_vendor: no embeddings")
    labels = np.asarray([str(v) for v in vendors])
    sizes = {name: len(z) for name, z in embeddings.items()}
    if set(sizes.values()) != {len(labels)}:
        raise DataError(
            f"plot_embeddings_by_vendor: lengths differ: {sizes}, vendors {len(labels)}"
        )
    from matplotlib.figure import Figure

    points = {name: embed_2d(z, method=method, seed=seed) for name, z in embeddings.items()}
    names = sorted(set(labels))
    fig = Figure(figsize=(3.4 * len(points), 3.2), layout="constrained")
    axes = fig.subplots(1, len(points), squeeze=False)[0]
    for ax, (name, xy) in zip(axes, points.items(), strict=True):
        for k, vendor in enumerate(names):
            sel = labels == vendor
            ax.scatter(*xy[sel].T, s=8, c=_COLOURS[k % len(_COLOURS)], label=vendor)
        score = vendor_silhouette(embeddings[name], labels)
        ax.set_title(f"{name}\nvendor silhouette {score:.2f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=6, loc="best", markerscale=1.5)
    fig.suptitle(title or f"Embeddings by vendor ({method.upper()})")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(fig, out, dpi)
    log.info("wrote embedding map %s", out)
    return points
