"""Several centres prepared at once in worker processes: the same folders as one by one, the
first error raised naming its centre, and the number of workers bounded by cores, centres and
memory."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from fedmammo.config import CentreProfile
from fedmammo.data import cache_workers, prepare
from fedmammo.data.manifest import read_manifest
from fedmammo.data.prepare import CentreJob, materialise_centres, preparation_workers
from fedmammo.errors import DataError

SIZE = (32, 24)


def _profile(name: str, patients: int) -> CentreProfile:
    return CentreProfile.model_validate(
        {
            "name": name,
            "source": name.upper(),
            "data": {
                "synthetic": {
                    "image_height": 64,
                    "segments": [{"manufacturer": "Ma", "patients": patients, "prevalence": 0.5}],
                }
            },
        }
    )


def _jobs(root, thumbnails=None) -> list[CentreJob]:
    return [
        CentreJob(
            profile=_profile(name, patients),
            data_root=str(root),
            image_size=SIZE,
            test_only=name == "c",
            thumbnail=None if thumbnails is None else str(thumbnails / f"{name}.png"),
        )
        for name, patients in (("a", 3), ("b", 5), ("c", 2))
    ]


def _cache(root, name: str):
    (folder,) = root.glob(f"{name}-*/cache_32x24")
    return np.load(folder / "images.npy"), (folder / "manifest.csv").read_text()


def test_parallel_preparation_writes_what_one_by_one_writes(tmp_path, caplog, monkeypatch):
    # Prepare / Execute: the same three centres one by one and in 2 worker processes, each
    # generating its phantoms (no phantom store)
    monkeypatch.delenv(prepare.PHANTOM_STORE_ENV, raising=False)
    serial = list(materialise_centres(_jobs(tmp_path / "serial"), workers=1))
    caplog.clear()  # the records of the workers only (root may be at INFO already)
    with caplog.at_level(logging.INFO, logger="fedmammo"):
        both = list(materialise_centres(_jobs(tmp_path / "pool", tmp_path / "thumbs"), workers=2))
    # Assert: same counts in the jobs' order (4 images a patient), identical caches and splits
    assert [(j.profile.name, n, s) for j, n, s in both] == [("a", 12, 0), ("b", 20, 0), ("c", 8, 0)]
    assert [(n, s) for _, n, s in serial] == [(n, s) for _, n, s in both]
    for name in "abc":
        images, manifest = _cache(tmp_path / "pool", name)
        expected_images, expected_manifest = _cache(tmp_path / "serial", name)
        np.testing.assert_array_equal(images, expected_images)
        assert manifest.replace("/pool/", "/serial/") == expected_manifest
    # every patient's two breasts in one split (the training centres; c is test only)
    for name in "ab":
        (folder,) = (tmp_path / "pool").glob(f"{name}-*/cache_32x24")
        table = pd.read_csv(folder / "manifest.csv")
        per_patient = table.groupby("patient_id").agg(
            breasts=("laterality", "nunique"), splits=("split", "nunique")
        )
        assert (per_patient["breasts"] == 2).all() and (per_patient["splits"] == 1).all()
    assert sorted(p.name for p in (tmp_path / "thumbs").iterdir()) == ["a.png", "b.png", "c.png"]
    # the workers' log records reached this process (the run log's handlers)
    generated = [r for r in caplog.records if r.getMessage().startswith("generating phantom")]
    assert sorted(r.getMessage().split()[3] for r in generated) == ["a", "b", "c"]
    assert os.getpid() not in {r.process for r in generated}


def test_a_failing_centre_raises_its_error_and_keeps_the_others(tmp_path):
    # Prepare: the second centre reads a dataset whose root does not exist
    jobs = _jobs(tmp_path)
    missing = CentreProfile.model_validate(
        {"name": "gone", "source": "G", "data": {"format": "dicom-folder", "root": "/nowhere"}}
    )
    jobs[1] = CentreJob(profile=missing, data_root=str(tmp_path), image_size=SIZE)
    # Execute / Assert: the worker's DataError, naming the centre and its root
    with pytest.raises(DataError, match=r"centre 'gone': data root '/nowhere'"):
        list(materialise_centres(jobs, workers=2))
    assert list(tmp_path.glob("a-*/cache_32x24/images.npy"))  # the finished centre stays


def test_worker_count_follows_cores_centres_and_memory(monkeypatch):
    monkeypatch.setattr(cache_workers, "cores", lambda: 4)
    monkeypatch.setattr(cache_workers, "available_memory", lambda: 64 * 2**30)
    assert preparation_workers(10) == 4
    assert preparation_workers(prepare.MIN_CENTRES_FOR_POOL) == 4
    assert preparation_workers(prepare.MIN_CENTRES_FOR_POOL - 1) == 1  # a pool would not pay
    assert preparation_workers(3, requested=8) == 3  # no more than the centres
    assert preparation_workers(10, requested=2) == 2
    assert preparation_workers(1, requested=2) == 1
    # half the available memory at PREPARE_BYTES_PER_WORKER each
    monkeypatch.setattr(
        cache_workers, "available_memory", lambda: 5 * prepare.PREPARE_BYTES_PER_WORKER
    )
    assert preparation_workers(10) == 2
    monkeypatch.setattr(cache_workers, "available_memory", lambda: 10)
    assert preparation_workers(10) == 1


def test_a_dataset_is_listed_again_only_when_a_file_under_its_root_changes(tmp_path, monkeypatch):
    # Prepare: a hospital folder of DICOM files (a phantom's) with one corrupt file, read by
    # the dicom-folder adapter; count the adapter's listings
    from fedmammo.data import adapters
    from fedmammo.data.phantom import generate_centre

    folder = tmp_path / "dicoms"
    generate_centre(_profile("h", 2), folder, seed=1)
    (folder / "zz_broken.dcm").write_bytes(b"not a DICOM file")
    listings = []
    read = adapters.ADAPTERS["dicom-folder"]
    monkeypatch.setitem(
        adapters.ADAPTERS, "dicom-folder", lambda *a, **k: listings.append(1) or read(*a, **k)
    )
    profile = CentreProfile.model_validate(
        {"name": "h", "source": "H", "data": {"format": "dicom-folder", "root": str(folder)}}
    )
    job = CentreJob(profile=profile, data_root=str(tmp_path / "data"), image_size=SIZE)

    # Execute: prepared twice, then once more after a file under the root changed
    first = [(n, s) for _, n, s in materialise_centres([job])]
    (cache,) = (tmp_path / "data").glob("h-*/cache_32x24/images.npy")
    built = cache.stat().st_mtime_ns
    second = [(n, s) for _, n, s in materialise_centres([job])]
    reused = prepare.materialise_centre(profile, tmp_path / "data", image_size=SIZE).manifest
    os.utime(folder / "zz_broken.dcm", ns=(1, 1))
    third = [(n, s) for _, n, s in materialise_centres([job])]

    # Assert: 8 images and the corrupt file counted as skipped every time; the headers read
    # only the first time and after the change; the manifest reused is the one the adapter
    # reads, and the image cache it keys was not built again
    assert first == second == third == [(8, 1)]
    assert len(listings) == 2
    # a damaged record of the listing: the headers are read again, nothing fails
    (stamp,) = (tmp_path / "data").glob("h-*/source_manifest.json")
    stamp.write_text("{")
    assert [(n, s) for _, n, s in materialise_centres([job])] == [(8, 1)]
    assert len(listings) == 3
    listed = adapters.load_manifest("dicom-folder", folder, centre="h", source="H")
    assert reused["path"].tolist() == listed["path"].tolist()
    assert cache.stat().st_mtime_ns == built


def test_a_profile_setting_what_the_profile_owns_or_an_unknown_option_is_named(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "l.csv").write_text("")  # a path option names a file that exists

    def problem(data):
        return prepare.data_config_problem(
            CentreProfile.model_validate({"name": "h", "source": "H", "data": data})
        )

    base = {"format": "dicom-folder", "root": "/x"}
    assert problem(base) is None
    assert problem({**base, "options": {"labels_csv": "l.csv", "modalities": ["MG"]}}) is None
    assert problem({**base, "format": "dicom"}) == (
        "centre 'h': unknown data.format 'dicom'; valid formats: cbis-ddsm, cmmd, dicom-folder, "
        "inbreast, rsna, vindr-mammo"
    )
    assert "may not set 'centre' by the profile's 'name'" in problem(
        {**base, "options": {"centre": "other"}}
    )
    unknown = problem({**base, "options": {"label_csv": "l.csv"}})
    assert unknown.startswith("centre 'h': unknown data.options 'label_csv' for format")
    assert "valid options: labels_csv, modalities, print_summary, summary_path" in unknown
    assert problem({"synthetic": _profile("s", 1).data.synthetic.model_dump()}) is None


@pytest.mark.parametrize(
    ("fmt", "options", "said"),
    [
        (
            "inbreast",
            {"birads3": "benin"},
            "birads3 'benin' is not allowed; allowed values: benign, exclude (case-insensitive)",
        ),
        (
            "vindr-mammo",
            {"malignancy_uncertainty": {"4c": 7}},
            "malignancy_uncertainty['4c'] 7 is not allowed; allowed values: a number in [0, 1] "
            "(0 = certain; the loss weighs a label by 1 - u)",
        ),
    ],
)
def test_check_names_a_label_rule_value_that_is_not_allowed(fmt, options, said):
    """Regression: --check said "valid" for birads3: benin (read as benign) and an uncertainty
    of 7 (a loss weight 1 - u of -6)."""

    # Prepare
    def problem(options):
        data = {"format": fmt, "root": "/x", "options": options}
        return prepare.data_config_problem(
            CentreProfile.model_validate({"name": "h", "source": "H", "data": data})
        )

    # Execute / Assert
    assert problem(options) == f"centre 'h': data.options {said} (docs/datasets.md)"
    assert problem({"birads3": "Exclude", "malignancy_uncertainty": {"4a": 0.7}}) is None


def test_check_names_a_path_option_whose_variable_is_unset_or_whose_file_is_missing(
    tmp_path, monkeypatch
):
    """Regression: --check said "valid" for labels_csv: ${UNSET}/labels.csv, and the run then
    failed after making its folder."""

    # Prepare
    def problem(options):
        data = {"format": "dicom-folder", "root": str(tmp_path), "options": options}
        return prepare.data_config_problem(
            CentreProfile.model_validate({"name": "h", "source": "H", "data": data})
        )

    monkeypatch.delenv("FEDMAMMO_UNSET_SECURE", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "labels.csv").write_text("image,malignant\n")
    # Execute / Assert
    assert problem({"labels_csv": "${FEDMAMMO_UNSET_SECURE}/labels.csv"}) == (
        "centre 'h': data.options labels_csv '${FEDMAMMO_UNSET_SECURE}/labels.csv' names the "
        "environment variable FEDMAMMO_UNSET_SECURE which is not set "
        "(${FEDMAMMO_UNSET_SECURE}/labels.csv not found); fix: export FEDMAMMO_UNSET_SECURE or "
        "give the path itself in data.options (docs/datasets.md)"
    )
    assert problem({"labels_csv": "other.csv"}) == (
        f"centre 'h': data.options labels_csv 'other.csv': {tmp_path / 'other.csv'} not found "
        "(docs/datasets.md)"
    )
    assert problem({"labels_csv": "labels.csv"}) is None


def test_counts_keep_unlabelled_images_under_na():
    # Prepare: a manifest whose malignancy labels are 1, 0 and missing (pandas' nullable Int)
    import pandas as pd

    manifest = pd.DataFrame(
        {
            "patient_id": ["p1", "p1", "p2", "p3"],
            "split": ["train", "train", "test", None],
            "segment": ["S-A", "S-A", "S-A", "S-B"],
            "malignant": pd.array([1, None, 0, None], dtype="Int64"),
        }
    )
    data = prepare.CentreData(name="c", manifest=manifest, cache=None)  # counts read no image
    # Execute
    counts = data.counts()
    # Assert: every image counted once, the unlabelled ones under "na"
    assert counts == {
        "n-images": 4,
        "n-patients": 3,
        "n|train|S-A|1": 1,
        "n|train|S-A|na": 1,
        "n|test|S-A|0": 1,
        "n|none|S-B|na": 1,
    }


def _phantom_dir(root, profile: CentreProfile):
    return prepare.centre_data_dir(root, profile, 0) / "phantom"


@pytest.mark.parametrize(
    ("cut", "said"),
    [
        ("mid-line", "the file is cut short (its last line is incomplete)"),
        (
            "at a line end",
            "it lists 7 images of 2 patients where the profile asks for 3 patients x 4 images "
            "= 12 (cut short?)",
        ),
    ],
)
def test_a_phantom_manifest_cut_short_is_generated_again(tmp_path, monkeypatch, caplog, cut, said):
    """Regression (audit 13 F2): a full disk cut the phantom's manifest.csv; cut mid-line,
    every later run crashed in decode_lesions; cut at a line end, the centre silently used
    the images it still listed (7 of 12)."""
    # Prepare: a centre prepared (phantom generated in place), then its manifest cut short
    monkeypatch.delenv(prepare.PHANTOM_STORE_ENV, raising=False)
    profile = _profile("a", 3)
    images = np.array(prepare.materialise_centre(profile, tmp_path, image_size=SIZE).cache.array)
    manifest = _phantom_dir(tmp_path, profile) / "manifest.csv"
    whole = manifest.read_text()
    lines = whole.splitlines(keepends=True)
    manifest.write_text("".join(lines[:8]) + (lines[8][:40] if cut == "mid-line" else ""))
    # Execute
    with caplog.at_level(logging.WARNING, logger="fedmammo.data.prepare"):
        again = prepare.materialise_centre(profile, tmp_path, image_size=SIZE)
    # Assert: generated again (the same manifest and images as the first time), and said so
    assert manifest.read_text() == whole
    assert len(again.manifest) == 12 and again.skipped == []
    np.testing.assert_array_equal(again.cache.array, images)
    assert [r.getMessage() for r in caplog.records] == [
        f"{manifest}: {said}; generating centre a's phantom again"
    ]


def test_a_phantom_store_entry_cut_short_is_named(tmp_path, monkeypatch):
    # Prepare: a store entry whose manifest lists 1 of its 3 patients
    monkeypatch.setenv(prepare.PHANTOM_STORE_ENV, str(tmp_path / "store"))
    profile = _profile("a", 3)
    prepare.materialise_centre(profile, tmp_path / "one", image_size=SIZE)
    (entry,) = (tmp_path / "store").iterdir()
    lines = (entry / "manifest.csv").read_text().splitlines(keepends=True)
    (entry / "manifest.csv").write_text("".join(lines[:5]))
    # Execute / Assert: copied into a new data folder, it is refused naming both folders
    phantom_dir = _phantom_dir(tmp_path / "two", profile)
    with pytest.raises(DataError) as err:
        prepare.materialise_centre(profile, tmp_path / "two", image_size=SIZE)
    assert str(err.value) == (
        f"{phantom_dir / 'manifest.csv'}: it lists 4 images of 1 patients where the profile "
        "asks for 3 patients x 4 images = 12 (cut short?), just after it was made (copied "
        f"from the phantom store {prepare.PHANTOM_STORE_ENV}={tmp_path / 'store'}); delete "
        f"{phantom_dir} and the store's entry for this centre and run again"
    )


def test_a_moved_data_folder_reads_its_own_images(tmp_path):
    """Regression (audit 13 F7): the phantom's manifest named the images where it was
    generated, so a moved data folder read none of them ('file not found')."""
    # Prepare: a centre prepared, then its data folder moved (the original is gone)
    profile = _profile("a", 3)
    images = np.array(
        prepare.materialise_centre(profile, tmp_path / "data", image_size=SIZE).cache.array
    )
    (tmp_path / "data").rename(tmp_path / "moved")
    # Execute
    moved = prepare.materialise_centre(profile, tmp_path / "moved", image_size=SIZE)
    # Assert: every image read from the moved folder, as before; both manifests name them
    assert len(moved.manifest) == 12 and moved.skipped == []
    np.testing.assert_array_equal(moved.cache.array, images)
    folder = prepare.centre_data_dir(tmp_path / "moved", profile, 0).resolve()
    dicom = str(folder / "phantom" / "dicom") + os.sep
    for table in ("phantom/manifest.csv", "cache_32x24/manifest.csv"):
        assert all(p.startswith(dicom) for p in read_manifest(folder / table)["path"]), table


def test_a_copied_data_folder_reads_its_own_images_not_the_originals(tmp_path):
    """Regression (audit 13 F7): a copied data folder read the original's images (its cache,
    copied too, matched the original's paths), so changes to the copy went unseen."""
    # Prepare: a prepared centre copied (as cp -a: times kept), two images deleted in the copy
    profile = _profile("a", 3)
    prepare.materialise_centre(profile, tmp_path / "data", image_size=SIZE)
    shutil.copytree(tmp_path / "data", tmp_path / "copy")
    gone = sorted((_phantom_dir(tmp_path / "copy", profile) / "dicom").rglob("*.dcm"))[:2]
    for path in gone:
        path.unlink()
    # Execute
    copy = prepare.materialise_centre(profile, tmp_path / "copy", image_size=SIZE)
    original = prepare.materialise_centre(profile, tmp_path / "data", image_size=SIZE)
    # Assert: the copy misses exactly its deleted images; the original is whole
    assert sorted(i for i, _ in copy.skipped) == sorted(p.stem for p in gone)
    assert len(copy.manifest) == 10 and len(original.manifest) == 12 and original.skipped == []
    assert copy.cache.cache_dir.is_relative_to(tmp_path / "copy")


def test_the_phantom_exam_size_matches_the_phantom():
    from fedmammo.data.phantom import EXAM

    assert prepare.PHANTOM_IMAGES_PER_PATIENT == len(EXAM)
