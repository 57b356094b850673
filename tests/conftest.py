"""Shared pytest setup: deterministic, single-threaded torch for stable, fast tests.

Under pytest-xdist (README's ``-n auto``) each worker gets one torch thread (the workers share
the cores) and runs whole test files (``--dist loadfile``), so that a module-scoped fixture
(a quick scenario's run) is made once. Slow tests of different files may run at the same
time: each starts its own Ray instance or Flower processes on free ports. (``loadgroup``
would group finer, but pytest-xdist 3.8 cannot tag test ids under pytest 9.2.)
"""

from __future__ import annotations

import os

from helpers.threads import set_test_threads

set_test_threads(os.environ)  # before torch is imported
# never join a Ray cluster some earlier `ray start` left registered in /tmp/ray (flwr run)
os.environ.setdefault("RAY_ADDRESS", "local")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import fedmammo.methods  # noqa: E402,F401  (registers the recipe kinds for load_scenario)
from fedmammo.data.prepare import PHANTOM_STORE_ENV  # noqa: E402


def _session_folder(tmp_path_factory) -> Path:
    """The pytest session's temporary folder, shared by its xdist workers."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture(scope="session", autouse=True)
def phantom_store(tmp_path_factory):
    """One phantom store for the session (``FEDMAMMO_PHANTOM_STORE``, also seen by the
    commands the tests start): a phantom centre that many tests prepare in their own data
    folders is generated once and copied after (the same bytes)."""
    store = _session_folder(tmp_path_factory) / "phantom_store"
    with pytest.MonkeyPatch.context() as session_env:  # restored when the session ends
        session_env.setenv(PHANTOM_STORE_ENV, str(store))
        yield store


@pytest.fixture(scope="session")
def fedavg_tiny_simulation(tmp_path_factory):
    """The run folder of ``python -m fedmammo.simulate scenarios/fedavg_tiny.yaml`` (default
    seed, Ray backend), made once per pytest session and shared by its xdist workers: the
    first worker to ask runs it under a file lock, the others wait and read the same folder
    (the reference the deployment tests compare with; read only)."""
    from filelock import FileLock
    from helpers.run_helpers import REPO, run_cli

    out = _session_folder(tmp_path_factory) / "fedavg_tiny_simulation"
    made = out / "run_dir.txt"
    with FileLock(f"{out}.lock"):
        if not made.is_file():
            out.mkdir(exist_ok=True)
            proc, run_dir = run_cli([str(REPO / "scenarios" / "fedavg_tiny.yaml")], out=out)
            assert proc.returncode == 0 and run_dir is not None, (
                proc.stdout[-2000:] + proc.stderr[-2000:]
            )
            made.write_text(str(run_dir))
    return Path(made.read_text())


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: Opacus' many small per-example ops crawl when two
    threads contend on 2 busy cores (use with ``pytest.mark.usefixtures``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
