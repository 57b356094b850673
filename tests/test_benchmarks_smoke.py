"""Smoke test of the benchmark scripts: each one starts and parses its arguments.

Nothing in CI runs the benchmarks, so a script that no longer imports (or whose argparse
setup breaks) went unnoticed until someone ran it. Every ``benchmarks/*.py --help`` runs as
``__main__`` (``runpy``) in one interpreter, so torch and Flower are imported once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))

_DRIVER = """
import contextlib, io, json, runpy, sys
out = {}
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    text = io.StringIO()
    code = None
    try:
        with contextlib.redirect_stdout(text):
            runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:  # a script that no longer imports
        code = f"{type(exc).__name__}: {exc}"
    out[path] = {"code": code, "stdout": text.getvalue()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, dict]:
    """Every script's ``--help``: its exit code and what it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, *map(str, SCRIPTS)],
        cwd=BENCHMARKS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.splitlines()[-1])
    return {Path(k).name: v for k, v in runs.items()}


def test_there_are_benchmarks() -> None:
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("name", [s.name for s in SCRIPTS])
def test_help_runs_and_names_the_script(helps: dict, name: str) -> None:
    done = helps[name]
    assert done["code"] in (0, None), done["code"]
    assert f"usage: {name}" in done["stdout"]


def test_bench_federation_run_returns_named_fields() -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_federation_smoke", BENCHMARKS / "bench_federation.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.Run._fields == ("wall", "run_dir", "memory", "started")
    assert module.run.__annotations__["return"] in ("Run", module.Run)
