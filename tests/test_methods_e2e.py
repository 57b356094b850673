"""Every registered method, end to end on tiny data: server phases, the real ClientApp's
handlers (behind the DP and egress guards), results.json and results.md.

A method is tested the day it is registered: its folder under tests/methods/<kind>/ must hold
a ``tiny.yaml`` scenario (the test fails, naming the file, until it does). Runs in process
(no Ray): :func:`fedmammo.federation.server_app.run_scenario` is what the ServerApp runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from helpers.flower_messages import in_process_identity

from fedmammo.config import load_scenario
from fedmammo.federation.runspec import ENV_VAR, POOLED, RunSpec
from fedmammo.federation.server_app import run_scenario
from fedmammo.methods import METHODS

TESTS = Path(__file__).resolve().parent


def _tiny(kind: str) -> Path:
    path = TESTS / "methods" / kind / "tiny.yaml"
    if not path.is_file():
        pytest.fail(f"method {kind!r} is registered but has no tiny scenario: write {path}")
    return path


def _node_order(scenario) -> list[str]:
    params = scenario.recipe.typed_params()
    return scenario.centre_names() + ([POOLED] if "pooled" in getattr(params, "arms", []) else [])


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("kind", sorted(METHODS))
def test_every_method_runs_end_to_end_on_tiny_data(kind, tmp_path, monkeypatch):
    from helpers.flower_messages import InProcessGrid

    # Prepare: the method's tiny scenario, its data under tmp_path
    sets = {"data_dir": str(tmp_path / "data")}
    scenario = load_scenario(_tiny(kind), sets=sets)
    spec = RunSpec(
        scenario_file=str(_tiny(kind)),
        run_dir=str(tmp_path / "run"),
        sets=sets,
        node_order=_node_order(scenario),
    )
    Path(spec.run_dir).mkdir()
    monkeypatch.setenv(ENV_VAR, str(spec.save()))
    method = METHODS[kind]

    # Execute: the server's whole run over the real ClientApp, in process
    with in_process_identity():
        grid = InProcessGrid(spec.node_order, strict=True)
        recorder = run_scenario(grid, dataclasses.replace(spec), method.run, method.report)

    # Assert: every centre answered, final test metrics are finite, nothing failed
    assert recorder.meta["kind"] == kind
    assert set(recorder.meta["centres"]) >= set(scenario.centre_names())
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["failures"] == []
    final = [r for r in results["metrics"] if r["split"] == "test" and r["round"] is None]
    assert final, f"{kind}: no final test metrics recorded"
    assert all(r["value"] is None or math.isfinite(r["value"]) for r in final)
    tested = {r["centre"] for r in final}
    assert tested & set(scenario.centre_names()), tested
    assert {kind for _, kind, _ in grid.log} <= set(method.message_types) | {
        "query.identify",
        "evaluate.audit",
    }
    summary = (tmp_path / "run" / "results.md").read_text()
    assert summary.startswith(f"# Results: {scenario.name}")
    report = (tmp_path / "run" / "report.html").read_text()
    assert report.startswith("<!DOCTYPE html>") and scenario.name in report
    assert results["meta"]["versions"]["flwr"].startswith("1.41")
