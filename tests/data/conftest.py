"""Fixtures for the data tests: small synthetic mammography DICOM files written with pydicom."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"


def write_dicom(path: Path, pixels: np.ndarray, **tags: Any) -> Path:
    """Write a single-frame MG For Presentation DICOM; ``tags`` override (None deletes) tags."""
    pixels = np.asarray(pixels)
    signed = pixels.dtype.kind == "i"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MG_FOR_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.PatientID = "P0"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = int(signed)
    for key, value in tags.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    if "PixelData" not in tags:
        ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def set_element(path: Path, keyword: str, vr: str, value: Any) -> Path:
    """Rewrite ``path`` with ``keyword`` stored as ``vr`` holding ``value`` as given.

    Bypasses pydicom's value conversion, so that a header can hold what a faulty writer
    produces: text in a DS tag, 'NaN', bytes where a number belongs, a negative size.
    """
    ds = pydicom.dcmread(path)
    tag = pydicom.datadict.tag_for_keyword(keyword)
    element = DataElement(tag, "LO" if isinstance(value, str) else vr, value)
    element.VR = vr
    ds[tag] = element
    ds.save_as(path)
    return path


def breast_pixels(
    height: int = 64,
    width: int = 48,
    *,
    side: str = "left",
    label: bool = True,
    seed: int = 0,
    background: int = 100,
    tissue: int = 1800,
) -> np.ndarray:
    """A breast-like uint16 image: a half-ellipse on the chest-wall ``side`` plus a bright label."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    r = np.sqrt(((yy - height * 0.5) / (height * 0.42)) ** 2 + (xx / (width * 0.6)) ** 2)
    inside = np.clip((1.0 - r) * 6.0, 0.0, 1.0)  # soft skin-line fall-off
    img = background + (tissue - background) * inside * (1 + 0.1 * rng.standard_normal(r.shape))
    img += rng.normal(0.0, 5.0, r.shape)
    if label:  # burned-in marker in the corner opposite the chest wall
        img[2:6, width - 10 : width - 3] = 4000
    img = np.clip(img, 0, 4095).astype(np.uint16)
    return img if side == "left" else np.ascontiguousarray(img[:, ::-1])


@pytest.fixture
def make_dicom(tmp_path: Path) -> Callable[..., Path]:
    """Return ``make(pixels, name=None, **tags) -> Path`` writing DICOM files under tmp_path."""
    counter = iter(range(1_000_000))

    def make(pixels: np.ndarray, name: str | None = None, **tags: Any) -> Path:
        return write_dicom(tmp_path / (name or f"img{next(counter)}.dcm"), pixels, **tags)

    return make


@pytest.fixture
def edit_dicom() -> Callable[[Path, str, str, Any], Path]:
    """Return set_element: rewrite a file with one tag stored as a given VR and raw value."""
    return set_element


@pytest.fixture
def breast() -> Callable[..., np.ndarray]:
    """Return the breast_pixels generator (a breast-like uint16 image with a burned-in label)."""
    return breast_pixels
