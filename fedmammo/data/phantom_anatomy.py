"""Phantom anatomy: breast outline and thickness, power-law fibroglandular texture, pectoral.

Everything is drawn in a canonical frame: chest wall at the left edge (column 0), nipple
pointing right, pectoral muscle (MLO only) in the top-left corner. The caller mirrors right
breasts. The output is a projected "density" field (0 = air, about 0.3 = fat, 1 = glandular
tissue or muscle) that an acquisition style turns into stored pixel values.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft

__all__ = [
    "ASPECT",
    "BreastGeometry",
    "GLANDULAR_FRACTION",
    "image_shape",
    "powerlaw_texture",
    "render_breast",
    "sample_breast",
]

#: Width / height of the phantom images (1152 x 832 as in periodic-sampling paper).
ASPECT = 13.0 / 18.0

#: Mean fraction of the breast area covered by glandular tissue per BI-RADS density A..D.
GLANDULAR_FRACTION: tuple[float, float, float, float] = (0.07, 0.22, 0.45, 0.70)

_MU_FAT = 0.32  # projected density of fat at full thickness
_MU_MUSCLE = 1.02  # pectoral muscle
_SKIN = 0.18  # extra density of the skin line
_TAU = 0.5  # softness of the fat / gland transition (texture standard deviations)


def image_shape(height: int) -> tuple[int, int]:
    """Return the (rows, columns) of a phantom image ``height`` pixels high (width ~0.72 h)."""
    width = max(4, 4 * int(round(height * ASPECT / 4)))
    return int(height), width


@lru_cache(maxsize=8)
def _log_frequency(shape: tuple[int, int]) -> np.ndarray:
    """log |f| on the rfft2 grid of ``shape`` (cycles per pixel); the DC term is set to 0."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    f = np.hypot(fy, fx)
    f[0, 0] = 1.0
    out = np.log(f).astype(np.float32)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=8)
def _grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Column (x) and row (y) pixel coordinates of ``shape`` as broadcastable float32 arrays."""
    y = np.arange(shape[0], dtype=np.float32)[:, None]
    x = np.arange(shape[1], dtype=np.float32)[None, :]
    y.flags.writeable = False
    x.flags.writeable = False
    return x, y


def powerlaw_texture(
    shape: tuple[int, int], *, beta: float = 3.0, rng: np.random.Generator
) -> np.ndarray:
    """Return a zero-mean, unit-variance random field whose power spectrum is P(f) ~ f^-beta.

    White Gaussian noise is filtered in the Fourier domain by ``f^(-beta/2)`` (the DC term is
    removed), the model of fibroglandular texture measured on real mammograms (beta ~ 3).
    """
    shape = (int(shape[0]), int(shape[1]))
    noise = rng.standard_normal(shape, dtype=np.float32)
    spectrum = scipy.fft.rfft2(noise, workers=1)
    gain = np.exp(np.float32(-0.5 * beta) * _log_frequency(shape))
    gain[0, 0] = 0.0
    spectrum *= gain
    field = scipy.fft.irfft2(spectrum, s=shape, workers=1).astype(np.float32, copy=False)
    field -= field.mean()
    std = float(field.std())
    if std > 0:
        field /= std
    return field


@dataclass(frozen=True)
class BreastGeometry:
    """Outline of one projected breast in the canonical frame (pixels).

    The breast is the half-ellipse ``(x / depth)^2 + ((y - centre_y) / half_height)^2 < 1``
    with ``x >= 0``; the nipple is at ``(depth, centre_y)``. ``pectoral`` is the muscle
    triangle's (width along the top edge, height along the chest wall), MLO only.
    ``falloff`` is the fraction of the radius over which the compressed thickness drops to 0.
    """

    view: str
    depth: float
    half_height: float
    centre_y: float
    falloff: float
    pectoral: tuple[float, float] | None = None

    def half_height_at(self, x: float) -> float:
        """Half of the breast's vertical extent at column ``x``."""
        r = min(max(x / self.depth, 0.0), 1.0)
        return self.half_height * float(np.sqrt(1.0 - r * r))

    def pectoral_edge(self, x: float) -> float:
        """Row of the pectoral muscle's lower edge at column ``x`` (-inf without muscle)."""
        if self.pectoral is None or x >= self.pectoral[0]:
            return float("-inf")
        width, height = self.pectoral
        return height * (1.0 - x / width)


