"""Phantom acquisition styles: what a vendor's device and processing do to the same breast.

A style turns a projected density field into stored DICOM pixel values: detector blur,
exposure (Beer-Lambert), quantum and electronic noise, log conversion, the vendor's tone
curve, background and collimation, bit depth and photometric interpretation, and the VOI
window it advertises. The differences are deliberately large enough that a small CNN tells
vendors apart from pixels alone: the shortcut periodic-sampling paper warns about.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from fedmammo.errors import ConfigError

__all__ = ["STYLES", "AcquisitionStyle", "acquire", "get_style"]

_K = 2.2  # attenuation scale: raw signal = exp(-_K * density)
_P_REF = 1.45  # density mapped to the top of the presentation range


@dataclass(frozen=True)
class AcquisitionStyle:
    """A vendor's acquisition and processing, or digitised film.

    Noise levels are standard deviations per stored pixel relative to the full range (quantum
    noise before the log conversion, so larger in dense tissue; electronic noise additive);
    ``blur`` is the Gaussian sigma, in stored pixels, of the vendor's smoothing (like noise, a
    per-pixel property, so a style looks the same at every image size).
    """

    name: str
    model: str  # ManufacturerModelName
    pixel_spacing: float  # native detector pixel spacing, mm
    native_rows: int  # detector rows at native spacing (field of view = spacing x rows)
    bits_stored: int  # 12, 14 or 16
    photometric: str  # "MONOCHROME1" (white background) or "MONOCHROME2"
    curve: str  # tone curve after log conversion: "gamma", "log" or "film" (H&D sigmoid)
    curve_param: float  # gamma exponent, log gain or film gradient
    quantum_noise: float
    electronic_noise: float
    blur: float
    background: float  # presentation value (0 black .. 1 white) outside the breast
    output_range: tuple[float, float]  # fraction of the stored range used by the breast
    voi_function: str = "LINEAR"  # VOILUTFunction: "LINEAR" or "SIGMOID"
    manufacturer_tag: bool = True  # False: no Manufacturer tag (digitised film, CBIS-DDSM)
    padding: bool = False  # background is exactly PixelPaddingValue
    row_noise: float = 0.0  # detector read-out stripes (per-row offsets)
    collimation: float = 0.0  # white collimator bands at top and bottom, fraction of height
    grain: float = 0.0  # film grain
    equalise: float = 0.0  # peripheral (thickness) equalisation: lifts the skin-line fall-off
    burned_in_label: bool = False  # a film label rectangle with text in a corner
    marker: bool = False  # a burned-in laterality/view marker block at the bottom nipple corner
    border: float = 0.0  # black frame (inactive detector area) on the non-chest-wall sides
    view_text: bool = False  # burned-in laterality + view text ("RMLO") at the top nipple corner
    description: str = ""

    @property
    def field_of_view_mm(self) -> float:
        """Detector height in mm (pixel spacing x rows)."""
        return self.pixel_spacing * self.native_rows

    @property
    def max_value(self) -> int:
        return (1 << self.bits_stored) - 1

    def spacing_for(self, height: int) -> float:
        """Pixel spacing (mm) of a stored image ``height`` rows high covering the detector."""
        return self.field_of_view_mm / height

    def window(self) -> tuple[float, float]:
        """(WindowCenter, WindowWidth) in stored values: from between background and the
        breast's floor (so fat shows grey above a black background) to the breast's top."""
        floor, top = self.output_range
        lo = (floor - 0.6 * max(floor - self.background, 0.0)) * self.max_value
        hi = top * self.max_value
        centre, width = 0.5 * (lo + hi), hi - lo
        if self.photometric == "MONOCHROME1":
            centre = self.max_value - centre
        if self.voi_function == "SIGMOID":
            width *= 0.8
        return round(centre, 1), round(width, 1)

    def padding_value(self) -> int:
        """Stored value of the background when ``padding`` is set."""
        return self.max_value if self.photometric == "MONOCHROME1" else 0


#: Style registry: name -> style. A segment's ``style`` (default: manufacturer.lower()) picks one.
STYLES: dict[str, AcquisitionStyle] = {
    s.name: s
    for s in (
        AcquisitionStyle(
            name="ma",
            model="MA-3000 DR",
            pixel_spacing=0.07,
            native_rows=3328,
            bits_stored=12,
            photometric="MONOCHROME2",
            curve="gamma",
            curve_param=0.6,
            quantum_noise=0.008,
            electronic_noise=0.002,
            blur=0.5,
            background=0.0,
            output_range=(0.3, 0.95),
            padding=True,
            marker=True,
            description="12-bit, bright gamma 0.6, black padded background, view marker",
        ),
        AcquisitionStyle(
            name="mb",
            model="MB Clarity 2",
            pixel_spacing=0.1,
            native_rows=2294,
            bits_stored=14,
            photometric="MONOCHROME1",
            curve="log",
            curve_param=4.0,
            quantum_noise=0.015,
            electronic_noise=0.004,
            blur=0.7,
            background=0.0,
            output_range=(0.08, 0.85),
            description="14-bit MONOCHROME1 (inverted), log tone curve",
        ),
        AcquisitionStyle(
            name="mc",
            model="MC Vision 5",
            pixel_spacing=0.085,
            native_rows=2816,
            bits_stored=16,
            photometric="MONOCHROME2",
            curve="gamma",
            curve_param=1.0,
            quantum_noise=0.005,
            electronic_noise=0.001,
            blur=1.1,
            background=0.1,
            output_range=(0.25, 0.8),
            voi_function="SIGMOID",
            border=0.04,
            description="16-bit, linear, smooth, grey background in a black frame, SIGMOID VOI",
        ),
        AcquisitionStyle(
            name="md",
            model="MD Nuance",
            pixel_spacing=0.094,
            native_rows=2560,
            bits_stored=12,
            photometric="MONOCHROME2",
            curve="gamma",
            curve_param=0.8,
            quantum_noise=0.03,
            electronic_noise=0.004,
            blur=0.0,
            background=0.15,
            output_range=(0.35, 0.95),
            row_noise=0.03,
            view_text=True,
            description="12-bit, sharp and noisy, read-out stripes, grey background, view text",
        ),
        AcquisitionStyle(
            name="me",
            model="ME Inspiration",
            pixel_spacing=0.07,
            native_rows=4084,
            bits_stored=14,
            photometric="MONOCHROME2",
            curve="log",
            curve_param=10.0,
            quantum_noise=0.012,
            electronic_noise=0.04,
            blur=0.5,
            background=0.05,
            output_range=(0.0, 0.8),
            equalise=0.5,
            description="14-bit, flat log curve, peripheral equalisation, electronic noise",
        ),
        AcquisitionStyle(
            name="film",
            model="",
            pixel_spacing=0.05,
            native_rows=4800,
            bits_stored=12,
            photometric="MONOCHROME2",
            curve="film",
            curve_param=4.0,
            quantum_noise=0.0,
            electronic_noise=0.004,
            blur=0.8,
            background=0.08,
            output_range=(0.28, 0.8),
            manufacturer_tag=False,
            grain=0.02,
            burned_in_label=True,
            description="digitised film: H&D curve, grain, low range, burned-in label",
        ),
    )
}


def get_style(name: str, *, where: str = "style") -> AcquisitionStyle:
    """Return the registered style ``name`` or raise ConfigError listing the valid ones."""
    try:
        return STYLES[name]
    except KeyError:
        raise ConfigError(
            f"{where}: unknown phantom style {name!r}; valid styles: {', '.join(sorted(STYLES))} "
            "(fix: set the segment's 'style' key or use one of these as manufacturer)"
        ) from None


def _tone(p: np.ndarray, style: AcquisitionStyle) -> np.ndarray:
    np.clip(p, 0.0, 1.0, out=p)
    if style.curve == "gamma":
        return p ** np.float32(style.curve_param)
    if style.curve == "log":
        c = np.float32(style.curve_param)
        return np.log1p(c * p) / np.log1p(c)
    # film: the H&D characteristic curve, a sigmoid in optical density
    g = np.float32(style.curve_param)
    lo, hi = 1 / (1 + np.exp(0.4 * g)), 1 / (1 + np.exp(-0.6 * g))
    return (1 / (1 + np.exp(-(p - 0.4) * g)) - lo) / (hi - lo)


def _film_label(out: np.ndarray, rng: np.random.Generator) -> None:
    """Burn a bright label with dark 'text' strokes into the top corner opposite the chest wall."""
    h, w = out.shape
    y0, y1 = int(0.03 * h), max(int(0.03 * h) + 2, int(0.11 * h))
    x0, x1 = int(0.72 * w), max(int(0.72 * w) + 3, int(0.95 * w))
    out[y0:y1, x0:x1] = 0.96
    for yy in range(y0 + 1, y1 - 1, 2):  # lines of 'text': random dark strokes
        strokes = rng.random(x1 - x0 - 2) < 0.55
        out[yy, x0 + 1 : x1 - 1][strokes] = 0.25


def _view_marker(out: np.ndarray, where: np.ndarray) -> None:
    """Burn a bright marker block with a dark notch into the bottom corner on the nipple side."""
    h, w = out.shape
    size = max(3, int(round(0.07 * h)))
    y0, x0 = h - 2 - size - int(0.02 * h), w - 2 - size - int(0.03 * w)
    out[y0 : y0 + size, x0 : x0 + size] = 1.0
    out[y0 + size // 3 : y0 + size - 1, x0 + size // 3 : x0 + 2 * size // 3] = 0.45
    where[y0 : y0 + size, x0 : x0 + size] = True


# 3x5 bitmap glyphs for burned-in view text
_GLYPHS = {
    "C": ("111", "100", "100", "100", "111"),
    "L": ("100", "100", "100", "100", "111"),
    "M": ("101", "111", "111", "101", "101"),
    "O": ("111", "101", "101", "101", "111"),
    "R": ("110", "101", "110", "101", "101"),
}


def _view_text(out: np.ndarray, text: str, *, mirror: bool) -> None:
    """Burn ``text`` (e.g. 'LCC') in bright 3x5 glyphs into the top corner on the nipple side.

    With ``mirror`` the text is drawn mirrored, so that it reads correctly once the caller
    mirrors the image (right breasts).
    """
    h, w = out.shape
    scale = max(1, int(round(0.012 * h)))
    glyphs = [np.array([[c == "1" for c in row] for row in _GLYPHS[ch]]) for ch in text]
    gap = np.zeros((5, 1), dtype=bool)
    bitmap = np.hstack([x for g in glyphs for x in (g, gap)][:-1])
    bitmap = np.kron(bitmap, np.ones((scale, scale), dtype=bool))
    if mirror:
        bitmap = bitmap[:, ::-1]
    bh, bw = bitmap.shape
    y0, x0 = int(0.03 * h) + 1, w - bw - int(0.03 * w) - 1
    if x0 < 0 or bh >= h:
        return
    region = out[y0 : y0 + bh, x0 : x0 + bw]
    region[bitmap] = 0.95


def acquire(
    style: AcquisitionStyle,
    density: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    thickness: np.ndarray | None = None,
    view_text: str = "",
    mirror: bool = False,
) -> np.ndarray:
    """Return the stored pixel values (uint16) of a density field acquired with ``style``.

    ``thickness`` (compressed thickness in [0, 1]) is needed by styles that equalise it;
    ``view_text`` (e.g. 'RMLO') is burned in by styles that do, mirrored when ``mirror`` (the
    caller will mirror the image).
    """
    h, w = density.shape
    s = density
    if style.equalise > 0 and thickness is not None:
        s = s + np.float32(0.5 * style.equalise) * (1.0 - thickness) * mask
    if style.blur > 0.25:
        s = gaussian_filter(s, style.blur, mode="nearest", truncate=3.0)
    raw = np.exp(np.float32(-_K) * s)
    if style.quantum_noise > 0:  # Poisson-like: sd ~ sqrt(signal), before log conversion
        noise = rng.standard_normal((h, w), dtype=np.float32)
        raw += np.float32(style.quantum_noise) * np.sqrt(raw) * noise
    p = -np.log(np.maximum(raw, np.float32(1e-3))) / np.float32(_K * _P_REF)
    p = _tone(p, style)
    if style.grain > 0:
        p += np.float32(style.grain) * rng.standard_normal((h, w), dtype=np.float32)
    lo, hi = style.output_range
    out = np.float32(lo) + np.float32(hi - lo) * np.clip(p, 0.0, 1.0)

    background = np.full((h, w), style.background, dtype=np.float32)
    if style.curve == "film":  # uneven film base + fog
        background += np.float32(0.04) * np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    if style.grain > 0:
        background += np.float32(style.grain) * rng.standard_normal((h, w), dtype=np.float32)
    out = np.where(mask, out, background)
    if style.electronic_noise > 0:  # additive read-out noise (inside the breast if padded)
        noise = np.float32(style.electronic_noise) * rng.standard_normal((h, w), np.float32)
        out += noise * mask if style.padding else noise
    if style.row_noise > 0:  # read-out stripes across the whole detector
        out += np.float32(style.row_noise) * rng.standard_normal((h, 1), dtype=np.float32)
    if style.border > 0:  # not on the chest-wall side (column 0), where the breast must reach
        band = max(1, int(round(style.border * h)))
        out[:band] = out[-band:] = 0.0
        out[:, -band:] = 0.0
    if style.collimation > 0:
        band = max(1, int(round(style.collimation * h)))
        out[:band] = out[-band:] = 0.97
    if style.burned_in_label:
        _film_label(out, rng)
    if style.view_text and view_text:
        _view_text(out, view_text, mirror=mirror)
    marker = np.zeros((h, w), dtype=bool)
    if style.marker:
        _view_marker(out, marker)

    maxv = style.max_value
    stored = np.rint(np.clip(out, 0.0, 1.0) * maxv)
    if style.padding:
        stored[mask] = np.maximum(stored[mask], 1)
        stored[~(mask | marker)] = 0
    if style.photometric == "MONOCHROME1":
        stored = maxv - stored
    return stored.astype(np.uint16)
