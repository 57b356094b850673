"""Read a mammogram from DICOM: display intensities, chest wall left, cropped to the breast."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Literal, overload

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi, get_decoder

from fedmammo.data.breast import breast_mask, resize
from fedmammo.data.dicom_checks import (
    FOR_PROCESSING_SOP_CLASSES,
    MissingCodecError,
    UnreadableImageError,
    UnsupportedImageError,
    check_header,
    header_number,
)
from fedmammo.data.reader_spec import DEFAULT_SIZE, MAX_PIXELS, READER_VERSION, Geometry
from fedmammo.errors import ConfigError, DataError

__all__ = [
    "DEFAULT_SIZE",
    "FOR_PROCESSING_SOP_CLASSES",
    "MAX_PIXELS",
    "READER_VERSION",
    "Geometry",
    "MissingCodecError",
    "UnreadableImageError",
    "UnsupportedImageError",
    "load_mammogram",
    "read_pixels",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- reading
def _read_dataset(path: Path) -> Dataset:
    if not path.is_file():
        raise UnreadableImageError(f"{path}: file not found")
    try:
        # Pixel data over 1 MB is read only when decoded, after check_header accepted the size.
        ds = pydicom.dcmread(path, defer_size="1 MB")
    except Exception as exc:  # the parser raises many types on bad input
        raise UnreadableImageError(
            f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})"
        ) from exc
    if "PixelData" not in ds and (early := _ends_early(path)):
        raise UnreadableImageError(
            f"{path}: the file ends before its (7FE0,0010) PixelData ({path.stat().st_size:,} "
            f"bytes: a truncated copy or download?); pydicom: {early}"
        )
    return ds


def _ends_early(path: Path) -> str | None:
    """pydicom's end-of-file warning when reading ``path`` again, or None (it does not end
    early). Only on the path of a file without pixel data, so warnings are caught once."""
    pydicom_log = logging.getLogger("pydicom")  # it logged the warnings the first time

    def silence(record: logging.LogRecord) -> bool:
        return False

    pydicom_log.addFilter(silence)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pydicom.dcmread(path, defer_size="1 MB")
    except Exception:  # read once already; a failure now says nothing new
        return None
    finally:
        pydicom_log.removeFilter(silence)
    return next((str(w.message) for w in caught if "End of file" in str(w.message)), None)


class _DropTracebacks(logging.Filter):
    """Drops the traceback pydicom logs for each decoding plugin that fails: the error
    fedmammo raises names every plugin's failure in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None and not isinstance(record.msg, BaseException)


_PLUGIN_LOG = logging.getLogger("pydicom.pixels.decoders.base")
_QUIET = _DropTracebacks()


def _decode(ds: Dataset, path: Path) -> np.ndarray:
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsyntax is not None and tsyntax.is_compressed:
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError as exc:
            raise UnreadableImageError(
                f"{path}: transfer syntax {tsyntax.name!r} ({tsyntax}) is not supported by pydicom"
            ) from exc
        if not decoder.is_available:
            options = "; ".join(decoder.missing_dependencies) or "none known"
            raise MissingCodecError(
                f"{path}: no installed plugin decodes transfer syntax {tsyntax.name!r} "
                f'({tsyntax}). Install the codecs extra: pip install "fedmammo[codecs]" '
                f"(JPEG 2000, JPEG Lossless, JPEG-LS); pydicom's plugins for this syntax: "
                f"{options}"
            )
    _PLUGIN_LOG.addFilter(_QUIET)  # for this decode only (as pydicom used outside fedmammo)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # any decoder failure on this one file: refuse the file
        syntax = f" as {tsyntax.name}" if tsyntax is not None else ""
        detail = " ".join(str(exc).split())  # decoder messages span lines; a reason is one
        raise UnreadableImageError(
            f"{path}: pixel data cannot be decoded{syntax} ({type(exc).__name__}: {detail})"
        ) from exc
    finally:
        _PLUGIN_LOG.removeFilter(_QUIET)
    if arr.ndim != 2 or arr.size == 0:
        raise UnreadableImageError(f"{path}: pixel array has shape {arr.shape}, expected 2D")
    return arr


