"""``secure_aggregation: true`` for the multi-task rounds: the federated (pre-)training rounds
of two centres run SecAgg+ (masked updates only); one-centre fine-tuning rounds stay plain."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from flwr.app import ArrayRecord
from helpers.flower_messages import InProcessGrid, in_process_identity

from fedmammo.config import load_scenario
from fedmammo.federation.runspec import ENV_VAR, RunSpec
from fedmammo.federation.secagg import MASKED_RECORD
from fedmammo.federation.server_app import run_scenario
from fedmammo.methods import METHODS
from fedmammo.methods.mtl_finetune.messages import TrainMtl

TINY = Path(__file__).resolve().parent / "tiny.yaml"


@pytest.mark.usefixtures("one_torch_thread")
def test_mtl_rounds_run_under_secure_aggregation(tmp_path, monkeypatch):
    # Prepare: the tiny scenario (single_task and mtl on a + b, fine-tuning at b alone)
    sets = {"data_dir": str(tmp_path / "data"), "strategy.params.secure_aggregation": True}
    scenario = load_scenario(TINY, sets=sets)
    spec = RunSpec(
        scenario_file=str(TINY),
        run_dir=str(tmp_path / "run"),
        sets=sets,
        node_order=scenario.centre_names(),
    )
    Path(spec.run_dir).mkdir()
    monkeypatch.setenv(ENV_VAR, str(spec.save()))
    method = METHODS["mtl_finetune"]
    # Execute
    with in_process_identity():
        grid = InProcessGrid(spec.node_order, strict=True)
        run_scenario(grid, dataclasses.replace(spec), method.run, method.report)
    # Assert
    results = json.loads((Path(spec.run_dir) / "results.json").read_text())
    assert results["failures"] == []
    train = [c for _, kind, c in grid.replies if kind == TrainMtl.KIND]
    masked = [c for c in train if MASKED_RECORD in c]
    assert len(masked) == 2 * 2  # two arms x two centres, one round each
    for content in masked:
        assert [k for k, v in content.items() if isinstance(v, ArrayRecord)] == [MASKED_RECORD]
    assert sum("arrays" in c for c in train) == 1  # the fine-tuning round at b alone
