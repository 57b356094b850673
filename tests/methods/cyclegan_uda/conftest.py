"""One tiny in-process CycleGAN-UDA run shared by this folder's tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.flower_messages import run_tiny_in_process

TINY = Path(__file__).resolve().parent / "tiny.yaml"


@pytest.fixture(scope="session")
def cyclegan_calls() -> list[dict]:
    """Every CycleGAN a target centre trained in :func:`tiny_run`, in order: its domains
    (``own``: A, ``source_style``: B), the tiles it sampled from the received generator and
    the trained ``result``."""
    return []


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cyclegan_calls):
    """results.json, the grid and the run folder of one in-process run of the tiny scenario."""
    import torch

    from fedmammo.methods.cyclegan_uda import client

    sampled = []

    def sample_generator(*args, **kwargs):  # the real one, remembering its tiles
        sampled.append(real_sample(*args, **kwargs))
        return sampled[-1]

    def train_cyclegan(domain_a, domain_b, **kwargs):  # the real one, remembering its domains
        result = real_train(domain_a, domain_b, **kwargs)
        cyclegan_calls.append(
            {"own": domain_a, "source_style": domain_b, "sampled": sampled[-1], "result": result}
        )
        return result

    real_sample, real_train = client.sample_generator, client.train_cyclegan
    tmp = tmp_path_factory.mktemp("uda")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            with pytest.MonkeyPatch.context() as spy:  # this run's calls only, not later tests'
                spy.setattr(client, "sample_generator", sample_generator)
                spy.setattr(client, "train_cyclegan", train_cyclegan)
                results, grid = run_tiny_in_process(TINY, tmp, mp, "cyclegan_uda")
            yield results, grid, tmp / "run"
    finally:
        torch.set_num_threads(threads)
