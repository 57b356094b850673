"""Tests for fedmammo.data.splits: patient-wise, stratified, deterministic splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedmammo.data.splits import SPLITS, assign_splits
from fedmammo.errors import ConfigError, DataError


def _manifest(n_patients: int = 400, *, seed: int = 0) -> pd.DataFrame:
    """Four images per patient (CC and MLO of both breasts); two segments; ~20% malignant
    patients; ~15% unlabelled."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        segment = "S1-Ma" if rng.random() < 0.7 else "S2-Mb"
        status = rng.choice(["pos", "neg", "na"], p=[0.2, 0.65, 0.15])
        for k in range(4):
            if status == "na":
                label = pd.NA
            elif status == "pos":
                label = int(k == 0)  # only one image of the exam shows the cancer
            else:
                label = 0
            rows.append(
                {
                    "image_id": f"i{p}-{k}",
                    "patient_id": f"p{p:04d}",
                    "laterality": "LR"[k // 2],
                    "view": ("CC", "MLO")[k % 2],
                    "segment": segment,
                    "malignant": label,
                }
            )
    df = pd.DataFrame(rows)
    df["malignant"] = df["malignant"].astype("Int8")
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _strata(df: pd.DataFrame) -> pd.Series:
    per_patient = df.groupby("patient_id").agg(
        label=("malignant", lambda s: "NA" if s.isna().all() else str(int(s.max()))),
        segment=("segment", "first"),
        split=("split", "first"),
    )
    return per_patient


def test_splits_are_disjoint_by_patient() -> None:
    out = assign_splits(_manifest(), seed=1)
    assert out["split"].notna().all()
    # both breasts of a patient in one split (a split by breast would leak the other breast)
    assert (out.groupby("patient_id")["split"].nunique() == 1).all()
    assert (
        len(out) == len(_manifest())
        and out["image_id"].tolist() == _manifest()["image_id"].tolist()
    )


def test_proportions_hold_within_each_stratum() -> None:
    # Prepare
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    # Execute
    per_patient = _strata(assign_splits(_manifest(), fractions, seed=3))
    # Assert: every (label, segment) stratum, including unlabelled patients, within 2 patients
    assert set(per_patient["label"]) == {"0", "1", "NA"}
    for key, group in per_patient.groupby(["label", "segment"]):
        n = len(group)
        for split, f in fractions.items():
            assert abs((group["split"] == split).sum() - n * f) <= 2, (key, split)
    totals = per_patient["split"].value_counts()
    for split, f in fractions.items():
        assert abs(totals[split] - len(per_patient) * f) <= 1


def test_patient_label_is_any_malignant_image() -> None:
    # Patients with one malignant image out of four are a stratum of their own, spread 60/20/20.
    per_patient = _strata(assign_splits(_manifest(), seed=0))
    positives = per_patient[per_patient["label"] == "1"]
    share = positives["split"].value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.6, abs=0.05)
    assert share["test"] == pytest.approx(0.2, abs=0.05)


def test_same_seed_same_split_other_seed_other_split() -> None:
    m = _manifest()
    a, b = assign_splits(m, seed=7), assign_splits(m.iloc[::-1], seed=7)
    c = assign_splits(m, seed=8)
    by_id = b.set_index("image_id")["split"]
    assert (a["split"].to_numpy() == by_id.loc[a["image_id"]].to_numpy()).all()  # row order free
    assert (a["split"] != c["split"]).any()


def test_test_only_centre_and_zero_fractions() -> None:
    m = _manifest(50)
    assert (assign_splits(m, {"test": 1.0})["split"] == "test").all()
    two = assign_splits(m, {"train": 0.5, "val": 0.0, "test": 0.5})
    assert set(two["split"]) == {"train", "test"}


