"""Builders of small dataset trees laid out exactly as the published ones (64x48 DICOMs)."""

from __future__ import annotations

import plistlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

MG_STORAGE = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image - For Presentation
ROWS, COLS = 48, 64
VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}


def write_dicom(
    path: Path,
    *,
    pixels: np.ndarray | None = None,
    view_code: str | None = None,
    jpeg2000: bool = False,
    **tags: Any,
) -> Dataset:
    """Write a small 16-bit (or the given array's) DICOM with ``tags``; None deletes a tag."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels is None:
        pixels = (np.arange(ROWS * COLS, dtype=np.uint16).reshape(ROWS, COLS) * 7) % 4096
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_STORAGE
    meta.MediaStorageSOPInstanceUID = tags.get("SOPInstanceUID") or generate_uid()
    meta.TransferSyntaxUID = JPEG2000Lossless if jpeg2000 else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MG_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if view_code:
        item = Dataset()
        item.CodeValue, item.CodeMeaning = VIEW_CODES[view_code]
        item.CodingSchemeDesignator = "SCT"
        ds.ViewCodeSequence = [item]
    for key, value in tags.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    if jpeg2000:  # a fake codestream: headers must still be readable without the codecs
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 30])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def write_garbage(path: Path) -> Path:
    """A file with a DICOM name that is not DICOM (an 'unreadable image')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a DICOM file" * 3)
    return path


def edit_csv(path: Path, rows: dict[int, dict[str, str]], *, sep: str = ",") -> Path:
    """Overwrite cells of a dataset CSV: ``{row index: {column: text}}`` (all read as text)."""
    table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    for i, values in rows.items():
        for column, text in values.items():
            table.loc[i, column] = text
    table.to_csv(path, sep=sep, index=False)
    return path