def _padding_mask(raw: np.ndarray, ds: Dataset, path: Path) -> np.ndarray | None:
    value = header_number(ds, "PixelPaddingValue", path)
    if value is None:
        return None
    limit = header_number(ds, "PixelPaddingRangeLimit", path)
    if limit is None:
        return raw == value
    lo, hi = min(value, limit), max(value, limit)
    return (raw >= lo) & (raw <= hi)


def _window(x: np.ndarray, center: float, width: float, function: str, path: Path) -> np.ndarray:
    """Apply a VOI window per PS3.3 C.11.2.1.2/3 to ``x`` (float32, changed in place) with
    output normalised to [0, 1].

    Not ``pydicom.pixels.apply_windowing``: it works on float64 copies; in place on one
    float32 copy is part of the reader's 2.4-2.8x speed-up per core (BENCHMARKS.md, "DICOM
    reading and the image cache"), with the display values unchanged."""
    if function == "SIGMOID":
        if width <= 0:
            raise UnreadableImageError(f"{path}: (0028,1051) WindowWidth={width} must be > 0")
        x -= center  # 1 / (1 + exp(-4 (x - center) / width)), one operation at a time
        x *= -4.0
        x /= width
        np.exp(x, out=x)
        x += 1.0
        return np.divide(1.0, x, out=x)
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise UnreadableImageError(f"{path}: (0028,1051) WindowWidth={width} must be > 0")
        x -= center
        x /= width
        x += 0.5
        return np.clip(x, 0.0, 1.0, out=x)
    if function != "LINEAR":
        raise UnreadableImageError(
            f"{path}: (0028,1056) VOILUTFunction={function!r}; "
            "allowed: LINEAR, LINEAR_EXACT, SIGMOID"
        )
    if width < 1:
        raise UnreadableImageError(f"{path}: (0028,1051) WindowWidth={width} must be >= 1")
    if width == 1:
        return (x > center - 0.5).astype(np.float32)
    x -= center - 0.5
    x /= width - 1
    x += 0.5
    return np.clip(x, 0.0, 1.0, out=x)


def _voi(values: np.ndarray, ds: Dataset, valid: np.ndarray | None, path: Path) -> np.ndarray:
    seq = ds.get("VOILUTSequence")
    if seq and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]:
        entries, first = int(seq[0].LUTDescriptor[0]) or 2**16, int(seq[0].LUTDescriptor[1])
        lut = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds).astype(np.float32)
        # Output range 0..2**bits - 1; bits from the data, as writers often mis-declare it.
        top = float(2 ** int(np.ceil(np.log2(float(lut.max()) + 1))) - 1) if lut.max() > 0 else 1.0
        index = np.clip(np.rint(values) - first, 0, entries - 1).astype(np.intp)
        return np.take(lut / top, index)
    center = header_number(ds, "WindowCenter", path)
    width = header_number(ds, "WindowWidth", path)
    x = values.astype(np.float32)  # a copy the steps below change in place
    if center is not None and width is not None:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        return _window(x, center, width, function, path)
    sample = values if valid is None else values[valid]
    lo, hi = (float(sample.min()), float(sample.max())) if sample.size else (0.0, 1.0)
    x -= lo
    x /= max(hi - lo, 1e-12)
    return np.clip(x, 0.0, 1.0, out=x)


