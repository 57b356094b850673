"""Tests of the shipped synthetic centre profiles (centres/*.yaml) and their validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedmammo.config import load_profile
from fedmammo.data.phantom import resolve_styles, segment_patient_counts
from fedmammo.errors import ConfigError

CENTRES = Path(__file__).resolve().parents[2] / "centres"
ALL_PROFILES = sorted(CENTRES.glob("*.yaml"))
SYNTHETIC = [p for p in ALL_PROFILES if "synthetic" in (yaml.safe_load(p.read_text())["data"])]
SHIPPED = {
    "s1",
    "s2",
    "s3",
    "s4",
    "s5",
    "hmi",
    "inbreast_like",
    "vtb",
    "inbreast_gan",
    "bcdr",
    "optimam",
    "tiny",
}


def _by_segment(name: str) -> dict[str, float]:
    prof = load_profile(CENTRES / f"{name}.yaml")
    return {s.manufacturer: s.prevalence for s in prof.data.synthetic.segments}


def test_every_shipped_synthetic_profile_is_present():
    # Execute
    stems = {p.stem for p in SYNTHETIC}
    # Assert
    assert SHIPPED <= stems


@pytest.mark.parametrize("path", SYNTHETIC, ids=lambda p: p.stem)
def test_synthetic_profile_loads_with_known_styles_and_cpu_scale(path: Path):
    # Execute
    profile = load_profile(path)
    styles = resolve_styles(profile)
    # Assert
    syn = profile.data.synthetic
    assert profile.name == path.stem
    assert len(styles) == len(syn.segments)
    assert 10 <= sum(segment_patient_counts(syn.segments)) <= 150
    assert path.read_text().startswith("# "), "each profile starts with a comment on what it models"


@pytest.mark.parametrize("path", SYNTHETIC, ids=lambda p: p.stem)
def test_every_segment_with_cancer_has_enough_cancer_patients(path: Path):
    # Prepare
    profile = load_profile(path)
    # Execute
    cancers = {
        s.manufacturer: round(s.prevalence * s.patients) for s in profile.data.synthetic.segments
    }
    # Assert (VTB's tiny minor-vendor segments are allowed none: malignancy is mostly missing)
    if path.stem not in ("vtb", "tiny"):
        assert min(cancers.values()) >= 3, cancers


def test_seed000_profiles_keep_table1_prevalence_order():
    # Prepare: Table 1 image incidence S1-Mb > S1-Ma > S3-Ma > S3-Mb > S4 ~ S2 > S5
    s1, s2, s3, s4, s5 = (_by_segment(f"s{i}") for i in range(1, 6))
    # Execute / Assert
    assert s1["Mb"] > s1["Ma"] > s3["Ma"] > s3["Mb"] > max(s2.values())
    assert min(s2.values()) >= max(s4.values()) / 2
    assert s5["Mc"] < min(s4.values())
    assert set(s1) == set(s2) == set(s3) == {"Ma", "Mb"}
    assert set(s4) == {"Mc", "Md"} and set(s5) == {"Mc"}


def test_seed001_and_seed003_profiles_have_their_defining_traits():
    # Execute
    hmi, inb, vtb = (load_profile(CENTRES / f"{n}.yaml") for n in ("hmi", "inbreast_like", "vtb"))
    bcdr = load_profile(CENTRES / "bcdr.yaml")
    optimam = load_profile(CENTRES / "optimam.yaml")
    # Assert
    assert {s.manufacturer for s in hmi.data.synthetic.segments} == {"Ma", "Mb", "Mc", "Md"}
    assert hmi.labels.missing == {}
    assert inb.split["test"] == 1.0 and inb.labels.uncertainty["malignancy"] > 0
    assert vtb.labels.missing["malignancy"] >= 0.9
    assert 0 < vtb.labels.missing["acr"] < 0.5 and 0 < vtb.labels.missing["density"] < 0.5
    assert [s.name for s in resolve_styles(bcdr)] == ["mb", "film"]
    assert optimam.data.synthetic.calcification_fraction <= 0.1


def _write_variant(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((CENTRES / "tiny.yaml").read_text())
    edit(data)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("edit", "key", "fragment"),
    [
        (
            lambda d: d["data"]["synthetic"].update(colour="red"),
            "data.synthetic.colour",
            "unknown key",
        ),
        (
            lambda d: d["data"]["synthetic"]["segments"][0].update(patients="many"),
            "data.synthetic.segments.0.patients",
            "integer",
        ),
        (
            lambda d: d["data"]["synthetic"]["segments"][1].update(prevalence=1.5),
            "data.synthetic.segments.1.prevalence",
            "less than or equal to 1",
        ),
        (
            lambda d: d["labels"]["missing"].update(malignancy=-0.2),
            "labels.missing",
            "fraction in [0, 1]",
        ),
    ],
    ids=["unknown-key", "wrong-type", "prevalence-out-of-range", "missing-out-of-range"],
)
def test_bad_profile_names_file_and_key(tmp_path: Path, edit, key: str, fragment: str):
    # Prepare
    path = _write_variant(tmp_path, edit)
    # Execute
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    # Assert
    message = str(info.value)
    assert str(path) in message
    assert f"key '{key}" in message
    assert fragment in message


def test_unknown_style_names_segment_and_lists_valid_styles(tmp_path: Path):
    # Prepare
    path = _write_variant(
        tmp_path, lambda d: d["data"]["synthetic"]["segments"][1].update(style="mz")
    )
    profile = load_profile(path)
    # Execute
    with pytest.raises(ConfigError) as info:
        resolve_styles(profile)
    # Assert
    message = str(info.value)
    assert "data.synthetic.segments.1.style" in message and "'mz'" in message
    assert "valid styles: film, ma, mb, mc, md, me" in message
