"""Smoke test of the benchmark scripts: each one starts and parses its arguments.

Nothing in CI runs the benchmarks, so a script that no longer imports (or whose argparse
setup breaks) went unnoticed until someone ran it. Each ``benchmarks/*.py --help`` runs in its
own interpreter, several at a time (most import torch: 1-3 s each).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def _help(script: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=BENCHMARKS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess]:
    """Every script's ``--help``, run four at a time."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip([s.name for s in SCRIPTS], pool.map(_help, SCRIPTS), strict=True))


def test_there_are_benchmarks() -> None:
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("name", [s.name for s in SCRIPTS])
def test_help_runs_and_names_the_script(helps: dict, name: str) -> None:
    done = helps[name]
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"usage: {name}" in done.stdout


def test_bench_federation_run_returns_named_fields() -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_federation_smoke", BENCHMARKS / "bench_federation.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.Run._fields == ("wall", "run_dir", "memory", "started")
    assert module.run.__annotations__["return"] in ("Run", module.Run)
