"""``secure_aggregation: true`` for the multi-task rounds: the federated (pre-)training rounds
of two centres run SecAgg+ (masked updates only); one-centre fine-tuning rounds stay plain."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ArrayRecord
from helpers.flower_messages import run_tiny_in_process

from fedmammo.federation.secagg import MASKED_RECORD
from fedmammo.methods.mtl_finetune.messages import TrainMtl

TINY = Path(__file__).resolve().parent / "tiny.yaml"


@pytest.mark.usefixtures("one_torch_thread")
def test_mtl_rounds_run_under_secure_aggregation(tmp_path, monkeypatch):
    # Prepare: the tiny scenario (single_task and mtl on a + b, fine-tuning at b alone)
    sets = {"strategy.params.secure_aggregation": True}
    results, grid = run_tiny_in_process(TINY, tmp_path, monkeypatch, "mtl_finetune", sets)
    # Assert
    assert results["failures"] == []
    train = [c for _, kind, c in grid.replies if kind == TrainMtl.KIND]
    masked = [c for c in train if MASKED_RECORD in c]
    assert len(masked) == 2 * 2  # two arms x two centres, one round each
    for content in masked:
        assert [k for k, v in content.items() if isinstance(v, ArrayRecord)] == [MASKED_RECORD]
    assert sum("arrays" in c for c in train) == 1  # the fine-tuning round at b alone
