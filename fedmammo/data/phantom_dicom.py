"""Phantom DICOM output: Digital Mammography X-Ray Image - For Presentation files.

The header is a list of (tag, VR, value) elements. :func:`build_dataset` turns it into a
pydicom Dataset (the reference, written with ``pydicom.dcmwrite(enforce_file_format=True)``);
:class:`DicomEncoder` writes the same bytes faster by encoding each distinct element once
with pydicom's own element writer and reusing it (a centre repeats most header values).
Files are byte-for-byte reproducible: UIDs come from the caller's seeded RNG ('2.25.<int>'),
dates from the seed, and nothing reads the clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from fedmammo.data.phantom_styles import AcquisitionStyle

__all__ = [
    "MG_FOR_PRESENTATION",
    "DicomEncoder",
    "ImageMeta",
    "build_dataset",
    "header_elements",
    "uid_from_rng",
]

#: SOP Class UID of Digital Mammography X-Ray Image Storage - For Presentation.
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
_CHARSET = "ISO_IR 100"
_VERSION_NAME = "FEDMAMMO_PH1"

# PatientOrientation (row direction, column direction) as hung: L chest wall left, R right.
_ORIENTATION = {
    ("L", "CC"): ("A", "R"),
    ("R", "CC"): ("P", "L"),
    ("L", "MLO"): ("A", "FR"),
    ("R", "MLO"): ("P", "FL"),
}
_VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}

Element = tuple[int, str, Any]  # (tag 0xGGGGEEEE, VR, value); SQ value: tuple of item tuples


def uid_from_rng(rng: np.random.Generator) -> str:
    """Return a DICOM UID '2.25.<128-bit integer>' drawn from ``rng`` (reproducible)."""
    return "2.25." + str(int.from_bytes(rng.bytes(16), "big"))


@dataclass(frozen=True)
class ImageMeta:
    """What a phantom image's header says besides its pixels and style."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    laterality: str
    view: str
    age: int
    manufacturer: str
    study_date: str  # YYYYMMDD
    instance_number: int
    pixel_spacing: float  # mm
    institution: str = ""


def _ds(value: float) -> str:
    return f"{value:.6g}"


def header_elements(
    style: AcquisitionStyle, meta: ImageMeta, shape: tuple[int, int]
) -> tuple[list[Element], list[Element]]:
    """Return the (file meta, dataset) elements of one image, without PixelData."""
    file_meta: list[Element] = [
        (0x00020001, "OB", b"\x00\x01"),
        (0x00020002, "UI", MG_FOR_PRESENTATION),
        (0x00020003, "UI", meta.sop_uid),
        (0x00020010, "UI", ExplicitVRLittleEndian),
        (0x00020012, "UI", pydicom.uid.PYDICOM_IMPLEMENTATION_UID),
        (0x00020013, "SH", _VERSION_NAME),
    ]
    film = not style.manufacturer_tag
    spacing = (_ds(meta.pixel_spacing), _ds(meta.pixel_spacing))
    centre, width = style.window()
    code, meaning = _VIEW_CODES[meta.view]
    view_item = ((0x00080100, "SH", code), (0x00080102, "SH", "SCT"), (0x00080104, "LO", meaning))
    ds: list[Element] = [
        (0x00080005, "CS", _CHARSET),
        (0x00080008, "CS", ("DERIVED", "SECONDARY") if film else ("ORIGINAL", "PRIMARY")),
        (0x00080016, "UI", MG_FOR_PRESENTATION),
        (0x00080018, "UI", meta.sop_uid),
        (0x00080020, "DA", meta.study_date),
        (0x00080021, "DA", meta.study_date),
        (0x00080023, "DA", meta.study_date),
        (0x00080030, "TM", "090000"),
        (0x00080031, "TM", "090000"),
        (0x00080033, "TM", "090000"),
        (0x00080050, "SH", ""),
        (0x00080060, "CS", "MG"),
        (0x00080090, "PN", ""),
        (0x00100010, "PN", f"PHANTOM^{meta.patient_id}"),
        (0x00100020, "LO", meta.patient_id),
        (0x00100030, "DA", ""),
        (0x00100040, "CS", "F"),
        (0x00101010, "AS", f"{int(meta.age):03d}Y"),
        (0x00180015, "CS", "BREAST"),
        (0x0020000D, "UI", meta.study_uid),
        (0x0020000E, "UI", meta.series_uid),
        (0x00200010, "SH", "1"),
        (0x00200011, "IS", 1),
        (0x00200013, "IS", meta.instance_number),
        (0x00200020, "CS", _ORIENTATION[(meta.laterality, meta.view)]),
        (0x00200060, "CS", meta.laterality),
        (0x00200062, "CS", meta.laterality),
        (0x00185101, "CS", meta.view),
        (0x00540220, "SQ", (view_item,)),
        (0x00080068, "CS", "FOR PRESENTATION"),
        (0x00281300, "CS", "NO"),
        (0x00280301, "CS", "YES" if style.burned_in_label else "NO"),
        (0x00280030, "DS", spacing),
        (0x00181164, "DS", spacing),
        (0x00280002, "US", 1),
        (0x00280004, "CS", style.photometric),
        (0x00280010, "US", shape[0]),
        (0x00280011, "US", shape[1]),
        (0x00280100, "US", 16),
        (0x00280101, "US", style.bits_stored),
        (0x00280102, "US", style.bits_stored - 1),
        (0x00280103, "US", 0),
        (0x00281050, "DS", _ds(centre)),
        (0x00281051, "DS", _ds(width)),
        (0x00281056, "CS", style.voi_function),
        (0x00281052, "DS", "0"),
        (0x00281053, "DS", "1"),
        (0x00281054, "LO", "US"),
        (0x00282110, "CS", "00"),
    ]
    if style.manufacturer_tag:
        ds += [(0x00080070, "LO", meta.manufacturer), (0x00081090, "LO", style.model)]
    if meta.institution:
        ds.append((0x00080080, "LO", meta.institution))
    if style.padding:
        ds.append((0x00280120, "US", style.padding_value()))
    return sorted(file_meta), sorted(ds)


