"""A private Ray started while the run prepares its data (``ray_cluster.private_ray``), and
torch's threads in a worker that imported torch before Ray set ``OMP_NUM_THREADS``
(``client_app.torch_threads_mod``). The whole path (a simulation on this private Ray, its
results equal to the in-process run's) is tests/federation/test_inprocess.py's last test.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from fedmammo.federation.client_app import torch_threads_mod
from fedmammo.federation.ray_cluster import PRESTART_ENV, private_ray
from fedmammo.federation.runspec import ENV_VAR, RunSpec


@pytest.fixture
def clean_environment(monkeypatch):
    """PYTHONPATH, Ray's prestart settings and the SIGTERM handler restored after the test."""
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    for name in PRESTART_ENV:
        monkeypatch.delenv(name, raising=False)
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def test_a_failed_start_is_raised_by_wait_and_leaves_no_ray_settings_behind(clean_environment):
    paths = list(sys.path)  # (importing Ray adds its own)
    with private_ray({"not_a_ray_option": 1}, prestart=True) as wait:
        # the raylet would read these when it starts, with sys.path for the workers
        assert os.environ["RAY_preload_python_modules"] == "fedmammo.apps"
        assert os.environ["RAY_enable_worker_prestart"] == "1"
        assert set(paths) <= set(os.environ["PYTHONPATH"].split(os.pathsep))
        with pytest.raises(RuntimeError, match="Unknown keyword argument.*not_a_ray_option"):
            wait()
        assert not set(PRESTART_ENV) & set(os.environ)
    assert not set(PRESTART_ENV) & set(os.environ)


def test_sigterm_exits_through_cleanup_as_under_ray_started_in_the_main_thread(
    clean_environment,
):
    with private_ray({"not_a_ray_option": 1}, prestart=False) as wait:
        with pytest.raises(RuntimeError):
            wait()
        with pytest.raises(SystemExit) as exited:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs in the main thread before this returns
    assert exited.value.code == signal.SIGTERM


def _started(pid: int) -> float:
    """When process ``pid`` started, in seconds since boot (/proc/PID/stat, field 22)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return ticks / os.sysconf("SC_CLK_TCK")


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


@pytest.mark.slow
def test_actors_are_given_workers_started_with_ray_that_imported_the_apps(clean_environment):
    import ray

    init_args = {"num_cpus": 2, "address": "local", "include_dashboard": False}
    with private_ray(init_args, prestart=True) as wait:
        wait()
        assert not set(PRESTART_ENV) & set(os.environ)  # read by the raylet, gone from here
        asked = _uptime()

        @ray.remote(num_cpus=1)
        class Probe:
            def __init__(self):
                self.imported_before = "fedmammo.apps" in sys.modules

            def report(self):
                return self.imported_before, os.getpid()

        reports = ray.get([p.report.remote() for p in [Probe.remote(), Probe.remote()]])
        assert [imported for imported, _ in reports] == [True, True]
        # both workers were started with Ray, before the actors were asked for
        assert all(_started(pid) < asked for _, pid in reports), (reports, asked)
    assert not ray.is_initialized()


def test_torch_threads_follow_omp_num_threads_set_after_torch_was_imported(monkeypatch):
    before = torch.get_num_threads()
    seen: list[int] = []

    def handler(msg, ctx):
        seen.append(torch.get_num_threads())
        return f"reply to {msg}"

    monkeypatch.delenv(ENV_VAR, raising=False)  # no simulation's run spec: a real site
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as Ray sets it for a one-CPU actor
        assert torch_threads_mod("train", None, handler) == "reply to train"
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "one")  # not a count: left alone
        torch_threads_mod("train", None, handler)
        monkeypatch.delenv("OMP_NUM_THREADS")  # unset (a deployment's ClientApp): left alone
        torch_threads_mod("train", None, handler)
        assert seen == [1, 2, 2]
    finally:
        torch.set_num_threads(before)


def test_a_simulated_centre_takes_the_run_specs_threads_not_the_shells(monkeypatch, tmp_path):
    # Prepare: a run spec giving every centre 1 thread (client_resources.num_cpus 1), and a
    # shell with OMP_NUM_THREADS=2, which Ray passes to its actors as it finds it
    spec = RunSpec(scenario_file="s.yaml", run_dir=str(tmp_path), torch_threads=1)
    monkeypatch.setenv(ENV_VAR, str(spec.save()))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    before, seen = torch.get_num_threads(), []
    # Execute
    try:
        torch.set_num_threads(2)
        torch_threads_mod("train", None, lambda msg, ctx: seen.append(torch.get_num_threads()))
    finally:
        torch.set_num_threads(before)
    # Assert: the scenario's count (with the shell's, fedavg_quick's AUROCs moved by up to 0.31)
    assert seen == [1]
