"""Tests for fedmammo.data.cache_workers: parallel cache builds equal serial ones, crashes cost
one file, worker counts follow cores, images and memory."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedmammo.data import cache as cache_mod
from fedmammo.data import cache_workers
from fedmammo.data.cache import ImageCache
from fedmammo.data.dicom import load_mammogram
from fedmammo.data.manifest import encode_lesions

SIZE = (32, 24)


@pytest.fixture
def many(tmp_path: Path, make_dicom, breast) -> pd.DataFrame:
    """24 readable images (half right breasts, one lesion each) and 2 unreadable ones."""
    rows = []
    for i in range(24):
        path = make_dicom(breast(side="right" if i % 2 else "left", seed=i), name=f"im{i}.dcm")
        lesion = {"kind": "mass", "shape": "oval", "malignant": True, "box": [8, 20, 16, 28]}
        rows.append(
            {
                "image_id": f"im{i}",
                "patient_id": f"p{i}",
                "path": str(path),
                "lesions": encode_lesions([lesion]),
            }
        )
    text = tmp_path / "text.dcm"
    text.write_text("not DICOM")
    rows.insert(5, {"image_id": "text", "patient_id": "px", "path": str(text)})
    rows.insert(17, {"image_id": "gone", "patient_id": "px", "path": str(tmp_path / "no.dcm")})
    return pd.DataFrame(rows)


@pytest.fixture
def pool_for_tiny_files(monkeypatch) -> None:
    """Let a pool start for a few kilobytes of files (the tests' images are tiny)."""
    monkeypatch.setattr(cache_workers, "MIN_BYTES_PER_WORKER", dict.fromkeys(("fork", "spawn"), 1))


def _index(cache: ImageCache) -> dict:
    return json.loads((cache.cache_dir / "index.json").read_text())


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.usefixtures("pool_for_tiny_files")
def test_parallel_build_equals_the_serial_build(tmp_path, many, monkeypatch, method) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    # Prepare / Execute: one build in this process, one in two worker processes
    serial = ImageCache.build(many, tmp_path / "serial", size=SIZE, workers=1)
    monkeypatch.setattr(cache_workers, "START_METHOD", method)
    assert cache_workers.plan_workers(list(many["path"]), 2) == 2
    parallel = ImageCache.build(many, tmp_path / "parallel", size=SIZE, workers=2)
    # Assert: same pixels, geometry, boxes, order and skips
    np.testing.assert_array_equal(parallel.array, serial.array)
    assert _index(parallel) == _index(serial)
    assert list(parallel.manifest["image_id"]) == list(serial.manifest["image_id"])
    assert [i for i, _ in parallel.skipped] == ["text", "gone"]


def _dies_on_im7(path: str, size, *, return_geometry: bool):
    """A loader whose process dies on one file, as a crash in a native decoder would."""
    if path.endswith("im7.dcm"):
        os._exit(3)
    return load_mammogram(path, size, return_geometry=return_geometry)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
@pytest.mark.usefixtures("pool_for_tiny_files")
def test_a_worker_that_dies_costs_only_its_file(tmp_path, many, monkeypatch) -> None:
    # Prepare: the build's loader kills its worker process on im7 (never this one's)
    monkeypatch.setattr(cache_mod, "load_mammogram", _dies_on_im7)
    monkeypatch.setattr(cache_workers, "START_METHOD", "fork")
    assert cache_workers.plan_workers(list(many["path"]), 2) == 2
    # Execute
    cache = ImageCache.build(many, tmp_path / "cache", size=SIZE, workers=2)
    # Assert: im7 skipped naming the file and why; the 23 other readable images cached in order
    reasons = dict(cache.skipped)
    assert set(reasons) == {"text", "gone", "im7"}
    assert "im7.dcm" in reasons["im7"] and "worker process died" in reasons["im7"]
    assert list(cache.manifest["image_id"]) == [f"im{i}" for i in range(24) if i != 7]
    expected = load_mammogram(many.set_index("image_id").loc["im8", "path"], SIZE)
    np.testing.assert_allclose(cache.get("im8"), expected, atol=0.5 / 65535 + 1e-7)


def test_worker_count_follows_cores_images_and_memory(tmp_path, monkeypatch) -> None:
    # Prepare: 100 (sparse) files of 4 MB, 4 cores, forked workers
    paths = []
    for i in range(100):
        path = tmp_path / f"f{i}.dcm"
        with path.open("wb") as fh:
            fh.truncate(4 * 2**20)
        paths.append(str(path))
    monkeypatch.setattr(cache_workers, "cores", lambda: 4)
    monkeypatch.setattr(cache_workers, "available_memory", lambda: 64 * 2**30)
    monkeypatch.setattr(cache_workers, "START_METHOD", "fork")
    # Execute / Assert: one per core by default, an explicit count honoured
    assert cache_workers.plan_workers(paths, None) == 4
    assert cache_workers.plan_workers(paths, 3) == 3
    # ... at most one per 8 images and per 32 MB of files (128 MB when spawned), one when few
    assert cache_workers.plan_workers(paths[:20], None) == 2
    assert cache_workers.plan_workers(paths[:10], None) == 1
    monkeypatch.setattr(cache_workers, "START_METHOD", "spawn")
    assert cache_workers.plan_workers(paths, None) == 3
    monkeypatch.setattr(cache_workers, "START_METHOD", "fork")
    # ... and as many as half the available memory holds (16 B per pixel, 1.5 pixels per byte)
    per_worker = 16 * 1.5 * 4 * 2**20 + 64 * 2**20
    monkeypatch.setattr(cache_workers, "available_memory", lambda: int(2 * 2.5 * per_worker))
    assert cache_workers.plan_workers(paths, None) == 2
    monkeypatch.setattr(cache_workers, "available_memory", lambda: 10)
    assert cache_workers.plan_workers(paths, None) == 1


def test_fork_only_from_a_single_threaded_process(monkeypatch) -> None:
    methods = multiprocessing.get_all_start_methods()
    monkeypatch.setattr(cache_workers, "_single_threaded", lambda: False)
    assert cache_workers.start_method() in ("forkserver", "spawn")
    monkeypatch.setattr(cache_workers, "_single_threaded", lambda: True)
    fallback = "forkserver" if "forkserver" in methods else "spawn"
    assert cache_workers.start_method() == ("fork" if sys.platform == "linux" else fallback)
    monkeypatch.setattr(cache_workers, "START_METHOD", "spawn")
    assert cache_workers.start_method() == "spawn"