def _mask(box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    mask = np.zeros((ROWS, COLS), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


# --------------------------------------------------------------------------- CBIS-DDSM
MASS_COLS = [
    "patient_id",
    "breast_density",
    "left or right breast",
    "image view",
    "abnormality id",
    "abnormality type",
    "mass shape",
    "mass margins",
    "assessment",
    "pathology",
    "subtlety",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
]
CALC_COLS = [c if c != "breast_density" else "breast density" for c in MASS_COLS]
CALC_COLS[6:8] = ["calc type", "calc distribution"]


def build_cbis(root: Path, layout: str = "canonical") -> dict[str, dict[str, Any]]:
    """A CBIS-DDSM tree (``canonical`` CSV paths or ``tcia`` renamed folders); expected rows."""
    expected: dict[str, dict[str, Any]] = {}
    mass_rows, calc_rows = [], []

    def place(folder: str, name: str, kind: str, **kw: Any) -> tuple[Path, str]:
        study, series = generate_uid(), generate_uid()
        if layout == "canonical":
            path = root / folder / study / series / name
        else:
            desc = "full mammogram images" if kind == "full" else "ROI mask images"
            tcia_name = {"000000.dcm": "1-1.dcm", "000001.dcm": "1-2.dcm"}[name]
            path = root / "CBIS-DDSM" / folder / "07-20-2016-DDSM-74994" / f"1.000000-{desc}-24515"
            path = path / tcia_name
        if kind == "full" and layout == "tcia" and folder.endswith("RIGHT_MLO"):
            path = root / "CBIS-DDSM" / "renamed by hand" / "1-1.dcm"  # only the header knows
        write_dicom(
            path,
            PatientID=folder,
            PatientName=folder,
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            Manufacturer=None,
            **kw,
        )
        return path, f"{folder}/{study}/{series}/{name}"

    def image(folder: str, side: str, **expect: Any) -> str:
        path, rel = place(folder, "000000.dcm", "full", Laterality=side)
        sop = str(_sop(path))
        expected[sop] = {"path": str(path.resolve()), "laterality": side, **expect}
        return rel

    def roi(folder: str, box: tuple[int, int, int, int], swapped: bool = False) -> tuple[str, str]:
        mask_name, crop_name = (
            ("000001.dcm", "000000.dcm") if swapped else ("000000.dcm", "000001.dcm")
        )
        _, mask_rel = place(folder, mask_name, "roi", pixels=_mask(box))
        crop = np.full((12, 10), 200, dtype=np.uint8)
        _, crop_rel = place(folder, crop_name, "roi", pixels=crop)
        return mask_rel, crop_rel

    rel = image(
        "Mass-Training_P_00001_LEFT_CC",
        "L",
        patient_id="P_00001",
        view="CC",
        malignant=1,
        acr=4,
        density=3,
        split="train",
        boxes=[[20, 10, 30, 20], [5, 30, 10, 35]],
    )
    for abn, (box, path_, assess) in enumerate(
        [((20, 10, 30, 20), "MALIGNANT", "4"), ((5, 30, 10, 35), "BENIGN", "0")], start=1
    ):
        mask_rel, crop_rel = roi(f"Mass-Training_P_00001_LEFT_CC_{abn}", box)
        mass_rows.append(
            [
                "P_00001",
                "3",
                "LEFT",
                "CC",
                str(abn),
                "mass",
                "OVAL",
                "CIRCUMSCRIBED",
                assess,
                path_,
                "4",
                rel,
                crop_rel,
                mask_rel,
            ]
        )
    rel = image(
        "Mass-Training_P_00001_LEFT_MLO",
        "L",
        patient_id="P_00001",
        view="MLO",
        malignant=0,
        u_malignancy=0.02,  # BENIGN_WITHOUT_CALLBACK (no biopsy), assessment 3
        acr=3,
        density=3,
        split="train",
        boxes=[[40, 5, 44, 9]],
    )
    mask_rel, crop_rel = roi("Mass-Training_P_00001_LEFT_MLO_1", (40, 5, 44, 9), swapped=True)
    # CBIS's known swap: the CSV's ROI column names the crop and the crop column the mask
    mass_rows.append(
        [
            "P_00001",
            "3",
            "LEFT",
            "MLO",
            "1",
            "mass",
            "IRREGULAR",
            "SPICULATED",
            "3",
            "BENIGN_WITHOUT_CALLBACK",
            "2",
            rel,
            mask_rel,
            crop_rel,
        ]
    )
    rel = image(
        "Calc-Test_P_00002_RIGHT_CC",
        "R",
        patient_id="P_00002",
        view="CC",
        malignant=1,
        acr=5,
        density=2,
        split="test",
        boxes=None,
    )
    calc_rows.append(
        [
            "P_00002",
            "2",
            "RIGHT",
            "CC",
            "1",
            "calcification",
            "PLEOMORPHIC",
            "CLUSTERED",
            "5",
            "MALIGNANT",
            "5",
            rel,
            "Calc-Test_P_00002_RIGHT_CC_1/1.2.3/1.2.4/000001.dcm",
            "Calc-Test_P_00002_RIGHT_CC_1/1.2.3/1.2.4/000000.dcm\n",
        ]
    )  # missing mask
    rel = image(
        "Calc-Test_P_00002_RIGHT_MLO",
        "R",
        patient_id="P_00002",
        view="MLO",
        malignant=0,
        acr=2,
        density=2,
        split="test",
        boxes=None,
    )
    calc_rows.append(
        [
            "P_00002",
            "2",
            "RIGHT",
            "MLO",
            "1",
            "calcification",
            "PUNCTATE",
            "CLUSTERED",
            "2",
            "BENIGN",
            "3",
            rel,
            "",
            "",
        ]
    )
    corrupt = "Calc-Test_P_00003_LEFT_CC"
    bad = (
        root / corrupt / "1.9" / "1.8" / "000000.dcm"
        if layout == "canonical"
        else root / "CBIS-DDSM" / corrupt / "x" / "y" / "1-1.dcm"
    )
    write_garbage(bad)
    calc_rows.append(
        [
            "P_00003",
            "1",
            "LEFT",
            "CC",
            "1",
            "calcification",
            "AMORPHOUS",
            "",
            "4",
            "MALIGNANT",
            "3",
            f"{corrupt}/1.9/1.8/000000.dcm",
            "",
            "",
        ]
    )
    pd.DataFrame(mass_rows, columns=MASS_COLS).to_csv(
        root / "mass_case_description_train_set.csv", index=False
    )
    pd.DataFrame(calc_rows, columns=CALC_COLS).to_csv(
        root / "calc_case_description_test_set.csv", index=False
    )
    return expected


def _sop(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# --------------------------------------------------------------------------- INbreast
INBREAST_COLS = [
    "Patient ID",
    "Patient age",
    "Laterality",
    "View",
    "Acquisition date",
    "File Name",
    "ACR",
    "Bi-Rads",
]


def _osirix(rois: list[tuple[str, list[tuple[float, float]]]]) -> bytes:
    items = [
        {
            "Name": name,
            "NumberOfPoints": len(pts),
            "Point_px": [f"({x:.6f}, {y:.6f})" for x, y in pts],
            "Point_mm": ["(0.0, 0.0, 0.0)"] * len(pts),
        }
        for name, pts in rois
    ]
    doc = {"Images": [{"ImageIndex": 0, "NumberOfROIs": len(items), "ROIs": items}]}
    return plistlib.dumps(doc, fmt=plistlib.FMT_XML)


def build_inbreast(root: Path) -> dict[str, dict[str, Any]]:
    """An INbreast tree: INbreast.csv, AllDICOMs/, AllXML/; expected rows by File Name."""
    specs = [  # file name, hash, side, file view, csv view, ACR, Bi-Rads
        ("22678622", "6c613a14b80a8591", "R", "CC", "CC", "2 ", "1"),
        ("22678646", "6c613a14b80a8591", "R", "ML", "MLO", "2", "4c"),
        ("20586908", "8a1bc3e7d2c4f5a6", "L", "CC", "CC", "4  ", "3"),
        ("20586934", "8a1bc3e7d2c4f5a6", "L", "ML", "MLO", "4", "6"),
        ("53586896", "0d2b5a6f4c3e2a11", "L", "CC", "CC", "1", "2"),  # corrupt DICOM
    ]
    rows = []
    for name, h, side, fview, cview, acr, birads in specs:
        path = root / "AllDICOMs" / f"{name}_{h}_MG_{side}_{fview}_ANON.dcm"
        if name == "53586896":
            write_garbage(path)
        else:
            write_dicom(
                path,
                Manufacturer="SIEMENS",
                ImageLaterality=side,
                ViewPosition=cview,
                PixelSpacing=[0.07, 0.07],
                PatientID=h,
            )
        rows.append(["removed", "removed", side, cview, "201001", name, acr, birads])
    rows.append(["removed", "removed", "R", "CC", "201002", "99999999", "1", "2"])  # no DICOM
    rows.append(["", "", "", "", "", "", "", ""])  # trailing blank row of the spreadsheet export
    (root / "AllXML").mkdir(parents=True)
    (root / "AllXML" / "22678646.xml").write_bytes(
        _osirix(
            [
                ("Mass", [(10.2, 20.7), (30.9, 22.0), (18.0, 35.5)]),
                ("Calcification", [(50.4, 5.6)]),
            ]
        )
    )
    (root / "AllXML" / "20586934.xml").write_text("<plist><dict><key>Images</key><array>")
    with (root / "INbreast.csv").open("w") as fh:
        fh.write(";".join(INBREAST_COLS) + "\n")
        for r in rows:
            fh.write(";".join(r) + "\n")
    return {
        "22678622": dict(
            patient_id="6c613a14b80a8591",
            laterality="R",
            view="CC",
            malignant=0,
            u_malignancy=0.0,
            acr=1,
            density=2,
            lesions=[],
        ),
        "22678646": dict(
            patient_id="6c613a14b80a8591",
            laterality="R",
            view="MLO",
            malignant=1,
            u_malignancy=0.1,
            acr=4,
            density=2,
            lesions=[("mass", [10, 20, 31, 36]), ("calcification", [50, 5, 51, 6])],
        ),
        "20586908": dict(
            patient_id="8a1bc3e7d2c4f5a6",
            laterality="L",
            view="CC",
            malignant=0,
            u_malignancy=0.02,
            acr=3,
            density=4,
            lesions=[],
        ),
        "20586934": dict(
            patient_id="8a1bc3e7d2c4f5a6",
            laterality="L",
            view="MLO",
            malignant=1,
            u_malignancy=0.0,
            acr=6,
            density=4,
            lesions=None,
        ),
    }


# --------------------------------------------------------------------------- VinDr-Mammo
VINDR_BREAST = [
    "study_id",
    "series_id",
    "image_id",
    "laterality",
    "view_position",
    "height",
    "width",
    "breast_birads",
    "breast_density",
    "split",
]
VINDR_FINDING = [
    *VINDR_BREAST[:9],
    "finding_categories",
    "finding_birads",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
    "split",
]


def build_vindr(root: Path) -> dict[str, dict[str, Any]]:
    """A VinDr-Mammo tree: the two annotation CSVs and images/<study>/<image>.dicom."""
    studies = {  # study -> (manufacturer, photometric, density, split, images)
        "0025a5dc99fd5c742026f0b2b030d3e9": (
            "SIEMENS",
            "MONOCHROME2",
            "DENSITY C",
            "training",
            [
                ("d3b8ba4a1e0a2f9e", "L", "CC", "BI-RADS 4"),
                ("2e5a0b7c3f1d4e8a", "L", "MLO", "BI-RADS 4"),
                ("8c1f2d3e4a5b6c7d", "R", "CC", "BI-RADS 1"),
                ("9d0e1f2a3b4c5d6e", "R", "MLO", "BI-RADS 1"),
            ],
        ),
        "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d": (
            "Planmed",
            "MONOCHROME1",
            "DENSITY A",
            "test",
            [
                ("aa11bb22cc33dd44", "L", "CC", "BI-RADS 3"),
                ("ee55ff66aa77bb88", "R", "CC", "BI-RADS 5"),
                ("ffff0000ffff0000", "R", "MLO", "BI-RADS 5"),  # listed, file missing
            ],
        ),
    }
    breast, finding, expected = [], [], {}
    for study, (maker, photo, dens, split, images) in studies.items():
        series = generate_uid()
        for image, side, view, birads in images:
            if image != "ffff0000ffff0000":
                write_dicom(
                    root / "images" / study / f"{image}.dicom",
                    Manufacturer=maker,
                    PhotometricInterpretation=photo,
                    ImagerPixelSpacing=[0.085, 0.085],
                    PatientAge="057Y",
                    ImageLaterality=side,
                    ViewPosition=view,
                )
            base = [study, series, image, side, view, str(ROWS), str(COLS), birads, dens]
            breast.append([*base, split])
            b = int(birads[-1])
            expected[image] = dict(
                patient_id=study,
                laterality=side,
                view=view,
                acr=b,
                manufacturer=maker,
                density="ABCD".index(dens[-1]) + 1,
                split={"training": "train"}.get(split, split),
                malignant={1: 0, 2: 0, 3: None, 4: 1, 5: 1}[b],
                u_malignancy={1: 0.0, 2: 0.0, 3: None, 4: 0.3, 5: 0.05}[b],
                lesions=[],
            )
            if image in ("d3b8ba4a1e0a2f9e", "ee55ff66aa77bb88", "8c1f2d3e4a5b6c7d"):
                continue
            finding.append([*base, "['No Finding']", "", "", "", "", "", split])
    s1, s2 = list(studies)
    f1 = [s1, "x", "d3b8ba4a1e0a2f9e", "L", "CC", str(ROWS), str(COLS), "BI-RADS 4", "DENSITY C"]
    finding.append([*f1, "['Mass']", "BI-RADS 4", "10.5", "12.2", "30.7", "40.1", "training"])
    finding.append(
        [
            *f1,
            "['Suspicious Calcification', 'Mass']",
            "BI-RADS 3",
            "1.0",
            "2.0",
            "5.0",
            "6.5",
            "training",
        ]
    )
    expected["d3b8ba4a1e0a2f9e"]["lesions"] = [  # the BI-RADS 3 finding: NA, as is a BI-RADS 3
        ("mass", [10, 12, 31, 41], True),  # breast by the default birads3: exclude
        ("calcification", [1, 2, 5, 7], None),
    ]
    f2 = [s2, "y", "ee55ff66aa77bb88", "R", "CC", str(ROWS), str(COLS), "BI-RADS 5", "DENSITY A"]
    finding.append([*f2, "['Architectural Distortion']", "BI-RADS 5", "3", "4", "9", "8", "test"])
    expected["ee55ff66aa77bb88"]["lesions"] = [("distortion", [3, 4, 9, 8], True)]
    f3 = [s1, "x", "8c1f2d3e4a5b6c7d", "R", "CC", str(ROWS), str(COLS), "BI-RADS 1", "DENSITY C"]
    finding.append([*f3, "['No Finding']", "", "", "", "", "", "training"])
    pd.DataFrame(breast, columns=VINDR_BREAST).to_csv(
        root / "breast-level_annotations.csv", index=False
    )
    pd.DataFrame(finding, columns=VINDR_FINDING).to_csv(
        root / "finding_annotations.csv", index=False
    )
    del expected["ffff0000ffff0000"]
    return expected


# --------------------------------------------------------------------------- RSNA
RSNA_COLS = [
    "site_id",
    "patient_id",
    "image_id",
    "laterality",
    "view",
    "age",
    "cancer",
    "biopsy",
    "invasive",
    "BIRADS",
    "implant",
    "density",
    "machine_id",
    "difficult_negative_case",
]


def build_rsna(root: Path) -> dict[str, dict[str, Any]]:
    """An RSNA tree: train.csv and train_images/<patient_id>/<image_id>.dcm (some JPEG 2000)."""
    rows = [  # site, patient, image, side, view, age, cancer, BIRADS, density, machine
        ("2", "10006", "462822612", "L", "CC", "61.0", "0", "", "", "29"),
        ("2", "10006", "1459541791", "L", "MLO", "61.0", "0", "", "", "29"),
        ("1", "10011", "220375232", "R", "CC", "55.0", "1", "0", "B", "49"),
        ("1", "10011", "1031443799", "R", "AT", "55.0", "1", "1", "B", "49"),
        ("1", "10025", "562340703", "L", "MLO", "", "0", "2", "D", "49"),  # file missing
    ]
    records, expected = [], {}
    for i, (site, pid, iid, side, view, age, cancer, birads, dens, machine) in enumerate(rows):
        if iid != "562340703":
            write_dicom(
                root / "train_images" / pid / f"{iid}.dcm",
                jpeg2000=i % 2 == 0,
                PatientID=pid,
                ImageLaterality=side,
                PixelSpacing=[0.1, 0.1],
            )
            expected[iid] = dict(
                patient_id=pid,
                laterality=side,
                view=view,
                malignant=int(cancer),
                age=float(age) if age else None,
                acr={"": None, "0": None}.get(birads, int(birads or 0)),
                density="ABCD".index(dens) + 1 if dens else None,
                segment=f"site{site}-machine{machine}",
            )
        records.append(
            [
                site,
                pid,
                iid,
                side,
                view,
                age,
                cancer,
                cancer,
                "0",
                birads,
                "0",
                dens,
                machine,
                "False",
            ]
        )
    write_dicom(root / "train_images" / "10006" / "999.dcm", PatientID="10006")  # not in CSV
    pd.DataFrame(records, columns=RSNA_COLS).to_csv(root / "train.csv", index=False)
    return expected


# --------------------------------------------------------------------------- CMMD
CMMD_COLS = ["ID1", "LeftRight", "Age", "number", "abnormality", "classification", "subtype"]


def build_cmmd(root: Path, *, xlsx: bool = True) -> dict[str, dict[str, Any]]:
    """A CMMD tree: the clinical spreadsheet (or its CSV export) and per-patient DICOMs."""
    images = [
        ("D1-0001", "L", "CC"),
        ("D1-0001", "L", "MLO"),
        ("D2-0001", "R", "CC"),
        ("D2-0001", "R", "MLO"),
        ("D2-0001", "L", "CC"),
        ("D2-0001", "L", "MLO"),
    ]
    labels = {("D1-0001", "L"): 0, ("D2-0001", "R"): 1}
    expected = {}
    for i, (pid, side, view) in enumerate(images):
        study = f"07-18-2010-NA-NA-{7937 + i // 4}"
        path = root / "CMMD" / pid / study / "1.000000-NA-70244" / f"1-{i % 4 + 1}.dcm"
        ds = write_dicom(
            path,
            PatientID=pid,
            ImageLaterality=side,
            view_code=view,
            Manufacturer="GE MEDICAL SYSTEMS",
            PixelSpacing=[0.094, 0.094],
        )
        expected[str(ds.SOPInstanceUID)] = dict(
            patient_id=pid,
            laterality=side,
            view=view,
            malignant=labels.get((pid, side)),
            age={"D1-0001": 44.0, "D2-0001": 61.0}[pid],
            path=str(path.resolve()),
        )
    write_garbage(root / "CMMD" / "D2-0002" / "s" / "r" / "1-1.dcm")
    table = pd.DataFrame(
        [
            ["D1-0001", "L", 44, 2, "calcification", "Benign", ""],
            ["D2-0001", "R", 61, 2, "mass", "Malignant", "Luminal A"],
        ],
        columns=CMMD_COLS,
    )
    if xlsx:
        table.to_excel(root / "CMMD_clinicaldata_revision.xlsx", index=False)
    else:
        table.to_csv(root / "clinical.csv", index=False)
    return expected


@pytest.fixture
def dicom_writer() -> Callable[..., Dataset]:
    """The write_dicom helper (small 16-bit MG DICOMs with the given tags)."""
    return write_dicom


@pytest.fixture
def csv_editor() -> Callable[..., Path]:
    """The edit_csv helper (overwrite cells of a dataset CSV by row index and column)."""
    return edit_csv


@pytest.fixture
def garbage_writer() -> Callable[[Path], Path]:
    """The write_garbage helper (a corrupt 'DICOM')."""
    return write_garbage


@pytest.fixture
def builders() -> dict[str, Callable[..., dict[str, dict[str, Any]]]]:
    """Tree builders by format name; each returns the expected manifest rows by image_id."""
    return {
        "cbis-ddsm": build_cbis,
        "inbreast": build_inbreast,
        "vindr-mammo": build_vindr,
        "rsna": build_rsna,
        "cmmd": build_cmmd,
    }
