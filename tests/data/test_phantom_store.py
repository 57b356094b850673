"""The phantom store (FEDMAMMO_PHANTOM_STORE): a synthetic centre prepared in several data
folders is generated once and copied, with the same bytes as a centre generated in place."""

from __future__ import annotations

import filecmp

import pytest

from fedmammo.config import CentreProfile
from fedmammo.data import phantom, prepare
from fedmammo.data.manifest import read_manifest
from fedmammo.data.prepare import PHANTOM_STORE_ENV, centre_data_dir, materialise_centre
from fedmammo.errors import DataError

SIZE = (32, 24)
PROFILE = CentreProfile.model_validate(
    {
        "name": "s",
        "source": "S",
        "data": {
            "synthetic": {
                "image_height": 64,
                "segments": [{"manufacturer": "Ma", "patients": 3, "prevalence": 0.5}],
            }
        },
    }
)
NAMES_FOLDER = "manifest.csv"  # a manifest names its images by path
HASHES_PATHS = "fp.json"  # the cache's fingerprint of its inputs, paths included


@pytest.fixture
def generated(monkeypatch):
    """The folders ``generate_centre`` was asked to write, in order."""
    calls = []
    real = phantom.generate_centre

    def counting(profile, out_dir, **kwargs):
        calls.append(out_dir)
        return real(profile, out_dir, **kwargs)

    monkeypatch.setattr(phantom, "generate_centre", counting)
    return calls


def _folder(root):
    return centre_data_dir(root, PROFILE, 0)


def _same_files(a, b):
    """Every file of centre folder ``a`` is in ``b`` with the same bytes, or (manifests) the
    same text once the folder's name is replaced; the fingerprints differ by the paths."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        if rel.name == HASHES_PATHS:
            continue
        if rel.name == NAMES_FOLDER:
            text = (a / rel).read_text().replace(str(a.parent), "ROOT")
            assert text == (b / rel).read_text().replace(str(b.parent), "ROOT"), rel
        else:
            assert filecmp.cmp(a / rel, b / rel, shallow=False), rel


def test_a_stored_centre_is_generated_once_and_copied_as_generated_in_place(
    tmp_path, monkeypatch, generated
):
    # Prepare: the centre generated in place, with no store
    monkeypatch.delenv(PHANTOM_STORE_ENV, raising=False)
    materialise_centre(PROFILE, tmp_path / "in_place", image_size=SIZE)
    monkeypatch.setenv(PHANTOM_STORE_ENV, str(tmp_path / "store"))
    # Execute: the same centre in two new data folders
    one = materialise_centre(PROFILE, tmp_path / "one", image_size=SIZE)
    materialise_centre(PROFILE, tmp_path / "two", image_size=SIZE)
    # Assert: one generation in place, one into the store, none for the second folder
    assert len(generated) == 2
    (entry,) = (tmp_path / "store").iterdir()  # no staging folder left behind
    assert entry.name == prepare.profile_stamp(PROFILE, 0)
    for name in ("one", "two"):
        _same_files(_folder(tmp_path / "in_place"), _folder(tmp_path / name))
    # each folder's manifest names its own images, which exist
    paths = read_manifest(_folder(tmp_path / "one") / "phantom" / "manifest.csv")["path"]
    assert all(p.startswith(str(_folder(tmp_path / "one"))) for p in paths)
    assert len(one.manifest) == len(paths) > 0


def test_a_changed_copy_leaves_the_store_and_later_copies_alone(tmp_path, monkeypatch, generated):
    # Prepare: a copy whose first image is then overwritten (copies, never links)
    monkeypatch.setenv(PHANTOM_STORE_ENV, str(tmp_path / "store"))
    materialise_centre(PROFILE, tmp_path / "one", image_size=SIZE)
    first = sorted((_folder(tmp_path / "one") / "phantom" / "dicom").rglob("*.dcm"))[0]
    first.write_bytes(b"not a DICOM file")
    # Execute
    materialise_centre(PROFILE, tmp_path / "two", image_size=SIZE)
    # Assert: the second copy and the store hold the generated image
    rel = first.relative_to(_folder(tmp_path / "one"))
    (entry,) = (tmp_path / "store").iterdir()
    stored = (entry / rel.relative_to("phantom")).read_bytes()
    assert stored[128:132] == b"DICM"
    assert (_folder(tmp_path / "two") / rel).read_bytes() == stored
    assert len(generated) == 1


def test_when_another_process_stores_the_centre_first_its_entry_is_used(
    tmp_path, monkeypatch, generated
):
    # Prepare: while this process generates, another stores the same centre first
    monkeypatch.setenv(PHANTOM_STORE_ENV, str(tmp_path / "store"))
    counting, raced = phantom.generate_centre, []

    def racing(profile, out_dir, **kwargs):
        if not raced:
            raced.append(out_dir)
            materialise_centre(PROFILE, tmp_path / "other", image_size=SIZE)
        return counting(profile, out_dir, **kwargs)

    monkeypatch.setattr(phantom, "generate_centre", racing)
    # Execute
    materialise_centre(PROFILE, tmp_path / "mine", image_size=SIZE)
    # Assert: both generated, the first to finish was kept, the other's staging was removed
    assert len(generated) == 2
    assert [p.name for p in (tmp_path / "store").iterdir()] == [prepare.profile_stamp(PROFILE, 0)]
    _same_files(_folder(tmp_path / "other"), _folder(tmp_path / "mine"))


def test_a_damaged_store_entry_is_named(tmp_path, monkeypatch):
    # Prepare: an entry without its manifest (not written by fedmammo)
    monkeypatch.setenv(PHANTOM_STORE_ENV, str(tmp_path / "store"))
    entry = tmp_path / "store" / prepare.profile_stamp(PROFILE, 0)
    (entry / "dicom").mkdir(parents=True)
    (entry / "dicom" / "x.dcm").write_bytes(b"?")
    # Execute / Assert
    with pytest.raises(DataError, match=f"phantom store entry {entry} has no manifest.csv"):
        materialise_centre(PROFILE, tmp_path / "one", image_size=SIZE)
    assert [p.name for p in (tmp_path / "store").iterdir()] == [entry.name]  # no staging left


def test_a_store_that_cannot_be_written_is_named_with_its_variable(tmp_path, monkeypatch):
    # Prepare: the store's path is a file
    (tmp_path / "store").write_text("")
    monkeypatch.setenv(PHANTOM_STORE_ENV, str(tmp_path / "store"))
    # Execute / Assert
    with pytest.raises(DataError, match=f"{PHANTOM_STORE_ENV}=.*/store: the phantom store cannot"):
        materialise_centre(PROFILE, tmp_path / "one", image_size=SIZE)


def test_a_moved_store_is_copied_with_the_paths_of_the_new_folder(tmp_path, monkeypatch, generated):
    # Prepare: a store filled, then moved (the old folder is gone)
    monkeypatch.setenv(PHANTOM_STORE_ENV, str(tmp_path / "store"))
    materialise_centre(PROFILE, tmp_path / "one", image_size=SIZE)
    (tmp_path / "store").rename(tmp_path / "moved_store")
    monkeypatch.setenv(PHANTOM_STORE_ENV, str(tmp_path / "moved_store"))
    # Execute
    two = materialise_centre(PROFILE, tmp_path / "two", image_size=SIZE)
    # Assert: copied, not generated again; every image read from the new data folder
    assert len(generated) == 1 and two.skipped == [] and len(two.manifest) == 12
    _same_files(_folder(tmp_path / "one"), _folder(tmp_path / "two"))
