"""Maps of a model's latent space (multi-task paper, Figure 6): 2-D PCA or t-SNE of z, coloured by
label.

These functions run where the images are (inside a centre): they take per-image latent codes
and labels, which must never leave the centre, and write only the figure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedmammo.errors import ConfigError, DataError
from fedmammo.evaluation.figures import write_png

__all__ = ["LATENT_ROWS", "embed_2d", "plot_latent"]

log = logging.getLogger(__name__)

#: Task -> class names of the figure's rows, in order (targets are class indices, -1 missing).
LATENT_ROWS: dict[str, tuple[str, ...]] = {
    "malignancy": ("benign", "malignant"),
    "view": ("CC", "MLO"),
    "density": ("A", "B", "C", "D"),
}
_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown")


def embed_2d(z: np.ndarray, *, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Project latent codes ``z`` (N, D) to 2-D with ``pca`` or ``tsne`` (deterministic)."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 3:
        raise DataError(f"latent codes must be (N >= 3, D), got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise DataError("latent codes hold NaN or infinite values")
    if method == "pca":
        from sklearn.decomposition import PCA  # scikit-learn and matplotlib load where used

        k = min(2, z.shape[1], z.shape[0])
        out = PCA(n_components=k, random_state=seed).fit_transform(z)
        return np.pad(out, ((0, 0), (0, 2 - k)))
    if method == "tsne":
        perplexity = float(min(30.0, max(2.0, (z.shape[0] - 1) / 3)))
        from sklearn.manifold import TSNE

        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        return tsne.fit_transform(z)
    raise ConfigError(f"unknown latent projection {method!r}; valid: pca, tsne")


def plot_latent(
    codes: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    method: str = "pca",
    seed: int = 0,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Write the Figure-6 grid: one column per model (``codes[arm]``), one row per task.

    Rows are the tasks of :data:`LATENT_ROWS` that ``labels`` holds (class indices, -1 =
    missing, drawn in light grey); every column projects its own codes with :func:`embed_2d`.
    """
    if not codes:
        raise DataError("plot_latent: no latent codes")
    sizes = {arm: len(z) for arm, z in codes.items()}
    sizes.update({f"labels[{t!r}]": len(v) for t, v in labels.items()})
    if len(set(sizes.values())) != 1:
        raise DataError(f"plot_latent: lengths differ: {sizes}")
    rows = [t for t in LATENT_ROWS if t in labels]
    if not rows:
        raise DataError(f"plot_latent: labels need one of {list(LATENT_ROWS)}, got {list(labels)}")
    from matplotlib.figure import Figure

    points = {arm: embed_2d(z, method=method, seed=seed) for arm, z in codes.items()}
    fig = Figure(figsize=(3.2 * len(points), 2.9 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(points), squeeze=False)
    for c, (arm, xy) in enumerate(points.items()):
        for r, task in enumerate(rows):
            ax = axes[r][c]
            y = np.asarray(labels[task])
            missing = y < 0
            if missing.any():
                ax.scatter(*xy[missing].T, s=6, c="lightgrey", label="n/a")
            for k, name in enumerate(LATENT_ROWS[task]):
                sel = y == k
                if sel.any():
                    ax.scatter(*xy[sel].T, s=8, c=_COLOURS[k % len(_COLOURS)], label=name)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(arm)
            if c == 0:
                ax.set_ylabel(task)
            ax.legend(fontsize=6, loc="best", markerscale=1.5)
    fig.suptitle(title or f"Latent space ({method.upper()})")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(fig, out, dpi)
    log.info("wrote latent map %s", out)
    return out
