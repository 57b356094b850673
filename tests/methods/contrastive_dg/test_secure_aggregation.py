"""``secure_aggregation: true`` for contrastive pre-training: the tiny scenario's two-centre
rounds (encoder + projection head) run SecAgg+, the server receives only masked vectors, and
the averaged encoder equals the plain run's within quantisation error (real ClientApp, its
mods, in process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from helpers.flower_messages import run_tiny_in_process

from fedmammo.federation.secagg import MASKED_RECORD
from fedmammo.methods.contrastive_dg.messages import TrainEncoder

TINY = Path(__file__).resolve().parent / "tiny.yaml"
C, Q = 8.0, 1 << 22  # SecAggParams defaults: clipping range, quantisation range


def _run(tmp_path: Path, monkeypatch, *, secure: bool):
    sets = {
        "strategy.params.arms": ["msvcl"],
        "strategy.params.embedding_arms": [],
        "strategy.params.tasks": ["density"],
        "strategy.params.secure_aggregation": secure,
    }
    results, grid = run_tiny_in_process(TINY, tmp_path, monkeypatch, "contrastive_dg", sets)
    assert results["failures"] == []
    state = torch.load(tmp_path / "run" / "checkpoints" / "msvcl" / "seed0_round001.pt")
    return grid, {k: v.numpy() for k, v in state.items() if v.is_floating_point()}


@pytest.mark.usefixtures("one_torch_thread")
def test_contrastive_rounds_run_under_secure_aggregation(tmp_path, monkeypatch):
    # Prepare / Execute: the same tiny pre-training, plain and under SecAgg+
    _, plain = _run(tmp_path / "plain", monkeypatch, secure=False)
    grid, secure = _run(tmp_path / "secure", monkeypatch, secure=True)
    # Assert: every train.encoder reply the server received is a SecAgg+ stage reply that
    # carries at most the masked uint32 vector (4 stages x 2 centres, one round) ...
    replies = [content for _, kind, content in grid.replies if kind == TrainEncoder.KIND]
    assert len(replies) == 4 * 2
    masked = [
        content[MASKED_RECORD]
        for content in replies
        if {k for k, v in content.items() if isinstance(v, ArrayRecord)} == {MASKED_RECORD}
    ]
    assert len(masked) == 2
    assert all(
        {k for k, v in c.items() if isinstance(v, ArrayRecord)} <= {MASKED_RECORD} for c in replies
    )
    # ... and the averaged encoder equals the plain average within the quantisation bound
    # (integer buffers, BatchNorm's counters, are not aggregated under SecAgg+)
    weights = [k for k in plain if not k.endswith("num_batches_tracked")]
    assert len(weights) > 20 and set(weights) <= set(secure)
    step = 2 * C / Q
    for key in weights:
        assert np.abs(secure[key] - plain[key]).max() <= 4 * step, key
