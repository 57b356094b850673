"""Wall time of the test suite: a base revision's command against this checkout's, one run.

    python benchmarks/bench_tests.py --base-ref be6a92f \
        [--base-args "-q"] [--args "-q -n auto"] [--select "-m 'not slow'"]

The base revision is exported with ``git archive`` into a temporary folder and its suite run
there (``PYTHONPATH`` set to it, so it imports its own fedmammo; its slow tests start their
processes from it too), then this checkout's suite; each with ``python -m pytest`` and the
given arguments, one after the other on the same machine. Printed: wall time, CPU time of the
pytest process and the children it waited for (Ray's daemons are not waited for, so their
CPU is not counted), pytest's summary line, and the ratio after / before.

``--base-args``, ``--args`` and ``--select`` take the next word as their value even when it
starts with a dash (``--base-args "-q"``, ``--args -x``); ``--base-args=-q`` works too.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_federation import export  # noqa: E402  (the whole tree: tests, scenarios, docs)

REPO = Path(__file__).resolve().parents[1]


def run_suite(source: Path, args: list[str]) -> dict:
    """``python -m pytest ARGS`` in ``source``: wall and CPU seconds, pytest's last line."""
    Path("/tmp/ray/ray_current_cluster").unlink(missing_ok=True)  # a stale `ray start`
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(source)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider"],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = [line for line in out.stdout.strip().splitlines() if line.strip()]
    return {"wall": wall, "cpu": cpu, "summary": lines[-1].strip("= ") if lines else "no output"}


PYTEST_OPTIONS = ("--base-args", "--args", "--select")  # their values are pytest arguments


def glue(argv: list[str]) -> list[str]:
    """``argv`` with each ``--args VALUE`` (and ``--base-args``, ``--select``) written as
    ``--args=VALUE``, so that a value starting with a dash (``-q``) is not read as an option."""
    out, rest = [], iter(argv)
    for word in rest:
        value = next(rest, None) if word in PYTEST_OPTIONS else None
        out.append(word if value is None else f"{word}={value}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-ref", required=True, help="git revision to compare against")
    parser.add_argument("--base-args", default="-q", help="pytest arguments of the base run")
    parser.add_argument("--args", default="-q -n auto", help="pytest arguments of this checkout")
    parser.add_argument("--select", default="", help="added to both, e.g. \"-m 'not slow'\"")
    opts = parser.parse_args(glue(sys.argv[1:]))
    select = shlex.split(opts.select)
    with tempfile.TemporaryDirectory() as tmp:
        base_args = [*shlex.split(opts.base_args), *select]
        before = run_suite(export(opts.base_ref, Path(tmp)), base_args)
    after_args = [*shlex.split(opts.args), *select]
    after = run_suite(REPO, after_args)
    print(
        f"`{' '.join(['python', *map(shlex.quote, sys.argv)])}`: {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f} at the end\n"
    )
    print("| suite | command | wall | CPU (pytest + waited children) | result |")
    print("|---|---|---:|---:|---|")
    for name, args, r in (
        (f"before ({opts.base_ref})", base_args, before),
        ("after", after_args, after),
    ):
        command = " ".join(["python -m pytest", *map(shlex.quote, args)])
        print(f"| {name} | `{command}` | {r['wall']:.0f} s | {r['cpu']:.0f} s | {r['summary']} |")
    print(f"\nafter / before, wall: {after['wall'] / before['wall']:.2f}x")


if __name__ == "__main__":
    main()
