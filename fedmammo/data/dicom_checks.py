"""Check a DICOM header before any pixel is decoded: supported image, sane sizes, finite values."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from fedmammo.data.reader_spec import MAX_PIXELS
from fedmammo.errors import DataError

__all__ = [
    "FOR_PROCESSING_SOP_CLASSES",
    "MissingCodecError",
    "UnreadableImageError",
    "UnsupportedImageError",
    "check_header",
    "header_number",
]

#: Digital mammography / DX / intra-oral "For Processing" SOP classes (raw detector data).
FOR_PROCESSING_SOP_CLASSES: frozenset[str] = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography X-Ray Image - For Processing
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image - For Processing
        "1.2.840.10008.5.1.4.1.1.1.3.1",  # Digital Intra-Oral X-Ray Image - For Processing
    }
)
_TAGS = {
    "Rows": "(0028,0010)",
    "Columns": "(0028,0011)",
    "SamplesPerPixel": "(0028,0002)",
    "NumberOfFrames": "(0028,0008)",
    "BitsAllocated": "(0028,0100)",
    "BitsStored": "(0028,0101)",
    "PixelRepresentation": "(0028,0103)",
    "WindowCenter": "(0028,1050)",
    "WindowWidth": "(0028,1051)",
    "RescaleIntercept": "(0028,1052)",
    "RescaleSlope": "(0028,1053)",
    "PixelPaddingValue": "(0028,0120)",
    "PixelPaddingRangeLimit": "(0028,0121)",
}
_FIX = "fix the header or leave the file out"


class UnreadableImageError(DataError):
    """A file is not a readable single-frame greyscale DICOM image (corrupt, no pixels...)."""


class MissingCodecError(UnreadableImageError):
    """The pixel data is compressed with a transfer syntax no installed plugin can decode."""


class UnsupportedImageError(DataError):
    """A readable DICOM image that the pipeline refuses (FOR PROCESSING, colour, too large...)."""


def header_number(
    ds: Dataset, keyword: str, path: Path, *, integer: bool = False
) -> float | int | None:
    """The (first) value of a numeric header tag; None if absent or empty.

    Raises UnreadableImageError naming the file and the tag when the value is not a finite
    number (NaN, infinity, text, bytes of a wrong VR) or not an integer where one is needed.
    """
    value: Any = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue | list | tuple):
        if not len(value):
            return None
        value = value[0]
    where = f"{path}: {_TAGS.get(keyword, '')} {keyword}".replace("  ", " ")
    if isinstance(value, bytes | bytearray):
        raise UnreadableImageError(f"{where}={value!r} is not a number (wrong VR?); {_FIX}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UnreadableImageError(
            f"{where}={str(value)!r} is not a number (wrong VR?); {_FIX}"
        ) from None
    if not math.isfinite(number):
        raise UnreadableImageError(f"{where}={str(value)!r} is not a finite number; {_FIX}")
    if integer:
        if number != int(number):
            raise UnreadableImageError(f"{where}={str(value)!r} is not an integer; {_FIX}")
        return int(number)
    return number


def _positive(ds: Dataset, keyword: str, path: Path, default: int | None = None) -> int:
    value = header_number(ds, keyword, path, integer=True)
    if value is None:
        if default is not None:
            return default
        raise UnreadableImageError(f"{path}: {_TAGS[keyword]} {keyword} is missing; {_FIX}")
    if value < 1:
        raise UnreadableImageError(
            f"{path}: {_TAGS[keyword]} {keyword}={value} must be a positive integer; {_FIX}"
        )
    return int(value)


def check_header(ds: Dataset, path: Path) -> None:
    """Refuse, before decoding, an image the reader cannot or must not decode.

    Checks the presentation intent, that pixel data is present, greyscale single-frame
    pixels, positive sizes and bit depths, the size cap MAX_PIXELS (so that a header announcing
    40000 x 40000 pixels allocates nothing) and that the rescale, window and padding values
    are finite numbers. Raises UnsupportedImageError or UnreadableImageError naming the tag.
    """
    intent = str(ds.get("PresentationIntentType", "")).strip().upper()
    sop = str(ds.get("SOPClassUID", ""))
    if intent == "FOR PROCESSING" or sop in FOR_PROCESSING_SOP_CLASSES:
        raise UnsupportedImageError(
            f"{path}: a FOR PROCESSING image (raw detector data; (0008,0068) "
            f"PresentationIntentType={intent or '-'}, (0008,0016) SOPClassUID={sop or '-'}); "
            "use the FOR PRESENTATION image the modality produced from it"
        )
    if "PixelData" not in ds:
        size = f"{path.stat().st_size:,} bytes" if path.is_file() else "no file"
        raise UnreadableImageError(
            f"{path}: no (7FE0,0010) PixelData: not an image (SOPClassUID {sop or '-'}), or a "
            f"copy cut short before its pixels ({size})"
        )
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and not syntax.is_transfer_syntax:
        raise UnreadableImageError(
            f"{path}: (0002,0010) TransferSyntaxUID={syntax} is not a DICOM transfer syntax; {_FIX}"
        )
    rows, cols = _positive(ds, "Rows", path), _positive(ds, "Columns", path)
    spp = _positive(ds, "SamplesPerPixel", path, default=1)
    frames = _positive(ds, "NumberOfFrames", path, default=1)
    pixels = rows * cols * spp * frames
    if pixels > MAX_PIXELS:
        raise UnsupportedImageError(
            f"{path}: (0028,0010) Rows={rows} x (0028,0011) Columns={cols} x (0028,0002) "
            f"SamplesPerPixel={spp} x (0028,0008) NumberOfFrames={frames} = "
            f"{pixels / 1e6:,.0f} megapixels exceeds the reader's cap of {MAX_PIXELS / 1e6:.0f} "
            "(fedmammo.data.reader_spec.MAX_PIXELS); refused before decoding"
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if spp != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImageError(
            f"{path}: (0028,0004) PhotometricInterpretation={photometric or '-'} with "
            f"SamplesPerPixel={spp}; only greyscale MONOCHROME1/MONOCHROME2 is supported"
        )
    if frames != 1:
        raise UnsupportedImageError(
            f"{path}: (0028,0008) NumberOfFrames={frames}; only single-frame 2D mammograms are "
            "supported (tomosynthesis is not)"
        )
    allocated = _positive(ds, "BitsAllocated", path)
    if allocated not in (1, 8, 16, 32, 64):
        raise UnreadableImageError(
            f"{path}: (0028,0100) BitsAllocated={allocated} must be 1, 8, 16, 32 or 64; {_FIX}"
        )
    stored = _positive(ds, "BitsStored", path, default=allocated)
    if stored > allocated:
        raise UnreadableImageError(
            f"{path}: (0028,0101) BitsStored={stored} exceeds (0028,0100) BitsAllocated="
            f"{allocated}; {_FIX}"
        )
    if header_number(ds, "PixelRepresentation", path, integer=True) not in (None, 0, 1):
        raise UnreadableImageError(f"{path}: (0028,0103) PixelRepresentation must be 0 or 1")
    slope = header_number(ds, "RescaleSlope", path)
    if slope == 0:
        raise UnreadableImageError(f"{path}: (0028,1053) RescaleSlope=0 erases the image; {_FIX}")
    for keyword in (
        "RescaleIntercept",
        "WindowCenter",
        "WindowWidth",
        "PixelPaddingValue",
        "PixelPaddingRangeLimit",
    ):
        header_number(ds, keyword, path)
