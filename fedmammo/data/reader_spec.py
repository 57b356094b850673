"""What the DICOM reader (:mod:`fedmammo.data.dicom`) produces, importable without pydicom or
SciPy: its default output size, its version, its pixel cap and the :class:`Geometry` of each
image. The image cache needs only these to open a built cache, so a centre whose cache is built
(a Ray actor, a deployed ClientApp process) never imports the reader (issue 19).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedmammo.errors import DataError

__all__ = ["DEFAULT_SIZE", "MAX_PIXELS", "READER_VERSION", "Geometry"]

#: Largest image the reader decodes (Rows x Columns x SamplesPerPixel x NumberOfFrames).
#: A full-field digital mammogram is 10-30 megapixels; a digitised film up to ~40.
MAX_PIXELS = 100_000_000
#: Output (height, width) used when none is given.
DEFAULT_SIZE: tuple[int, int] = (256, 192)
#: Bumped whenever the pixel output of load_mammogram changes (invalidates caches).
#: 2: the breast mask is the whole connected region above the lower threshold (it grew at
#: most 3% beyond the Otsu core and cut fatty tissue), segmented on a copy of >= 96 pixels
#: (was 192) and resized without torch (sums in another order: last-bit differences).
READER_VERSION = "2"


@dataclass(frozen=True)
class Geometry:
    """How load_mammogram mapped original pixels to output pixels.

    The crop ``(y0, x0, y1, x1)`` (exclusive ends) is taken in original pixels, then the crop
    is mirrored left-right when ``flipped``, scaled by ``scale`` to ``resized_shape`` and placed
    at the top-left corner of ``out_shape`` (padding on the right, nipple side, and bottom).
    """

    flipped: bool
    crop: tuple[int, int, int, int]
    scale: float
    out_shape: tuple[int, int]
    original_shape: tuple[int, int]
    resized_shape: tuple[int, int]

    def map_box(self, box: list[float] | tuple[float, ...]) -> list[float]:
        """Map a box ``[x0, y0, x1, y1]`` in original pixels to output pixels (clipped)."""
        if len(box) != 4:
            raise DataError(f"lesion box must be [x0, y0, x1, y1], got {box!r}")
        y0c, x0c, y1c, x1c = self.crop
        bx0, by0, bx1, by1 = (float(v) for v in box)
        cw, ch = x1c - x0c, y1c - y0c
        x0, x1 = bx0 - x0c, bx1 - x0c
        y0, y1 = by0 - y0c, by1 - y0c
        if self.flipped:
            x0, x1 = cw - x1, cw - x0
        sx = self.resized_shape[1] / cw
        sy = self.resized_shape[0] / ch
        rh, rw = self.resized_shape
        return [
            float(np.clip(x0 * sx, 0, rw)),
            float(np.clip(y0 * sy, 0, rh)),
            float(np.clip(x1 * sx, 0, rw)),
            float(np.clip(y1 * sy, 0, rh)),
        ]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (lists for tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        """Rebuild a Geometry from ``to_dict`` output."""
        return cls(
            flipped=bool(d["flipped"]),
            crop=tuple(int(v) for v in d["crop"]),  # type: ignore[arg-type]
            scale=float(d["scale"]),
            out_shape=tuple(int(v) for v in d["out_shape"]),  # type: ignore[arg-type]
            original_shape=tuple(int(v) for v in d["original_shape"]),  # type: ignore[arg-type]
            resized_shape=tuple(int(v) for v in d["resized_shape"]),  # type: ignore[arg-type]
        )
