"""Phantom lesions: masses (round, oval, irregular, spiculated) and calcification clusters.

A lesion is drawn once per patient (:class:`LesionSpec`: kind, shape, size, distance from the
nipple, a seed for its outline) and rendered into both views of its breast at the same
distance from the nipple, so CC and MLO agree. Malignant masses are irregular or spiculated
with ill-defined margins; benign ones round or oval and circumscribed. Malignant calcification
clusters are dense, pleomorphic or fine-linear; benign ones sparse, round and uniform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from fedmammo.data.phantom_anatomy import BreastGeometry

__all__ = ["LesionSpec", "draw_lesion", "mirror_annotation", "sample_lesion"]

_MASS_SHAPES = ("round", "oval", "irregular", "spiculated")
_MASS_P = {True: (0.05, 0.10, 0.40, 0.45), False: (0.45, 0.45, 0.10, 0.0)}
_CALC_SHAPES = {True: ("pleomorphic", "fine-linear"), False: ("punctate", "coarse")}
_MASS_AMPLITUDE = 0.65  # density added at the centre of a mass, per unit lesion_contrast
_CALC_AMPLITUDE = 1.3  # density of one calcification speck, per unit lesion_contrast


@dataclass(frozen=True)
class LesionSpec:
    """One lesion of a patient, shared by the two views of its breast."""

    kind: str  # "mass" or "calcification"
    shape: str
    malignant: bool
    size_mm: float  # mass diameter, or cluster diameter
    nipple_distance: float  # fraction of the nipple depth, same in CC and MLO
    seed: int  # outline / speck layout

    def record(self, box: list[int]) -> dict[str, Any]:
        """The manifest's lesion record (see fedmammo.data.manifest.encode_lesions)."""
        return {"kind": self.kind, "shape": self.shape, "malignant": self.malignant, "box": box}


def sample_lesion(
    rng: np.random.Generator, *, malignant: bool, calcification_fraction: float
) -> LesionSpec:
    """Draw a lesion: a calcification cluster with ``calcification_fraction``, else a mass."""
    if rng.random() < calcification_fraction:
        kind = "calcification"
        shape = str(rng.choice(_CALC_SHAPES[malignant]))
        size = rng.uniform(6.0, 14.0) if malignant else rng.uniform(8.0, 16.0)
    else:
        kind = "mass"
        shape = str(rng.choice(_MASS_SHAPES, p=_MASS_P[malignant]))
        size = rng.uniform(10.0, 25.0) if malignant else rng.uniform(8.0, 18.0)
    return LesionSpec(
        kind=kind,
        shape=shape,
        malignant=malignant,
        size_mm=float(size),
        nipple_distance=float(rng.uniform(0.25, 0.7)),
        seed=int(rng.integers(2**31)),
    )


def _place(
    geom: BreastGeometry, spec: LesionSpec, radius: float, shape: tuple[int, int], u: float
) -> tuple[float, float]:
    """Centre of the lesion in a view: fixed distance from the nipple, position ``u`` across."""
    h, _ = shape
    x = geom.depth * (1.0 - spec.nipple_distance)
    half = geom.half_height_at(x)
    lo = max(geom.centre_y - 0.75 * half, geom.pectoral_edge(x) + radius, radius + 1.0)
    hi = min(geom.centre_y + 0.75 * half, h - radius - 2.0)
    if lo > hi:
        lo = hi = 0.5 * (lo + hi)
    return x, lo + u * (hi - lo)


