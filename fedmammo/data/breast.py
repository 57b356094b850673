"""Breast segmentation on a downsampled copy, and area / bilinear resizing (numpy and scipy)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.sparse
from scipy import ndimage

__all__ = ["SEGMENT_SIDE", "block_mean", "breast_mask", "resize"]

#: The breast is segmented on a block-averaged copy at least this many pixels across (its
#: short side); the mask is then applied at full size (blocks of the original pixels).
SEGMENT_SIDE = 96


def block_mean(img: np.ndarray, k: int) -> np.ndarray:
    """Average ``k`` x ``k`` blocks (a partial last block row/column is dropped)."""
    if k == 1:
        return img
    h, w = img.shape[0] // k, img.shape[1] // k
    view = img[: h * k, : w * k]
    rows = view[0::k].astype(np.float32)  # strided adds: faster than a reshaped sum
    for i in range(1, k):
        rows += view[i::k]
    out = rows[:, 0::k].copy()
    for j in range(1, k):
        out += rows[:, j::k]
    out *= np.float32(1.0 / (k * k))
    return out


def _otsu(x: np.ndarray) -> tuple[float, float]:
    """Return Otsu's threshold of ``x`` and the median of the values below it."""
    lo, hi = float(x.min()), float(x.max())
    bins = np.minimum(((x - lo) * (256 / (hi - lo))).astype(np.intp), 255)
    hist = np.bincount(bins.ravel(), minlength=256).astype(np.float64)
    p = hist / hist.sum()
    centres = np.arange(256) + 0.5
    omega = np.cumsum(p)
    mu = np.cumsum(p * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1.0 - omega))
    between[~np.isfinite(between)] = -1.0
    t = int(np.argmax(between[:-1])) + 1  # bins >= t are foreground
    below = np.cumsum(hist[:t])
    median_bin = int(np.searchsorted(below, below[-1] / 2)) + 0.5
    return lo + t * (hi - lo) / 256, lo + median_bin * (hi - lo) / 256


def _largest(binary: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(binary)
    if n == 0:
        return binary
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions that do not touch the image border: one labelling pass, where
    ``scipy.ndimage.binary_fill_holes`` propagates from the border iteratively."""
    labels, n = ndimage.label(~mask)
    hole = np.ones(n + 1, dtype=bool)
    hole[0] = False
    hole[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False
    return mask | hole[labels]


def breast_mask(img: np.ndarray) -> tuple[np.ndarray, int] | None:
    """Return the breast mask on a ``k`` x ``k`` block-averaged copy of ``img`` and ``k``.

    The core is the largest object above Otsu's threshold after an opening (which cuts thin
    bridges to scanner borders and film edges). The mask is the whole connected region, above
    a lower threshold (a quarter of the way from the background level to Otsu's), that holds
    the core, after an opening by 3% of the image size: it keeps the fatty periphery however
    far it reaches, without following strips along film edges or bridges to labels. Holes are
    filled and the mask grows by one block (the skin line). None for a blank image.
    """
    k = max(1, min(img.shape) // SEGMENT_SIDE)
    small = block_mean(img, k)
    if small.max() - small.min() < 1e-6:
        return None
    otsu, background = _otsu(small)
    side = max(small.shape)
    core = _largest(_opened(small >= otsu, 2 * max(1, round(0.006 * side)) + 1))
    low = small >= background + 0.25 * (otsu - background)
    periphery = _opened(low, 2 * max(1, round(0.03 * side)) + 1) | core
    labels, _ = ndimage.label(periphery)
    mask = labels == int(np.bincount(labels[core]).argmax())  # the region holding the core
    return ndimage.maximum_filter(_fill_holes(mask), size=3), k


def _opened(binary: np.ndarray, size: int) -> np.ndarray:
    """Morphological opening by a ``size`` square; the input itself if nothing survives."""
    opened = ndimage.maximum_filter(ndimage.minimum_filter(binary, size=size), size=size)
    return opened if opened.any() else binary


@lru_cache(maxsize=256)
def _weights(n_in: int, n_out: int, mode: str) -> scipy.sparse.csr_matrix:
    """The (n_out, n_in) matrix resizing one axis: 'area' (adaptive average pooling, as
    torch's ``interpolate(mode="area")``) or 'bilinear' (half-pixel centres)."""
    i = np.arange(n_out)
    if mode == "area":
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        counts = end - start
        cols = np.concatenate([np.arange(s, e) for s, e in zip(start, end, strict=True)])
        rows = np.repeat(i, counts)
        vals = np.repeat(1.0 / counts, counts)
    else:
        src = np.maximum((i + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.intp), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        frac = src - i0
        rows, cols = np.concatenate([i, i]), np.concatenate([i0, i1])
        vals = np.concatenate([1.0 - frac, frac])
    matrix = scipy.sparse.coo_matrix(
        (vals.astype(np.float32), (rows, cols)), shape=(n_out, n_in)
    ).tocsr()
    matrix.sum_duplicates()
    return matrix


def resize(img: np.ndarray, shape: tuple[int, int], *, flip: bool = False) -> np.ndarray:
    """Resize ``img`` to ``shape`` (area averaging when shrinking, bilinear when enlarging,
    chosen by the rows as before), mirrored left-right when ``flip``; values clipped to [0, 1].
    """
    mode = "area" if shape[0] < img.shape[0] else "bilinear"
    rows = _weights(img.shape[0], shape[0], mode)
    cols = _weights(img.shape[1], shape[1], mode)
    if flip:
        cols = cols[::-1]
    out = np.asarray((cols @ np.asarray(rows @ img).T).T, dtype=np.float32)
    return np.clip(out, 0.0, 1.0, out=out)
