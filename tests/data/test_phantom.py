"""Tests of the synthetic phantom: DICOM tags, label statistics, determinism, texture, vendors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from pydicom.uid import ExplicitVRLittleEndian

from fedmammo.config import CentreProfile, load_profile
from fedmammo.data.manifest import decode_lesions, read_manifest
from fedmammo.data.phantom import generate_centre, main, segment_patient_counts
from fedmammo.data.phantom_anatomy import (
    image_shape,
    powerlaw_texture,
    render_breast,
    sample_breast,
)
from fedmammo.data.phantom_dicom import MG_FOR_PRESENTATION, DicomEncoder, ImageMeta, build_dataset
from fedmammo.data.phantom_lesions import sample_lesion
from fedmammo.data.phantom_styles import STYLES
from fedmammo.errors import ConfigError

CENTRES = Path(__file__).resolve().parents[2] / "centres"
VENDORS = ("ma", "mb", "mc", "md", "me", "film")
STATS = {
    "name": "stats",
    "source": "S",
    "data": {
        "synthetic": {
            "segments": [
                {
                    "manufacturer": "Ma",
                    "patients": 100,
                    "prevalence": 0.3,
                    "lesion_prevalence": 0.4,
                },
                {
                    "manufacturer": "Mc",
                    "patients": 100,
                    "prevalence": 0.05,
                    "lesion_prevalence": 0.2,
                },
            ],
            "density": [0.1, 0.4, 0.4, 0.1],
        }
    },
    "labels": {
        "missing": {"malignancy": 0.3, "acr": 0.5, "density": 0.1},
        "uncertainty": {"malignancy": 0.2, "density": 0.5},
        "reader_noise": 0.1,
    },
}


def _profile(data: dict) -> CentreProfile:
    return CentreProfile.model_validate(data)


def _records(out: Path) -> dict[str, dict]:
    return {r["image_id"]: r for r in json.loads((out / "lesions.json").read_text())["images"]}


@pytest.fixture(scope="module")
def vendor_centre(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """One segment per style, 20 patients each, 32-pixel images."""
    segments = [
        {
            "manufacturer": v.capitalize(),
            "style": v,
            "patients": 20,
            "prevalence": 0.3,
            "lesion_prevalence": 0.3,
        }
        for v in VENDORS
    ]
    out = tmp_path_factory.mktemp("vendors")
    profile = _profile(
        {"name": "vendors", "source": "V", "data": {"synthetic": {"segments": segments}}}
    )
    return out, generate_centre(profile, out, image_height=32, seed=1)


@pytest.fixture(scope="module")
def stats_centre(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """Two segments of 100 patients, missing and uncertain labels, 32-pixel images."""
    out = tmp_path_factory.mktemp("stats")
    return out, generate_centre(_profile(STATS), out, image_height=32, seed=7)


# --------------------------------------------------------------------------- DICOM
def test_dicom_tags_follow_style_and_match_manifest(vendor_centre):
    # Prepare
    out, manifest = vendor_centre
    first = manifest.groupby("segment").head(4)  # one exam per vendor
    # Execute
    datasets = [(row, pydicom.dcmread(row.path)) for row in first.itertuples()]
    # Assert
    assert len(datasets) == 4 * len(VENDORS)
    for row, ds in datasets:
        style = STYLES[row.manufacturer.lower()]
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == MG_FOR_PRESENTATION and ds.Modality == "MG"
        assert ds.SOPInstanceUID == row.image_id and ds.StudyInstanceUID == row.study_id
        assert ds.PatientID == row.patient_id and ds.PatientAge == f"{int(row.age):03d}Y"
        assert (ds.ImageLaterality, ds.ViewPosition) == (row.laterality, row.view)
        assert ds.PhotometricInterpretation == style.photometric
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (
            16,
            style.bits_stored,
            style.bits_stored - 1,
        )
        assert ds.PixelRepresentation == 0
        assert (float(ds.WindowCenter), float(ds.WindowWidth)) == pytest.approx(
            style.window(), abs=0.5
        )
        assert ds.VOILUTFunction == style.voi_function
        assert float(ds.PixelSpacing[0]) == pytest.approx(row.pixel_spacing, rel=1e-5)
        assert ds.ImagerPixelSpacing == ds.PixelSpacing
        assert ds.PresentationIntentType == "FOR PRESENTATION" and ds.BreastImplantPresent == "NO"
        assert ("Manufacturer" in ds) == (style.name != "film")
        if "Manufacturer" in ds:
            assert ds.Manufacturer == row.manufacturer
        pixels = ds.pixel_array
        assert pixels.shape == image_shape(32) and pixels.max() <= style.max_value


def test_style_registry_covers_monochrome1_sigmoid_film_and_bit_depths():
    # Execute
    styles = list(STYLES.values())
    # Assert
    assert set(VENDORS) <= set(STYLES)
    assert any(s.photometric == "MONOCHROME1" for s in styles)
    assert any(s.voi_function == "SIGMOID" for s in styles)
    assert {s.bits_stored for s in styles} == {12, 14, 16}
    assert not STYLES["film"].manufacturer_tag and STYLES["film"].burned_in_label


@pytest.mark.parametrize("name", VENDORS)
def test_fast_encoder_writes_the_bytes_of_pydicom_dcmwrite(name: str):
    # Prepare
    style = STYLES[name]
    pixels = np.random.default_rng(0).integers(0, style.max_value, (40, 28), dtype=np.uint16)
    meta = ImageMeta(
        "c-0-00001", "2.25.1", "2.25.2", "2.25.3", "R", "MLO", 61, "Ma", "20200101", 3, 0.9
    )
    reference = io.BytesIO()
    # Execute
    pydicom.dcmwrite(reference, build_dataset(pixels, style, meta), enforce_file_format=True)
    fast = DicomEncoder().encode(pixels, style, meta)
    # Assert
    assert fast == reference.getvalue()
    assert np.array_equal(pydicom.dcmread(io.BytesIO(fast)).pixel_array, pixels)


# --------------------------------------------------------------------------- anatomy
def _presentation(path: str) -> np.ndarray:
    ds = pydicom.dcmread(path)
    img = ds.pixel_array.astype(np.float64)
    return img.max() - img if ds.PhotometricInterpretation == "MONOCHROME1" else img


def test_chest_wall_is_left_for_l_and_right_for_r(vendor_centre):
    # Prepare: style ma has an exactly black (padded) background
    _, manifest = vendor_centre
    rows = manifest[manifest["manufacturer"] == "Ma"]
    # Execute
    edge = {
        (r.laterality, i): (_presentation(r.path)[:, [0, -1]] > 0).mean(0)
        for i, r in enumerate(rows.itertuples())
    }
    # Assert: breast fills the chest-wall column, never the opposite one
    for (side, _), (left, right) in edge.items():
        wall, nipple = (left, right) if side == "L" else (right, left)
        assert wall > 0.3 and nipple < 0.15


def test_mlo_shows_pectoral_muscle_in_the_top_chest_wall_corner(vendor_centre):
    # Prepare
    _, manifest = vendor_centre
    rows = manifest[manifest["manufacturer"] == "Ma"]
    # Execute
    corner: dict[str, list[float]] = {"CC": [], "MLO": []}
    for r in rows.itertuples():
        img = _presentation(r.path)
        patch = img[:3, :3] if r.laterality == "L" else img[:3, -3:]
        corner[r.view].append(patch.mean() / img.max())
    # Assert: muscle (bright) in MLO, background in CC
    assert np.median(corner["MLO"]) > 0.5
    assert np.median(corner["CC"]) == 0.0


def _spectral_slope(field: np.ndarray) -> float:
    """Slope of log radial power vs log frequency over 1/64..1/4 cycles per pixel."""
    h, w = field.shape
    power = (np.abs(np.fft.fft2(field)) ** 2).ravel()
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]).ravel()
    edges = np.geomspace(1 / 64, 1 / 4, 13)
    idx = np.digitize(f, edges)
    centres = [f[idx == i].mean() for i in range(1, len(edges))]
    means = [power[idx == i].mean() for i in range(1, len(edges))]
    return float(np.polyfit(np.log(centres), np.log(means), 1)[0])


@pytest.mark.parametrize("beta", [3.0, 2.0])
def test_texture_has_power_law_spectrum(beta: float):
    # Prepare
    rng = np.random.default_rng(0)
    # Execute
    fields = [powerlaw_texture((256, 256), beta=beta, rng=rng) for _ in range(4)]
    slopes = [_spectral_slope(f) for f in fields]
    # Assert
    assert abs(-np.mean(slopes) - beta) < 0.25
    if beta == 3.0:
        assert all(2.5 <= -s <= 3.5 for s in slopes)
    assert all(abs(f.mean()) < 1e-5 and abs(f.std() - 1) < 1e-4 for f in fields)


def test_denser_class_means_more_glandular_tissue():
    # Prepare
    shape = image_shape(128)
    geom = sample_breast(np.random.default_rng(0), shape)["CC"]
    # Execute
    means = []
    for density in (1, 2, 3, 4):
        tissue, _, mask = render_breast(
            geom, shape, density=density, spacing_mm=1.0, rng=np.random.default_rng(1)
        )
        means.append(float(tissue[mask].mean()))
    # Assert
    assert means == sorted(means) and means[3] - means[0] > 0.2


def test_malignant_lesions_are_irregular_and_benign_ones_round():
    # Prepare
    rng = np.random.default_rng(0)
    # Execute
    draws = {
        m: [sample_lesion(rng, malignant=m, calcification_fraction=0.3) for _ in range(400)]
        for m in (True, False)
    }
    # Assert
    for malignant, lesions in draws.items():
        masses = [x for x in lesions if x.kind == "mass"]
        calcs = {x.shape for x in lesions if x.kind == "calcification"}
        assert abs(1 - len(masses) / len(lesions) - 0.3) < 0.07
        assert all(8 <= x.size_mm <= 25 for x in masses)
        irregular = np.mean([x.shape in ("irregular", "spiculated") for x in masses])
        if malignant:
            assert irregular > 0.7 and calcs == {"pleomorphic", "fine-linear"}
        else:
            assert irregular < 0.2 and calcs == {"punctate", "coarse"}


# --------------------------------------------------------------------------- labels
def test_segments_and_prevalence_follow_the_profile(stats_centre):
    # Prepare
    out, manifest = stats_centre
    truth = manifest["lesions"].map(lambda v: any(x["malignant"] for x in decode_lesions(v)))
    # Execute
    per_segment = manifest.assign(m=truth).groupby("segment")
    # Assert
    for spec in STATS["data"]["synthetic"]["segments"]:
        g = per_segment.get_group(f"S-{spec['manufacturer']}")
        n, prev = spec["patients"], spec["prevalence"]
        exams = g.groupby("patient_id")
        assert len(g) == 4 * n and exams.ngroups == n
        assert all(
            set(zip(e.laterality, e.view)) == {("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")}
            for _, e in exams
        )
        cancer = exams["m"].any()
        assert cancer.sum() == round(prev * n)  # rounded counts, not sampled
        assert g["m"].mean() == pytest.approx(prev / 2)  # image level: half the exam
        benign = exams["lesions"].apply(lambda s: any(decode_lesions(v) for v in s)) & ~cancer
        assert benign.sum() == round(spec["lesion_prevalence"] * (n - cancer.sum()))
    labelled = manifest["malignant"].notna()
    assert (manifest.loc[labelled, "malignant"].astype(int) == truth[labelled].astype(int)).all()


def test_density_age_and_acr_statistics_match_profile_with_reader_noise(stats_centre):
    # Prepare
    out, manifest = stats_centre
    records = _records(out)
    patients = manifest.groupby("patient_id").first()
    noise, n = STATS["labels"]["reader_noise"], len(patients)
    p = np.array(STATS["data"]["synthetic"]["density"])
    moved = np.zeros((4, 4))  # reader noise: one class up or down (clipped) with prob. noise
    for i in range(4):
        moved[i, i] += 1 - noise
        moved[i, max(i - 1, 0)] += noise / 2
        moved[i, min(i + 1, 3)] += noise / 2
    expected = p @ moved
    # Execute
    dens = patients["density"].dropna().astype(int)
    observed = np.bincount(dens, minlength=5)[1:] / len(dens)
    true_density = np.array([records[i]["density_true"] for i in manifest["image_id"]])
    breast_status = manifest.assign(
        finding=[
            max((2 if x["malignant"] else 1 for x in decode_lesions(v)), default=0)
            for v in manifest["lesions"]
        ]
    ).dropna(subset=["acr"])
    # Assert
    se = np.sqrt(expected * (1 - expected) / len(dens))
    assert np.all(np.abs(observed - expected) < 4 * se + 0.01)
    assert (
        np.abs(manifest["density"].dropna().astype(int) - true_density[manifest["density"].notna()])
        <= 1
    ).all()
    ages = patients["age"].astype(float)
    assert ages.between(40, 85).all() and abs(ages.mean() - 57) < 4 * 9 / np.sqrt(n) + 0.5
    acr = {k: g["acr"].astype(int) for k, g in breast_status.groupby("finding")}
    # the reader (phantom.acr_probabilities): normal 1-4 mostly 1, benign 1-4 mostly 2-3,
    # cancers never 3, mostly 4-6; P(malignant | category) is tested in test_phantom_acr.py
    assert acr[0].between(1, 4).all() and (acr[0] == 1).mean() > 0.7
    assert acr[1].between(1, 4).all() and acr[1].isin([2, 3]).mean() > 0.6
    assert (acr[2] != 3).all() and (acr[2] >= 4).mean() > 0.9


def test_missing_labels_are_na_at_requested_fraction_with_uncertainty(stats_centre):
    # Prepare
    out, manifest = stats_centre
    n = len(manifest)
    # Execute
    reread = read_manifest(out / "manifest.csv")
    # Assert
    columns = {"malignancy": "malignant", "acr": "acr", "density": "density", "view": "view"}
    for task, col in columns.items():
        frac = STATS["labels"]["missing"].get(task, 0.0)
        unc = STATS["labels"]["uncertainty"].get(task, 0.0)
        missing = reread[col].isna()
        assert abs(missing.mean() - frac) <= 1 / n
        assert reread.loc[~missing, f"u_{task}"].eq(unc).all()
        assert reread.loc[missing, f"u_{task}"].isna().all()
    assert set(reread["malignant"].dropna().astype(int)) == {0, 1}
    assert (
        reread["split"].isna().all() and reread["path"].map(lambda p: Path(p).is_absolute()).all()
    )
    pd.testing.assert_frame_equal(reread, manifest)


def test_lesion_appears_in_both_views_of_the_malignant_breast(stats_centre):
    # Prepare
    out, manifest = stats_centre
    records = _records(out)
    width = image_shape(32)[1]
    # Execute
    manifest = manifest.assign(anns=[records[i]["lesions"] for i in manifest["image_id"]])
    cancer_ids = {
        p
        for p, a in zip(manifest.patient_id, manifest.anns, strict=True)
        if any(x["malignant"] for x in a)
    }
    # Assert
    assert len(cancer_ids) == 35
    for pid in cancer_ids:
        exam = manifest[manifest["patient_id"] == pid]
        hit = exam[exam["anns"].map(bool)]
        assert sorted(hit["view"]) == ["CC", "MLO"] and hit["laterality"].nunique() == 1
        assert (hit["malignant"].dropna() == 1).all()
        cc, mlo = (hit[hit["view"] == v].iloc[0] for v in ("CC", "MLO"))
        a, b = cc["anns"][0], mlo["anns"][0]
        assert (a["kind"], a["shape"]) == (b["kind"], b["shape"])
        dist = [
            x["centre"][0] if r["laterality"] == "L" else width - 1 - x["centre"][0]
            for x, r in ((a, cc), (b, mlo))
        ]
        assert abs(dist[0] - dist[1]) <= 0.08 * width + 1  # same distance from the chest wall
        for row, ann in ((cc, a), (mlo, b)):
            x0, y0, x1, y1 = ann["box"]
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= 32
            assert decode_lesions(row["lesions"])[0]["box"] == ann["box"]
            assert len(ann["outline"]) >= 3


def test_lesions_stand_out_from_surrounding_tissue(tmp_path: Path):
    # Prepare: style ma, every patient a malignant mass, 64-pixel images
    seg = {"manufacturer": "Ma", "patients": 16, "prevalence": 1.0}
    data = {
        "name": "masses",
        "data": {"synthetic": {"segments": [seg], "calcification_fraction": 0.0}},
    }
    manifest = generate_centre(_profile(data), tmp_path, image_height=64, seed=3)
    # Execute
    cnr = []
    for row in manifest[manifest["malignant"] == 1].itertuples():
        img = _presentation(row.path)
        x0, y0, x1, y1 = decode_lesions(row.lesions)[0]["box"]
        m = max(3, (x1 - x0) // 2)
        ring = np.zeros(img.shape, dtype=bool)
        ring[max(0, y0 - m) : y1 + m, max(0, x0 - m) : x1 + m] = True
        ring[y0:y1, x0:x1] = False
        ring &= img > 0
        cnr.append((img[y0:y1, x0:x1].mean() - img[ring].mean()) / img[ring].std())
    # Assert
    assert len(cnr) == 32
    assert np.median(cnr) > 1.0 and np.mean(np.array(cnr) > 0) >= 0.9


def test_vendor_is_predictable_from_pixels_by_a_small_cnn(vendor_centre):
    # Prepare: min-max normalised pixels, held-out patients
    _, manifest = vendor_centre
    x = []
    for path in manifest["path"]:
        a = pydicom.dcmread(path).pixel_array.astype(np.float32)
        x.append((a - a.min()) / (a.max() - a.min() + 1e-6))
    images = torch.tensor(np.stack(x))[:, None]
    labels = torch.tensor(manifest["manufacturer"].str.lower().map(VENDORS.index).to_numpy())
    test = torch.tensor([int(p.rsplit("-", 1)[1]) >= 14 for p in manifest["patient_id"]])
    torch.manual_seed(0)
    features = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
    )
    head = torch.nn.Linear(64, len(VENDORS))

    def predict(batch: torch.Tensor) -> torch.Tensor:
        z = features(batch)
        return head(torch.cat([z.mean((2, 3)), z.amax((2, 3))], 1))

    params = [*features.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, 3e-3)
    train_x, train_y = images[~test], labels[~test]
    epochs, batch = 10, 32
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=5e-3, total_steps=epochs * -(-len(train_x) // batch)
    )
    # Execute
    for _ in range(epochs):
        order = torch.randperm(len(train_x))
        for i in range(0, len(train_x), batch):
            idx = order[i : i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(predict(train_x[idx]), train_y[idx]).backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        accuracy = (predict(images[test]).argmax(1) == labels[test]).float().mean().item()
    # Assert
    assert int(test.sum()) == 6 * 4 * len(VENDORS)
    assert accuracy > 0.9


# --------------------------------------------------------------------------- reproducibility
def _tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "dicom").rglob("*.dcm"))}


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path: Path):
    # Prepare
    profile = load_profile(CENTRES / "tiny.yaml")
    # Execute
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate_centre(profile, tmp_path / name, patients=4, seed=seed, image_height=32)
        runs[name] = _tree(tmp_path / name)
    # Assert
    assert len(runs["a"]) == 16 and runs["a"] == runs["b"]
    assert (tmp_path / "a" / "lesions.json").read_bytes() == (
        tmp_path / "b" / "lesions.json"
    ).read_bytes()
    manifests = [read_manifest(tmp_path / n / "manifest.csv").drop(columns="path") for n in "ab"]
    pd.testing.assert_frame_equal(*manifests)
    assert not set(runs["a"]) & set(runs["c"])
    pixels = [pydicom.dcmread(io.BytesIO(next(iter(runs[n].values())))).pixel_array for n in "ac"]
    assert not np.array_equal(*pixels)


def test_patients_override_splits_total_in_proportion(tmp_path: Path):
    # Prepare
    profile = _profile(STATS)
    # Execute
    counts = segment_patient_counts(profile.data.synthetic.segments, 7)
    manifest = generate_centre(profile, tmp_path, patients=7, image_height=32)
    # Assert
    assert (
        counts in ([4, 3], [3, 4])
        and sum(segment_patient_counts(profile.data.synthetic.segments, 101)) == 101
    )
    assert manifest.groupby("segment")["patient_id"].nunique().tolist() == counts
    assert (tmp_path / "contact_sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_style_and_real_data_profile_are_config_errors(tmp_path: Path):
    # Prepare
    bad = dict(
        STATS,
        data={"synthetic": {"segments": [{"manufacturer": "Zz", "patients": 2, "prevalence": 0}]}},
    )
    real = {"name": "real", "data": {"format": "dicom-folder", "root": str(tmp_path)}}
    # Execute / Assert
    with pytest.raises(ConfigError, match=r"segments\.0\.style.*'zz'.*valid styles: film, ma, mb"):
        generate_centre(_profile(bad), tmp_path)
    with pytest.raises(ConfigError, match="data.synthetic"):
        generate_centre(_profile(real), tmp_path)
    assert not list(tmp_path.rglob("*.dcm"))


def test_a_full_disk_while_writing_the_manifest_leaves_none(tmp_path: Path, monkeypatch):
    """Regression (audit 13 F2): manifest.csv, which marks a phantom complete, was written in
    place, so a full disk left part of it; it is written whole now (or not at all)."""
    # Prepare: the disk fills up half-way through the manifest
    import errno

    real = pd.DataFrame.to_csv

    def full(self, path, **kwargs):
        real(self.iloc[: len(self) // 2], path, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    profile = load_profile(CENTRES / "tiny.yaml")
    # Execute
    with pytest.raises(OSError, match="No space left"):
        generate_centre(profile, tmp_path, patients=2, image_height=32)
    # Assert: no manifest (the phantom is generated again next time), no temporary left
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "contact_sheet.png",
        "dicom",
        "lesions.json",
    ]
    # and a manifest written before is kept whole
    monkeypatch.undo()
    generate_centre(profile, tmp_path, patients=2, image_height=32)
    whole = (tmp_path / "manifest.csv").read_text()
    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    with pytest.raises(OSError, match="No space left"):
        generate_centre(profile, tmp_path, patients=2, image_height=32)
    assert (tmp_path / "manifest.csv").read_text() == whole and len(
        read_manifest(tmp_path / "manifest.csv")
    ) == 8


# --------------------------------------------------------------------------- CLI
def test_cli_prints_summary_table(tmp_path: Path, capsys):
    # Execute
    code = main(
        [str(CENTRES / "tiny.yaml"), "--out", str(tmp_path), "--patients", "4", "--height", "32"]
    )
    # Assert
    printed = capsys.readouterr().out
    assert code == 0
    assert "images" in printed and "T-Ma" in printed and "T-Mb" in printed and "prev" in printed
    assert len(read_manifest(tmp_path / "manifest.csv")) == 16


def test_cli_bad_profile_is_one_line_error_with_exit_2(tmp_path: Path):
    # Prepare
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (CENTRES / "tiny.yaml").read_text().replace("source: T", "source: T\ncolour: red")
    )
    # Execute
    proc = subprocess.run(
        [sys.executable, "-m", "fedmammo.data.phantom", str(bad), "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Assert
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("error:") and str(bad) in lines[0] and "'colour'" in lines[0]
    assert not (tmp_path / "x").exists()