def test_every_wanted_split_gets_a_patient_when_possible() -> None:
    tiny = _manifest(3, seed=2)
    out = assign_splits(tiny, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    assert sorted(out.groupby("patient_id")["split"].first()) == ["test", "train", "val"]
    one = assign_splits(_manifest(1), seed=0)
    assert one["split"].nunique() == 1


def test_without_segment_or_label_stratification() -> None:
    m = _manifest(100).drop(columns="segment")
    out = assign_splits(m, seed=0, stratify_segment=False, label=None)
    counts = out.groupby("patient_id")["split"].first().value_counts()
    assert counts.to_dict() == {"train": 60, "val": 20, "test": 20}


def test_bad_fractions_and_manifests_are_errors() -> None:
    m = _manifest(10)
    with pytest.raises(ConfigError, match="sum to 1"):
        assign_splits(m, {"train": 0.5, "test": 0.4})
    with pytest.raises(ConfigError, match="unknown split"):
        assign_splits(m, {"train": 0.5, "holdout": 0.5})
    with pytest.raises(DataError, match="patient_id"):
        assign_splits(m.assign(patient_id=pd.NA))
    with pytest.raises(DataError, match="label column 'acr'"):
        assign_splits(m, label="acr")


def test_a_patient_in_both_official_splits_is_kept_whole_in_test(caplog) -> None:
    # Prepare: 20 patients of 2 images in the dataset's official split; P0-P4 have one image
    # in train and one in test (CBIS-DDSM's mass and calcification lists are split apart)
    from fedmammo.config import CentreProfile
    from fedmammo.data.prepare import _split

    patients = [f"P{i}" for i in range(20) for _ in range(2)]
    official = ["train", "test"] * 5 + ["train", "train"] * 10 + ["test", "test"] * 5
    manifest = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(40)],
            "patient_id": patients,
            "split": pd.array(official, dtype="string"),
            "malignant": [k % 3 == 0 for k in range(40)],
            "segment": "S-A",
        }
    )
    profile = CentreProfile(name="c", data={"format": "dicom-folder", "root": "/x"})
    # Execute
    with caplog.at_level("INFO", logger="fedmammo"):
        out = _split(manifest, profile, test_only=False, data_seed=0)
    # Assert: one split a patient; P0-P4 wholly in test; the other official test kept
    per_patient = out.groupby("patient_id")["split"].nunique()
    assert per_patient.max() == 1
    assert set(out.loc[out["patient_id"].isin([f"P{i}" for i in range(5)]), "split"]) == {"test"}
    assert set(out.loc[out["patient_id"].isin([f"P{i}" for i in range(15, 20)]), "split"]) == {
        "test"
    }
    assert set(out.loc[out["patient_id"].isin([f"P{i}" for i in range(5, 15)]), "split"]) <= {
        "train",
        "val",
    }
    assert "5 patients have images in more than one of the dataset's splits" in caplog.text
    assert "kept the dataset's official test split" in caplog.text


def _official(split: list[str | None], per_patient: int = 2) -> pd.DataFrame:
    n = len(split)
    return pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(n)],
            "patient_id": [f"P{k // per_patient}" for k in range(n)],
            "split": pd.array(split, dtype="string"),
            "malignant": [k % 3 == 0 for k in range(n)],
            "segment": "S-A",
        }
    )


def test_a_labels_csv_train_val_test_split_is_kept_as_given(caplog) -> None:
    # Prepare: a hospital's own patient-wise split of 30 patients (2 images each), 18 / 6 / 6,
    # but P0 has one image in train and one in val, P1 one in val and one in test
    from fedmammo.config import CentreProfile
    from fedmammo.data.prepare import _split

    split = ["train", "val", "val", "test"] + ["train"] * 32 + ["val"] * 12 + ["test"] * 12
    manifest = _official(split)
    profile = CentreProfile(name="c", data={"format": "dicom-folder", "root": "/x"})
    # Execute
    with caplog.at_level("INFO", logger="fedmammo"):
        out = _split(manifest, profile, test_only=False, data_seed=0)
    # Assert: every other image stays where the CSV put it, whatever the profile's fractions;
    # P0 goes wholly to val and P1 to test (the most held-out split of their images)
    by_patient = out.groupby("patient_id")["split"].agg(set).to_dict()
    assert by_patient["P0"] == {"val"} and by_patient["P1"] == {"test"}
    rest = manifest["patient_id"] > "P1"
    assert out.loc[rest, "split"].tolist() == manifest.loc[rest, "split"].tolist()
    assert "2 patients have images in more than one of the dataset's splits (P0, P1)" in caplog.text
    assert "kept the dataset's train / val / test split" in caplog.text


