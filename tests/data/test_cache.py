"""Tests for fedmammo.data.cache: building, reuse, skipped files, access and the dataset."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedmammo.data import cache as cache_mod
from fedmammo.data.cache import CachedImageDataset, ImageCache
from fedmammo.data.dicom import load_mammogram
from fedmammo.data.manifest import encode_lesions, read_manifest
from fedmammo.errors import DataError

SIZE = (32, 24)


def _invert(x: torch.Tensor) -> torch.Tensor:
    return 1.0 - x


@pytest.fixture
def centre(tmp_path: Path, make_dicom, breast) -> pd.DataFrame:
    """A manifest of 5 readable images (one with a lesion) and 3 unreadable ones."""
    rows = []
    for i in range(5):
        path = make_dicom(breast(side="left" if i % 2 else "right", seed=i), name=f"ok{i}.dcm")
        rows.append({"image_id": f"ok{i}", "patient_id": f"p{i}", "path": str(path)})
    lesion = {"kind": "mass", "shape": "oval", "malignant": True, "box": [30, 20, 40, 30]}
    rows[0]["lesions"] = encode_lesions([lesion])
    rows[0]["malignant"] = 1
    truncated = make_dicom(breast(), name="truncated.dcm")
    truncated.write_bytes(truncated.read_bytes()[:-300])
    text = tmp_path / "text.dcm"
    text.write_text("hello")
    bad = [("truncated", truncated), ("text", text), ("missing", tmp_path / "missing.dcm")]
    rows[2:2] = [{"image_id": i, "patient_id": "px", "path": str(p)} for i, p in bad]
    return pd.DataFrame(rows)


def test_build_caches_readable_images_and_counts_the_rest(tmp_path, centre, caplog) -> None:
    # Execute
    with caplog.at_level(logging.WARNING, logger="fedmammo.data.cache"):
        cache = ImageCache.build(centre, tmp_path / "cache", size=SIZE)
    # Assert: 5 cached in manifest order, 3 skipped with reasons and logged warnings
    assert len(cache) == 5 and list(cache.manifest["image_id"]) == [f"ok{i}" for i in range(5)]
    assert [i for i, _ in cache.skipped] == ["truncated", "text", "missing"]
    reasons = dict(cache.skipped)
    assert "truncated.dcm" in reasons["truncated"] and "file not found" in reasons["missing"]
    assert sum("skipping image" in r.message for r in caplog.records) == 3
    assert cache.array.dtype == np.uint16 and cache.array.shape == (5, *SIZE)
    assert isinstance(cache.array, np.memmap)


def test_header_faults_are_skipped_naming_file_and_tag(
    tmp_path, centre, make_dicom, breast, edit_dicom
) -> None:
    """Regression: RescaleIntercept = NaN raised a ValueError in the segmentation (build ended)."""
    # Prepare: three images with a non-finite or oversized header among the readable ones
    faults = {
        "nan_intercept": ({"RescaleIntercept": "NaN"}, "(0028,1052) RescaleIntercept='NaN'"),
        "inf_window": ({"WindowWidth": "inf"}, "(0028,1051) WindowWidth='inf'"),
        "huge": ({"Rows": 40000, "Columns": 40000}, "1,600 megapixels"),
    }
    rows = []
    for image_id, (tags, _) in faults.items():
        path = make_dicom(breast(), name=f"{image_id}.dcm", WindowCenter=900, WindowWidth=1800)
        for keyword, value in tags.items():
            edit_dicom(path, keyword, "DS" if isinstance(value, str) else "US", value)
        rows.append({"image_id": image_id, "patient_id": "pf", "path": str(path)})
    manifest = pd.concat([centre, pd.DataFrame(rows)], ignore_index=True)
    # Execute
    cache = ImageCache.build(manifest, tmp_path / "cache", size=SIZE)
    # Assert: the five readable images are cached, each fault skipped naming file and tag
    assert len(cache) == 5 and np.isfinite(cache.images(range(5))).all()
    reasons = dict(cache.skipped)
    for image_id, (_, fragment) in faults.items():
        assert f"{image_id}.dcm" in reasons[image_id] and fragment in reasons[image_id]


def test_a_decoder_failure_on_one_file_is_skipped_naming_it(
    tmp_path, centre, monkeypatch, caplog
) -> None:
    # Prepare: the decoder raises an unexpected error type on one file only
    from pydicom.dataset import Dataset

    real = Dataset.pixel_array

    def flaky(ds: Dataset) -> np.ndarray:
        if str(ds.filename).endswith("ok3.dcm"):
            raise RuntimeError("decoder bug")
        return real.fget(ds)

    monkeypatch.setattr(Dataset, "pixel_array", property(flaky))
    # Execute
    with caplog.at_level(logging.WARNING, logger="fedmammo.data.cache"):
        cache = ImageCache.build(centre, tmp_path / "cache", size=SIZE)
    # Assert: the other images are cached; the failure is counted, logged and names the file
    assert len(cache) == 4 and "ok3" not in set(cache.manifest["image_id"])
    reason = dict(cache.skipped)["ok3"]
    assert "ok3.dcm" in reason and "RuntimeError: decoder bug" in reason
    assert any("skipping image ok3" in r.message for r in caplog.records)


def test_cached_pixels_and_boxes_match_the_reader(tmp_path, centre) -> None:
    cache = ImageCache.build(centre, tmp_path / "cache", size=SIZE)
    img, geometry = load_mammogram(centre.loc[0, "path"], SIZE, return_geometry=True)
    got = cache.get("ok0")
    assert got.dtype == np.float32 and got.shape == SIZE
    np.testing.assert_allclose(got, img, atol=0.5 / 65535 + 1e-7)
    assert cache.geometry("ok0") == geometry
    [lesion] = cache.boxes("ok0")
    assert lesion["kind"] == "mass" and lesion["malignant"] is True
    np.testing.assert_allclose(lesion["box"], geometry.map_box([30, 20, 40, 30]))
    assert cache.boxes("ok1") == []


def test_rows_and_images(tmp_path, centre) -> None:
    cache = ImageCache.build(centre, tmp_path / "cache", size=SIZE)
    rows = cache.rows(["ok3", "ok1"])
    assert rows.tolist() == [3, 1]
    batch = cache.images(rows)
    assert batch.shape == (2, *SIZE) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0], cache.get("ok3"))
    with pytest.raises(KeyError, match="skipped"):
        cache.rows(["truncated"])
    with pytest.raises(KeyError, match="not in the manifest"):
        cache.get("nope")


def test_build_reuses_a_matching_cache(tmp_path, centre, monkeypatch) -> None:
    # Prepare
    ImageCache.build(centre, tmp_path / "cache", size=SIZE)
    calls: list[str] = []
    real = cache_mod.load_mammogram
    monkeypatch.setattr(
        cache_mod, "load_mammogram", lambda p, *a, **k: calls.append(p) or real(p, *a, **k)
    )
    relabelled = centre.assign(malignant=0, split="test")
    # Execute: same files and settings, new labels and row order
    again = ImageCache.build(relabelled.iloc[::-1], tmp_path / "cache", size=SIZE)
    # Assert: nothing decoded, labels come from the given manifest, skipped list kept
    assert calls == []
    assert list(again.manifest["image_id"]) == [f"ok{i}" for i in range(5)]
    assert (again.manifest["split"] == "test").all() and (again.manifest["malignant"] == 0).all()
    assert len(again.skipped) == 3


def test_a_reused_cache_writes_the_new_splits_to_its_manifest_csv(tmp_path, centre) -> None:
    # Prepare: a centre cached as a training centre, then prepared again as test-only
    ImageCache.build(centre.assign(split="train"), tmp_path / "cache", size=SIZE)
    csv = tmp_path / "cache" / "manifest.csv"
    # Execute
    ImageCache.build(centre.assign(split="test"), tmp_path / "cache", size=SIZE)
    # Assert: the file on disk says what the centre now uses; unchanged splits leave it alone
    assert set(read_manifest(csv)["split"]) == {"test"}
    written = csv.stat().st_mtime_ns
    ImageCache.build(centre.assign(split="test"), tmp_path / "cache", size=SIZE)
    assert csv.stat().st_mtime_ns == written
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_build_rebuilds_when_inputs_or_settings_change(tmp_path, centre, monkeypatch) -> None:
    ImageCache.build(centre, tmp_path / "cache", size=SIZE)
    calls: list[str] = []
    real = cache_mod.load_mammogram
    monkeypatch.setattr(
        cache_mod, "load_mammogram", lambda p, *a, **k: calls.append(p) or real(p, *a, **k)
    )
    # A different size rebuilds.
    resized = ImageCache.build(centre, tmp_path / "cache", size=(16, 12))
    assert len(calls) == len(centre) and resized.array.shape == (5, 16, 12)
    # A touched file (new mtime) rebuilds.
    calls.clear()
    st = os.stat(centre.loc[0, "path"])
    os.utime(centre.loc[0, "path"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ImageCache.build(centre, tmp_path / "cache", size=(16, 12))
    assert len(calls) == len(centre)
    # A changed lesion box rebuilds (the boxes are part of the index).
    calls.clear()
    moved = centre.copy()
    moved.loc[0, "lesions"] = encode_lesions([{"kind": "mass", "box": [0, 0, 5, 5]}])
    ImageCache.build(moved, tmp_path / "cache", size=(16, 12))
    assert len(calls) == len(centre)


def test_open_reads_what_build_wrote(tmp_path, centre) -> None:
    built = ImageCache.build(centre, tmp_path / "cache", size=SIZE)
    opened = ImageCache.open(tmp_path / "cache")
    assert len(opened) == len(built) and opened.size == SIZE and opened.skipped == built.skipped
    assert list(opened.manifest["image_id"]) == list(built.manifest["image_id"])
    np.testing.assert_array_equal(opened.array, built.array)
    assert opened.boxes("ok0") == built.boxes("ok0")
    with pytest.raises(DataError, match="not a complete image cache"):
        ImageCache.open(tmp_path / "elsewhere")


def test_all_unreadable_is_an_error_and_leaves_no_valid_cache(tmp_path, centre) -> None:
    bad = centre[~centre["image_id"].str.startswith("ok")]
    with pytest.raises(DataError, match="none of the 3 images"):
        ImageCache.build(bad, tmp_path / "cache", size=SIZE)
    with pytest.raises(DataError):
        ImageCache.open(tmp_path / "cache")


def test_bad_manifest_is_an_error(tmp_path, centre) -> None:
    with pytest.raises(DataError, match="duplicate image_id"):
        ImageCache.build(pd.concat([centre, centre.iloc[:1]]), tmp_path / "c", size=SIZE)
    with pytest.raises(DataError, match="path"):
        ImageCache.build(centre.drop(columns="path"), tmp_path / "c", size=SIZE)


def test_dataset_items_batches_and_pickling(tmp_path, centre) -> None:
    # Prepare
    cache = ImageCache.build(centre, tmp_path / "cache", size=SIZE)
    rows = cache.rows(["ok4", "ok0", "ok2"])
    ds = CachedImageDataset(cache, rows, np.array([1, 0, 1]), transform=_invert)
    # Execute
    x, y = ds[0]
    batch_x, batch_y = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    clone = pickle.loads(pickle.dumps(ds))
    # Assert
    assert x.shape == (1, *SIZE) and x.dtype == torch.float32 and y.dtype == torch.int64
    np.testing.assert_allclose(x[0].numpy(), 1.0 - cache.get("ok4"), atol=1e-6)
    assert batch_x.shape == (3, 1, *SIZE) and batch_y.tolist() == [1, 0, 1]
    assert len(pickle.dumps(cache)) < 20_000  # the memmap is re-opened, not copied
    np.testing.assert_array_equal(clone[1][0].numpy(), ds[1][0].numpy())
    assert CachedImageDataset(cache, rows)[0][1].item() == -1


def test_dataset_rejects_bad_rows_and_labels(tmp_path, centre) -> None:
    cache = ImageCache.build(centre, tmp_path / "cache", size=SIZE)
    with pytest.raises(DataError, match="rows must lie"):
        CachedImageDataset(cache, [0, 5])
    with pytest.raises(DataError, match="missing labels"):
        CachedImageDataset(cache, [0, 1], pd.array([1, None], dtype="Int8"))
    with pytest.raises(DataError, match="2 rows"):
        CachedImageDataset(cache, [0, 1], np.array([1]))


def test_lesion_boxes_lie_inside_the_stored_breast_or_are_dropped(
    tmp_path, make_dicom, breast, caplog
) -> None:
    """Regression: a lesion outside the breast mask or the crop gave a blank 'lesion' patch."""
    # Prepare: one breast (chest wall left) with four lesions: well inside, at the breast edge,
    # in the crop rectangle's corner but outside the breast mask (zeroed by the reader), and
    # beyond the crop (mapped to an empty box)
    boxes = {
        "inside": [10, 50, 22, 62],
        "edge": [50, 56, 60, 66],
        "corner": [40, 8, 52, 20],
        "beyond": [80, 100, 92, 112],
    }
    path = make_dicom(breast(128, 96), name="edge.dcm")
    lesions = [{"kind": k, "shape": "oval", "malignant": True, "box": b} for k, b in boxes.items()]
    manifest = pd.DataFrame(
        [
            {
                "image_id": "e",
                "patient_id": "p",
                "path": str(path),
                "lesions": encode_lesions(lesions),
            }
        ]
    )
    # Execute
    with caplog.at_level(logging.WARNING, logger="fedmammo.data.cache"):
        cache = ImageCache.build(manifest, tmp_path / "cache", size=(64, 48))
    # Assert: kept boxes have positive size inside the stored breast, within the mapped box;
    # the other two keep their record with box None and a reason; the drop is logged
    image, geometry = cache.get("e"), cache.geometry("e")
    got = {les["kind"]: les for les in cache.boxes("e")}
    assert got["corner"]["box"] is None and got["beyond"]["box"] is None
    assert "outside the stored breast" in got["corner"]["dropped"]
    assert any("dropped 2 lesion boxes" in r.message for r in caplog.records)
    for kind in ("inside", "edge"):
        x0, y0, x1, y1 = got[kind]["box"]
        mapped = geometry.map_box(boxes[kind])
        assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
        assert mapped[0] <= x0 and mapped[1] <= y0 and x1 <= mapped[2] and y1 <= mapped[3]
        region = image[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
        assert np.mean(region > 0) >= 0.5 and region.mean() > 0.05  # not background
    assert "dropped" not in got["inside"]


def test_cache_of_the_previous_format_is_rebuilt(tmp_path, centre, monkeypatch) -> None:
    # Prepare: a cache written under format 1 (boxes not yet cut to the stored breast)
    with monkeypatch.context() as m:
        m.setattr(cache_mod, "CACHE_FORMAT", "1")
        ImageCache.build(centre, tmp_path / "cache", size=SIZE)
    calls: list[str] = []
    real = cache_mod.load_mammogram
    monkeypatch.setattr(
        cache_mod, "load_mammogram", lambda p, *a, **k: calls.append(p) or real(p, *a, **k)
    )
    # Execute
    ImageCache.build(centre, tmp_path / "cache", size=SIZE)
    # Assert: the current format's fingerprint differs, so every image was read again
    assert cache_mod.CACHE_FORMAT != "1" and len(calls) == len(centre)


def _cut(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


#: A cache file damaged as a full disk leaves it (before files were written whole): emptied
#: or cut; the fingerprint also as JSON of the wrong kind and as bytes that are not text.
DAMAGE = {
    "empty fp.json": lambda d: (d / "fp.json").write_text(""),
    "fp.json not a fingerprint": lambda d: (d / "fp.json").write_text("[1]"),
    "fp.json not text": lambda d: (d / "fp.json").write_bytes(b"\xff\xfe{"),
    "index.json cut": lambda d: _cut(d / "index.json", 0.5),
    "empty manifest.csv": lambda d: (d / "manifest.csv").write_text(""),
    "manifest.csv cut at a line end": lambda d: (d / "manifest.csv").write_text(
        "".join((d / "manifest.csv").read_text().splitlines(keepends=True)[:3])
    ),
    "images.npy cut": lambda d: _cut(d / "images.npy", 0.5),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cache_is_rebuilt_with_the_same_images(
    tmp_path, centre, monkeypatch, caplog, damage
) -> None:
    """Regression (audit 13 F1): a full disk during a build left an empty fp.json, and every
    later build crashed with a bare JSONDecodeError; so did a cut index.json, manifest.csv
    or images.npy."""
    # Prepare: a clean cache, then one of its files damaged
    clean = ImageCache.build(centre, tmp_path / "clean", size=SIZE)
    ImageCache.build(centre, tmp_path / "cache", size=SIZE)
    DAMAGE[damage](tmp_path / "cache")
    calls: list[str] = []
    real = cache_mod.load_mammogram
    monkeypatch.setattr(
        cache_mod, "load_mammogram", lambda p, *a, **k: calls.append(p) or real(p, *a, **k)
    )
    # Execute
    with caplog.at_level(logging.WARNING, logger="fedmammo.data.cache"):
        rebuilt = ImageCache.build(centre, tmp_path / "cache", size=SIZE)
    # Assert: every image read again, the same cache as a clean build, the damage logged
    # naming the file; the next build reuses it
    assert len(calls) == len(centre)
    assert np.array_equal(rebuilt.array, clean.array)
    assert np.array_equal(ImageCache.open(tmp_path / "cache").array, clean.array)
    assert rebuilt.skipped == clean.skipped and rebuilt.boxes("ok0") == clean.boxes("ok0")
    damaged = damage.split()[-1] if damage.startswith("empty") else damage.split()[0]
    assert any(
        str(tmp_path / "cache" / damaged) in r.getMessage() and "rebuilding" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    calls.clear()
    ImageCache.build(centre, tmp_path / "cache", size=SIZE)
    assert calls == []


@pytest.mark.parametrize("name", ["index.json", "manifest.csv", "images.npy"])
def test_open_names_a_damaged_cache_file_and_the_fix(tmp_path, centre, name) -> None:
    # Prepare
    ImageCache.build(centre, tmp_path / "cache", size=SIZE)
    _cut(tmp_path / "cache" / name, 0.5)
    # Execute / Assert: one DataError naming the file, the folder and what to do
    with pytest.raises(DataError) as err:
        ImageCache.open(tmp_path / "cache")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'cache' / name}: ")
    assert f"the image cache {tmp_path / 'cache'} is damaged; delete that folder" in message


def test_a_cache_that_does_not_fit_on_the_disk_is_a_clean_error(tmp_path, centre, monkeypatch):
    """Regression (audit 13 F3): writing the sparse memory map on a full disk killed the
    process with SIGBUS (exit 135, no message); the space is reserved first now."""
    # Prepare: a file system with no room for the array
    import errno

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache_mod.os, "posix_fallocate", full)
    # Execute
    with pytest.raises(OSError) as err:
        ImageCache.build(centre, tmp_path / "cache", size=SIZE)
    # Assert: ENOSPC naming the partial file and the space needed; nothing left that holds
    # disk space or looks like a cache
    partial = tmp_path / "cache" / "images.npy.partial"
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(partial)
    assert "No space left on device (the image cache needs 12 KB here)" in str(err.value)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == []
    # once there is room, the build works
    monkeypatch.undo()
    assert len(ImageCache.build(centre, tmp_path / "cache", size=SIZE)) == 5


def test_the_space_of_the_cache_is_reserved(tmp_path, centre, monkeypatch) -> None:
    # Prepare
    reserved: list[int] = []
    real = os.posix_fallocate
    monkeypatch.setattr(
        cache_mod.os, "posix_fallocate", lambda fd, o, n: reserved.append(n) or real(fd, o, n)
    )
    # Execute: 8 rows reserved, 5 kept (the copy without the skipped rows is reserved too)
    cache = ImageCache.build(centre, tmp_path / "cache", size=SIZE)
    # Assert
    row = SIZE[0] * SIZE[1] * 2
    assert [n // row for n in reserved] == [8, 5] and len(cache) == 5
    assert (tmp_path / "cache" / "images.npy").stat().st_size == reserved[-1]
