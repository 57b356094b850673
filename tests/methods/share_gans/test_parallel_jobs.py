"""On Ray the study's jobs go out as many at a time as the engine runs (two generators of one
sharing centre, two arm runs of the receiver); the numbers are those of one at a time."""

from __future__ import annotations

import json
import os

import pytest
from helpers.run_helpers import REPO, comparable_metrics, results, run_cli

TINY = str(REPO / "tests" / "methods" / "share_gans" / "tiny.yaml")


@pytest.mark.slow
def test_jobs_in_parallel_on_ray_give_the_numbers_of_one_at_a_time(tmp_path):
    # Act: the tiny study on a private Ray instance, then with every centre in this process
    ray_proc, ray_dir = run_cli([TINY, "--backend", "ray"], out=tmp_path / "ray")
    assert ray_proc.returncode == 0, ray_proc.stdout[-2000:] + ray_proc.stderr[-2000:]
    one_proc, one_dir = run_cli([TINY, "--backend", "inprocess"], out=tmp_path / "one")
    assert one_proc.returncode == 0, one_proc.stdout[-2000:] + one_proc.stderr[-2000:]
    # Assert: Ray ran a job per core (each centre asks for one CPU), in process one at a time
    workers = [json.loads((d / "runspec.json").read_text())["workers"] for d in (ray_dir, one_dir)]
    assert workers == [os.cpu_count(), 1]
    # every generator quality figure and arm metric (with its CI) equal, in the same order
    ray_metrics, one_metrics = (comparable_metrics(results(d)) for d in (ray_dir, one_dir))
    assert len(ray_metrics) > 50
    assert ray_metrics == one_metrics
    assert list(ray_metrics) == list(one_metrics)
    assert results(ray_dir)["failures"] == results(one_dir)["failures"] == []