def test_images_without_a_split_have_their_patients_split_and_the_others_keep_theirs(
    caplog,
) -> None:
    # Prepare: 10 patients of 2 images: P1 has no split, P2 one image without one, P0 one in
    # train and one in test; the rest train
    from fedmammo.config import CentreProfile
    from fedmammo.data.prepare import _split

    split = ["train", "test", None, None, "test", None] + ["train"] * 14
    profile = CentreProfile(name="c", data={"format": "dicom-folder", "root": "/x"})
    # Execute
    out = _split(_official(split), profile, test_only=False, data_seed=0)
    # Assert: one split a patient; P0 and P2 in test (P2's unsplit image follows it); P1 split
    # by the profile's fractions; the given test patients kept, the others train or val
    by_patient = out.groupby("patient_id")["split"].agg(set).to_dict()
    assert by_patient["P0"] == by_patient["P2"] == {"test"}
    assert len(by_patient["P1"]) == 1
    assert all(by_patient[f"P{i}"] <= {"train", "val"} for i in range(3, 10))
    assert (
        "centre c: 2 of 20 images, of 1 patient(s), have no split in the dataset; those "
        "patients are split by the profile's split fractions, the others keep theirs"
    ) in caplog.text
    assert "1 patients have images in more than one of the dataset's splits (P0)" in caplog.text


def test_a_dataset_split_of_other_values_is_said_and_every_image_split_again(caplog) -> None:
    from fedmammo.config import CentreProfile
    from fedmammo.data.prepare import _split

    profile = CentreProfile(name="c", data={"format": "dicom-folder", "root": "/x"})
    out = _split(_official(["train", "holdout"] * 10), profile, test_only=False, data_seed=0)
    assert out.groupby("patient_id")["split"].nunique().max() == 1
    assert (
        "centre c: the dataset's split is not used (values other than train / val / test: "
        "holdout); every image is split again by the profile's split fractions"
    ) in caplog.text


def test_a_centre_refuses_rows_of_a_split_it_does_not_have(tmp_path):
    # Prepare: a prepared centre (a server names the split of evaluate messages)
    from helpers.centre_nodes import prepared_centre

    data, _ = prepared_centre(tmp_path, "c1", (32, 24))
    # Execute / Assert: the three splits partition the labelled images; anything else is refused
    parts = [set(data.rows(s).tolist()) for s in SPLITS]
    assert sum(map(len, parts)) == len(data.rows(None)) and not parts[0] & parts[2]
    for bad in ("../../x", "Train", ""):
        with pytest.raises(ConfigError, match=r"unknown split .*; valid: train, val, test"):
            data.rows(bad)


@pytest.mark.parametrize(
    ("split", "options", "by", "fix"),
    [
        (["test", "val"] * 10, {}, "the dataset's split", "data.use_dataset_split: false"),
        (
            [None] * 20,
            {"split": {"train": 0.0, "val": 0.5, "test": 0.5}},
            "the profile's",
            "split.train",
        ),
    ],
)
def test_a_training_centre_without_a_training_image_is_refused_while_prepared(
    split, options, by, fix
) -> None:
    # Prepare: a dataset whose own split has only val and test; a profile whose fractions
    # give train nothing
    from fedmammo.config import CentreProfile
    from fedmammo.data.prepare import _check_training_images, _split

    profile = CentreProfile(name="c", data={"format": "dicom-folder", "root": "/x"}, **options)
    out = _split(_official(split), profile, test_only=False, data_seed=0)
    # Execute / Assert: one line naming the centre, the counts, whose split, and the fix
    with pytest.raises(
        DataError, match="centre 'c' trains but its split leaves it no training"
    ) as e:
        _check_training_images(out, profile)
    assert "train 0 of 20 images" in str(e.value) and by in str(e.value) and fix in str(e.value)
    # with one patient's images in train, nothing is refused
    out.loc[out["patient_id"] == "P0", "split"] = "train"
    _check_training_images(out, profile)
