"""The suite's own thread setting (tests/helpers/threads.py, applied by conftest.py)."""

from __future__ import annotations

import os

import pytest
from helpers.threads import DEFAULTED, set_test_threads


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, {"OMP_NUM_THREADS": "2", DEFAULTED: "1"}),  # one process: two threads
        ({"OMP_NUM_THREADS": "3"}, {"OMP_NUM_THREADS": "3"}),  # chosen: kept
        ({"PYTEST_XDIST_WORKER": "gw0"}, {"OMP_NUM_THREADS": "1"}),
        # a worker inherits the controller's default: one thread, not the controller's two
        (
            {"PYTEST_XDIST_WORKER": "gw1", "OMP_NUM_THREADS": "2", DEFAULTED: "1"},
            {"OMP_NUM_THREADS": "1", DEFAULTED: "1"},
        ),
        # chosen by whoever started pytest: every worker keeps it
        ({"PYTEST_XDIST_WORKER": "gw1", "OMP_NUM_THREADS": "2"}, {"OMP_NUM_THREADS": "2"}),
    ],
)
def test_each_xdist_worker_gets_one_thread_unless_told_otherwise(given, expected):
    environ = dict(given)
    set_test_threads(environ)
    environ.pop("PYTEST_XDIST_WORKER", None)
    assert environ == expected


def test_this_process_follows_the_rule():
    import torch

    if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(DEFAULTED):
        assert os.environ["OMP_NUM_THREADS"] == "1"
    assert str(torch.get_num_threads()) == os.environ["OMP_NUM_THREADS"]