def sample_breast(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, BreastGeometry]:
    """Draw the CC and MLO outlines of one breast (same nipple depth in both views)."""
    h, w = shape
    depth = rng.uniform(0.55, 0.84) * w
    falloff = rng.uniform(0.12, 0.2)
    cc = BreastGeometry(
        view="CC",
        depth=depth,
        half_height=rng.uniform(0.30, 0.42) * h,
        centre_y=h * (0.5 + rng.uniform(-0.04, 0.04)),
        falloff=falloff,
    )
    depth_mlo = min(depth * rng.uniform(0.96, 1.04), 0.9 * w)
    mlo = BreastGeometry(
        view="MLO",
        depth=depth_mlo,
        half_height=rng.uniform(0.46, 0.55) * h,
        centre_y=rng.uniform(0.38, 0.45) * h,
        falloff=falloff,
        pectoral=(rng.uniform(0.28, 0.45) * depth_mlo, rng.uniform(0.35, 0.55) * h),
    )
    return {"CC": cc, "MLO": mlo}


def _glandular_threshold(score: np.ndarray, mask: np.ndarray, fraction: float) -> float:
    """Value of ``score`` exceeded on ``fraction`` of the breast (a subsampled quantile)."""
    values = score[mask]
    if values.size == 0:
        return 0.0
    step = max(1, values.size // 4096)
    sample = values[::step]
    k = int(np.clip(round((1.0 - fraction) * (sample.size - 1)), 0, sample.size - 1))
    return float(np.partition(sample, k)[k])


def render_breast(
    geom: BreastGeometry,
    shape: tuple[int, int],
    *,
    density: int,
    spacing_mm: float,
    rng: np.random.Generator,
    beta: float = 3.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one breast: return (projected density, compressed thickness in [0, 1], mask).

    ``density`` is the BI-RADS class 1..4; it sets the glandular fraction of the breast.
    """
    x, y = _grid(shape)
    rho = np.sqrt((x / np.float32(geom.depth)) ** 2 + ((y - geom.centre_y) / geom.half_height) ** 2)
    mask = rho < 1.0
    inner = 1.0 - (1.0 - geom.falloff) ** 2
    thickness = np.sqrt(np.clip(1.0 - rho * rho, 0.0, None) / np.float32(inner))
    np.minimum(thickness, 1.0, out=thickness)

    texture = powerlaw_texture(shape, beta=beta, rng=rng)
    # glands gather behind the nipple, away from the skin and the chest wall
    centrality = np.clip(1.0 - rho, 0.0, 1.0) - 0.25 * np.exp(-x / np.float32(0.25 * geom.depth))
    score = texture + 1.2 * centrality
    fraction = float(
        np.clip(GLANDULAR_FRACTION[density - 1] + rng.uniform(-0.04, 0.04), 0.02, 0.95)
    )
    thr = _glandular_threshold(score, mask, fraction)
    gland = 1.0 / (1.0 + np.exp((thr - score) / np.float32(_TAU)))
    # glands plus a faint continuous component: fibrous strands and texture inside fat
    tissue = thickness * (_MU_FAT + (1.0 - _MU_FAT) * gland + 0.05 * texture)

    # skin line: a thin denser rim along the outline (about 1.5 mm)
    radius_px = 0.5 * (geom.depth + geom.half_height)
    skin_px = max(0.6, 1.5 / spacing_mm)
    skin = np.exp(-(((1.0 - rho) * np.float32(radius_px / skin_px)) ** 2))
    tissue += _SKIN * skin * mask

    if geom.pectoral is not None:
        width, height = geom.pectoral
        edge = x / np.float32(width) + y / np.float32(height)
        bow = 0.06 * np.sin(np.pi * np.clip(y / np.float32(height), 0.0, 1.0))
        muscle = np.clip((1.0 - bow - edge) / 0.04, 0.0, 1.0)
        muscle_density = thickness * (_MU_MUSCLE + 0.04 * texture)
        tissue = tissue * (1.0 - muscle) + muscle_density * muscle

    tissue *= mask
    return tissue.astype(np.float32, copy=False), thickness * mask, mask