def _element(tag: int, vr: str, value: Any) -> DataElement:
    if vr == "SQ":
        items = []
        for item in value:
            d = Dataset()
            for t, v, x in item:
                d.add(_element(t, v, x))
            items.append(d)
        return DataElement(tag, vr, Sequence(items))
    return DataElement(tag, vr, list(value) if isinstance(value, tuple) else value)


def build_dataset(pixels: np.ndarray, style: AcquisitionStyle, meta: ImageMeta) -> Dataset:
    """Return the pydicom Dataset (with file meta) of one phantom image."""
    fm_elems, ds_elems = header_elements(style, meta, pixels.shape)
    fm = FileMetaDataset()
    for tag, vr, value in fm_elems:
        fm.add(_element(tag, vr, value))
    ds = Dataset()
    ds.file_meta = fm
    for tag, vr, value in ds_elems:
        ds.add(_element(tag, vr, value))
    ds.add(DataElement(0x7FE00010, "OW", np.ascontiguousarray(pixels, dtype="<u2").tobytes()))
    return ds


class DicomEncoder:
    """Encodes phantom images to DICOM Part 10 bytes identical to ``pydicom.dcmwrite``.

    Each distinct (tag, VR, value) is encoded once by pydicom's element writer and cached;
    the file is the preamble, 'DICM', the file meta group and the sorted elements.
    """

    def __init__(self, max_cache: int = 4096) -> None:
        self._cache: dict[tuple[int, str, Any], bytes] = {}
        self._max_cache = max_cache

    def _encode(self, elem: Element, encodings: str) -> bytes:
        hit = self._cache.get(elem)
        if hit is not None:
            return hit
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = False
        write_data_element(fp, _element(*elem), encodings)
        out = fp.getvalue()
        if len(self._cache) >= self._max_cache:  # per-image values (UIDs) fill it: start over
            self._cache.clear()
        self._cache[elem] = out
        return out

    def encode(self, pixels: np.ndarray, style: AcquisitionStyle, meta: ImageMeta) -> bytes:
        """Return the DICOM file bytes of one phantom image."""
        fm_elems, ds_elems = header_elements(style, meta, pixels.shape)
        meta_body = b"".join(self._encode(e, "iso8859") for e in fm_elems)
        group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(meta_body))
        body = b"".join(self._encode(e, _CHARSET) for e in ds_elems)
        data = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
        pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, len(data))
        return b"".join((b"\x00" * 128, b"DICM", group_length, meta_body, body, pixel_header, data))

    def write(
        self, path: str | Path, pixels: np.ndarray, style: AcquisitionStyle, meta: ImageMeta
    ) -> None:
        """Write one phantom image to ``path`` (parent folders created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.encode(pixels, style, meta))
