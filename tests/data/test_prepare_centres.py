"""Several centres prepared at once in worker processes: the same folders as one by one, the
first error raised naming its centre, and the number of workers bounded by cores, centres and
memory."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from fedmammo.config import CentreProfile
from fedmammo.data import cache_workers, prepare
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
    assert sorted(p.name for p in (tmp_path / "thumbs").iterdir()) == ["a.png", "b.png", "c.png"]
    # the workers' log records reached this process (the run log's handlers)
    generated = [r for r in caplog.records if r.getMessage().startswith("generating phantom")]
    assert sorted(r.getMessage().split()[3] for r in generated) == ["a", "b", "c"]
    assert os.getpid() not in {r.process for r in generated}


def test_a_failing_centre_raises_its_error_and_keeps_the_others(tmp_path):
    # Prepare: the second centre reads a dataset whose root does not exist
    jobs = _jobs(tmp_path)
    missing = CentreProfile.model_validate(
        {"name": "gone", "source": "G", "data": {"format": "dicom_folder", "root": "/nowhere"}}
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