def _modality(raw: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> modality values (the modality LUT or the rescale, when not identity)."""
    if ds.get("ModalityLUTSequence") or float(ds.get("RescaleSlope", 1) or 1) != 1.0:
        return apply_modality_lut(raw, ds)
    if float(ds.get("RescaleIntercept", 0) or 0) != 0.0:
        return raw.astype(np.float32) + float(ds.RescaleIntercept)
    return raw


def read_pixels(path: str | Path) -> np.ndarray:
    """Return a DICOM image as display intensities: float32 in [0, 1], brighter = denser.

    Applies the modality LUT or rescale, the VOI LUT sequence (preferred) or window (LINEAR,
    LINEAR_EXACT, SIGMOID; min-max when neither is present), MONOCHROME1 inversion, and sets
    PixelPaddingValue pixels to 0. Raises DataError subclasses like load_mammogram.
    """
    path = Path(path)
    ds = _read_dataset(path)
    check_header(ds, path)
    raw = _decode(ds, path)
    padding = _padding_mask(raw, ds, path)
    try:
        img = _voi(_modality(raw, ds), ds, None if padding is None else ~padding, path)
    except DataError:
        raise
    except Exception as exc:  # pydicom's LUT functions on a header the checks let through
        raise UnreadableImageError(
            f"{path}: modality/VOI LUT cannot be applied ({type(exc).__name__}: {exc})"
        ) from exc
    img = np.ascontiguousarray(img, dtype=np.float32)
    if str(ds.PhotometricInterpretation).strip().upper() == "MONOCHROME1":
        np.subtract(1.0, img, out=img)
    if padding is not None:
        img[padding] = 0.0
    return img


# --------------------------------------------------------------------------- geometry
def _upsample(mask: np.ndarray, k: int, shape: tuple[int, int]) -> np.ndarray:
    """Blow ``k`` x ``k`` blocks up to pixels; the last block row/column takes the remainder."""
    if k == 1:
        return mask
    reps = [np.full(n, k) for n in mask.shape]
    for axis in (0, 1):
        reps[axis][-1] += shape[axis] - k * mask.shape[axis]
    return np.repeat(np.repeat(mask, reps[0], axis=0), reps[1], axis=1)


def _check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ConfigError(f"size must be (height, width) of positive integers or None, got {size}")
    return int(size[0]), int(size[1])


@overload
def load_mammogram(
    path: str | Path,
    size: tuple[int, int] | None = ...,
    *,
    return_geometry: Literal[False] = ...,
) -> np.ndarray: ...
@overload
def load_mammogram(
    path: str | Path,
    size: tuple[int, int] | None = ...,
    *,
    return_geometry: Literal[True],
) -> tuple[np.ndarray, Geometry]: ...
def load_mammogram(
    path: str | Path,
    size: tuple[int, int] | None = DEFAULT_SIZE,
    *,
    return_geometry: bool = False,
) -> np.ndarray | tuple[np.ndarray, Geometry]:
    """Read a mammogram as float32 in [0, 1], chest wall left, cropped to the breast, sized.

    Raises UnreadableImageError (corrupt, not an image, missing codec, a header value that is
    not a finite number) or UnsupportedImageError (FOR PROCESSING, colour, multi-frame, over
    MAX_PIXELS), both DataError, naming the file, the DICOM tag where one is at fault, and why.
    """
    path = Path(path)
    size = _check_size(size)
    img = read_pixels(path)
    found = breast_mask(img)
    if found is None:
        raise UnreadableImageError(f"{path}: no breast found (the image is blank)")
    mask, k = found
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    # Crop in original pixels; a mask touching the last block row/column takes the remainder.
    y0, y1 = r0 * k, img.shape[0] if r1 == mask.shape[0] else r1 * k
    x0, x1 = c0 * k, img.shape[1] if c1 == mask.shape[1] else c1 * k
    column_mass = mask.sum(axis=0)
    half = mask.shape[1] // 2
    flipped = bool(column_mass[mask.shape[1] - half :].sum() > column_mass[:half].sum())
    crop = img[y0:y1, x0:x1] * _upsample(mask[r0:r1, c0:c1], k, (y1 - y0, x1 - x0))
    ch, cw = crop.shape
    if size is None:
        scale, resized = 1.0, (ch, cw)
        out = np.ascontiguousarray(crop[:, ::-1] if flipped else crop)
    else:
        scale = min(size[0] / ch, size[1] / cw)
        resized = (
            max(1, min(size[0], round(ch * scale))),
            max(1, min(size[1], round(cw * scale))),
        )
        out = np.zeros(size, dtype=np.float32)
        out[: resized[0], : resized[1]] = resize(crop, resized, flip=flipped)
    if not return_geometry:
        return out
    geometry = Geometry(
        flipped=flipped,
        crop=(y0, x0, y1, x1),
        scale=float(scale),
        out_shape=(int(out.shape[0]), int(out.shape[1])),
        original_shape=(int(img.shape[0]), int(img.shape[1])),
        resized_shape=(int(resized[0]), int(resized[1])),
    )
    return out, geometry