def _patch(cx: float, cy: float, ext: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    h, w = shape
    x0, x1 = max(0, math.floor(cx - ext)), min(w, math.ceil(cx + ext) + 1)
    y0, y1 = max(0, math.floor(cy - ext)), min(h, math.ceil(cy + ext) + 1)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def _mass_params(spec: LesionSpec) -> dict[str, Any]:
    r = np.random.default_rng(spec.seed)
    k = np.arange(2, 7)
    if spec.shape in ("round", "oval"):
        amps = r.uniform(0.0, 0.03, k.size)
    elif spec.shape == "irregular":
        amps = r.uniform(0.05, 0.16, k.size) * (1.2 if spec.malignant else 0.7)
    else:  # spiculated: a mildly irregular core with spicules
        amps = r.uniform(0.02, 0.08, k.size)
    n_spic = int(r.integers(7, 15)) if spec.shape == "spiculated" else 0
    return {
        "aspect": float(r.uniform(1.35, 1.8)) if spec.shape == "oval" else 1.0,
        "k": k,
        "amps": amps,
        "phases": r.uniform(0, 2 * np.pi, k.size),
        "edge": 0.35 if spec.malignant else 0.12,
        "spicule_angles": r.uniform(0, 2 * np.pi, n_spic),
        "spicule_lengths": r.uniform(0.7, 1.8, n_spic),
    }


def _draw_mass(
    density: np.ndarray,
    thickness: np.ndarray,
    centre: tuple[float, float],
    radius: float,
    spec: LesionSpec,
    *,
    spacing_mm: float,
    amplitude: float,
    rot: float,
) -> tuple[list[int], list[list[float]]]:
    p = _mass_params(spec)
    cx, cy = centre
    spic_len = p["spicule_lengths"] * radius
    ext = radius * p["aspect"] * (1.0 + p["amps"].sum()) + (spic_len.max() if spic_len.size else 0)
    x0, y0, x1, y1 = _patch(cx, cy, ext + 1.5, density.shape)
    px = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    py = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    cos, sin = math.cos(rot), math.sin(rot)
    ue = (px * cos + py * sin) / (radius * p["aspect"])
    ve = (-px * sin + py * cos) / radius
    theta = np.arctan2(ve, ue)
    rad = 1.0 + np.tensordot(
        p["amps"], np.cos(np.multiply.outer(p["k"], theta) + p["phases"][:, None, None]), 1
    )
    rho = np.hypot(ue, ve) / rad
    core = np.clip((1.0 - rho) / p["edge"], 0.0, 1.0)
    val = core * core * (3.0 - 2.0 * core) * (0.55 + 0.45 * np.sqrt(np.clip(1.0 - rho * rho, 0, 1)))
    if spic_len.size:
        width = max(0.8, 1.0 / spacing_mm)
        ang = p["spicule_angles"] + rot
        tip = radius + spic_len
        dx, dy = np.cos(ang)[:, None, None], np.sin(ang)[:, None, None]
        t = np.clip((px * dx + py * dy) / tip[:, None, None], 0.0, 1.0)
        d = np.hypot(px - t * tip[:, None, None] * dx, py - t * tip[:, None, None] * dy)
        spic = (np.clip(1.0 - d / width, 0.0, 1.0) * np.sqrt(1.0 - t)).max(axis=0)
        val = np.maximum(val, 0.9 * spic)
    added = amplitude * val * thickness[y0:y1, x0:x1]
    density[y0:y1, x0:x1] += added
    box = _support_box(added > 0.25 * amplitude, x0, y0, cx, cy, density.shape)

    th = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    rr = 1.0 + (p["amps"][:, None] * np.cos(np.outer(p["k"], th) + p["phases"][:, None])).sum(0)
    u, v = rr * np.cos(th) * radius * p["aspect"], rr * np.sin(th) * radius
    outline = np.stack([cx + u * cos - v * sin, cy + u * sin + v * cos], axis=1)
    return box, np.round(outline, 2).tolist()


def _support_box(
    support: np.ndarray, x0: int, y0: int, cx: float, cy: float, shape: tuple[int, int]
) -> list[int]:
    ys, xs = np.nonzero(support)
    if ys.size == 0:  # too small to see at this size: one pixel around the centre
        xi = min(max(int(cx), 0), shape[1] - 1)
        yi = min(max(int(cy), 0), shape[0] - 1)
        return [xi, yi, xi + 1, yi + 1]
    return [x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1]


def _calc_layout(spec: LesionSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Speck offsets (mm, cluster frame), diameters (mm) and relative brightness."""
    r = np.random.default_rng(spec.seed)
    half = spec.size_mm / 2
    if spec.malignant:
        n = int(r.integers(10, 26))
        if spec.shape == "fine-linear":  # specks along 1-3 branches
            branch = r.integers(0, int(r.integers(1, 4)), n)
            ang = r.uniform(0, 2 * np.pi, 3)[branch]
            t = r.uniform(-1.0, 1.0, n) * half
            pos = np.stack([t * np.cos(ang), t * np.sin(ang)], 1) + r.normal(0, 0.06 * half, (n, 2))
        else:
            pos = np.clip(r.normal(0, half / 2.2, (n, 2)), -half, half)
        sizes = r.uniform(0.15, 0.8, n)  # pleomorphic: varied sizes and brightness
        bright = r.uniform(0.55, 1.1, n)
    else:
        n = int(r.integers(4, 11))
        rad, ang = half * np.sqrt(r.uniform(0, 1, n)), r.uniform(0, 2 * np.pi, n)
        pos = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
        lo, hi = (0.3, 0.5) if spec.shape == "punctate" else (0.6, 1.0)
        sizes = np.full(n, r.uniform(lo, hi))
        bright = np.full(n, r.uniform(0.75, 0.95))
    return pos, sizes, bright


def _draw_calcifications(
    density: np.ndarray,
    thickness: np.ndarray,
    centre: tuple[float, float],
    spec: LesionSpec,
    *,
    spacing_mm: float,
    amplitude: float,
    rot: float,
) -> tuple[list[int], list[list[float]], list[list[float]]]:
    pos_mm, sizes, bright = _calc_layout(spec)
    cos, sin = math.cos(rot), math.sin(rot)
    xs = centre[0] + (pos_mm[:, 0] * cos - pos_mm[:, 1] * sin) / spacing_mm
    ys = centre[1] + (pos_mm[:, 0] * sin + pos_mm[:, 1] * cos) / spacing_mm
    sigma = np.maximum(0.55, sizes / (2 * spacing_mm))
    ext = float(np.max(np.hypot(xs - centre[0], ys - centre[1]) + 3 * sigma))
    x0, y0, x1, y1 = _patch(centre[0], centre[1], ext + 1, density.shape)
    gx = np.exp(-((np.arange(x0, x1)[None, :] - xs[:, None]) ** 2) / (2 * sigma[:, None] ** 2))
    gy = np.exp(-((np.arange(y0, y1)[None, :] - ys[:, None]) ** 2) / (2 * sigma[:, None] ** 2))
    val = np.einsum("n,ny,nx->yx", amplitude * bright, gy, gx).astype(np.float32)
    density[y0:y1, x0:x1] += val * (thickness[y0:y1, x0:x1] > 0)
    h, w = density.shape
    box = [
        max(0, math.floor(float((xs - 1.5 * sigma).min()))),
        max(0, math.floor(float((ys - 1.5 * sigma).min()))),
        min(w, math.ceil(float((xs + 1.5 * sigma).max())) + 1),
        min(h, math.ceil(float((ys + 1.5 * sigma).max())) + 1),
    ]
    points = np.stack([xs, ys], 1)
    try:
        outline = points[ConvexHull(points).vertices]
    except (QhullError, ValueError):  # fewer than 3 or collinear specks: the box
        outline = np.array([[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]])
    return box, np.round(outline, 2).tolist(), np.round(points, 2).tolist()


def draw_lesion(
    density: np.ndarray,
    thickness: np.ndarray,
    geom: BreastGeometry,
    spec: LesionSpec,
    *,
    spacing_mm: float,
    contrast: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Add ``spec`` to ``density`` in place (canonical frame); return its annotation.

    The annotation holds the manifest record (kind, shape, malignant, box [x0, y0, x1, y1],
    exclusive end) plus ``outline`` (polygon, [[x, y], ...]), ``centre`` and, for
    calcifications, ``points`` (speck centres), all in pixel coordinates.
    """
    radius = spec.size_mm / (2 * spacing_mm)
    centre = _place(geom, spec, radius, density.shape, float(rng.uniform(0.0, 1.0)))
    rot = float(rng.uniform(0, 2 * np.pi))
    ann: dict[str, Any]
    if spec.kind == "mass":
        box, outline = _draw_mass(
            density,
            thickness,
            centre,
            radius,
            spec,
            spacing_mm=spacing_mm,
            amplitude=_MASS_AMPLITUDE * contrast,
            rot=rot,
        )
        ann = spec.record(box) | {"outline": outline}
    else:
        box, outline, points = _draw_calcifications(
            density,
            thickness,
            centre,
            spec,
            spacing_mm=spacing_mm,
            amplitude=_CALC_AMPLITUDE * contrast,
            rot=rot,
        )
        ann = spec.record(box) | {"outline": outline, "points": points}
    ann["centre"] = [round(centre[0], 2), round(centre[1], 2)]
    ann["size_mm"] = round(spec.size_mm, 2)
    return ann


def mirror_annotation(ann: dict[str, Any], width: int) -> dict[str, Any]:
    """Return ``ann`` mirrored left-right in an image ``width`` pixels wide (right breasts)."""
    out = dict(ann)
    x0, y0, x1, y1 = ann["box"]
    out["box"] = [width - x1, y0, width - x0, y1]
    for key in ("outline", "points"):
        if key in ann:
            out[key] = [[round(width - 1 - x, 2), y] for x, y in ann[key]]
    out["centre"] = [round(width - 1 - ann["centre"][0], 2), ann["centre"][1]]
    return out
