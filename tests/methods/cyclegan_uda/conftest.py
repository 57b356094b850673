"""One tiny in-process CycleGAN-UDA run shared by this folder's tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.flower_messages import run_tiny_in_process

TINY = Path(__file__).resolve().parent / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """results.json, the grid and the run folder of one in-process run of the tiny scenario."""
    import torch

    tmp = tmp_path_factory.mktemp("uda")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            results, grid = run_tiny_in_process(TINY, tmp, mp, "cyclegan_uda")
            yield results, grid, tmp / "run"
    finally:
        torch.set_num_threads(threads)
