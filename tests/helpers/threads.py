"""How many OpenMP (torch) threads the test processes use: one per pytest-xdist worker.

The workers share the cores and inherit the controller's environment, so the controller's
own default (two threads, for a run without xdist) is marked as a default: read as a
worker's value, two threads in each of two workers on 2 cores made OpenMP's waiting threads
spin (a DP GAN test: 0.7 s alone, 31 s of CPU beside the other worker). A number chosen by
whoever started pytest is kept.
"""

from __future__ import annotations

from collections.abc import MutableMapping

DEFAULTED = "FEDMAMMO_TESTS_OMP_DEFAULTED"


def set_test_threads(environ: MutableMapping[str, str]) -> None:
    """Set OMP_NUM_THREADS in ``environ`` for this test process (before torch is imported)."""
    if environ.get("PYTEST_XDIST_WORKER"):
        if environ.get(DEFAULTED) or "OMP_NUM_THREADS" not in environ:
            environ["OMP_NUM_THREADS"] = "1"
    elif "OMP_NUM_THREADS" not in environ:
        environ["OMP_NUM_THREADS"] = "2"
        environ[DEFAULTED] = "1"
