"""What each training centre gains from federating: FedAvg compares, inside every training
centre, the federated model with that centre's local model on its test images (paired,
patient-level bootstrap), and at every centre with the pooled model; results.md tabulates
both."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, Message
from helpers.flower_messages import in_process_identity, run_tiny_in_process

from fedmammo.evaluation.results import RECORD_FIELDS
from fedmammo.federation.messages import ARRAYS
from fedmammo.federation.runspec import ENV_VAR
from fedmammo.methods.fedavg.messages import EvaluateClassifier
from fedmammo.methods.fedavg.report import gain_table

TINY = Path(__file__).resolve().parent / "tiny.yaml"
HALF_TEST = {"train": 0.4, "val": 0.1, "test": 0.5}


def _segments(patients: int) -> list[dict]:
    """Two vendors' segments of ``patients`` patients each, half of them with cancer."""
    return [
        {"manufacturer": m, "patients": patients, "prevalence": 0.5, "lesion_prevalence": 0.5}
        for m in ("Ma", "Mb")
    ]


# Every label known; 12 cancer and 12 other patients at a and b (6 and 6 in their test
# splits), 6 and 6 at the test-only t: enough for CIs (metrics.MIN_UNITS_PER_CLASS)
SETS = {
    "strategy.params.arms": ["federated", "local", "pooled"],
    "strategy.params.bootstrap": 50,
    **{f"centres.{c}.split": HALF_TEST for c in "ab"},
    **{f"centres.{c}.data.synthetic.segments": _segments(12) for c in "ab"},
    "centres.t.data.synthetic.segments": _segments(6),
    **{f"centres.{c}.labels.missing": {} for c in "abt"},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny FedAvg scenario (federated, local and pooled arms), in process, with its grid."""
    tmp = tmp_path_factory.mktemp("gain")
    with pytest.MonkeyPatch.context() as monkeypatch:
        results, grid = run_tiny_in_process(
            TINY, tmp, monkeypatch, "fedavg", SETS, with_pooled=True
        )
    return tmp / "run", results, grid


def _test_records(results: dict, arm: str, metric: str) -> dict:
    return {
        (r["centre"], r["segment"]): r
        for r in results["metrics"]
        if r["arm"] == arm and r["metric"] == metric and r["split"] == "test"
    }


def _estimate(record: dict) -> tuple:
    return record["value"], record["ci_low"], record["ci_high"]


@pytest.mark.usefixtures("one_torch_thread")
def test_every_training_centre_compares_federated_with_its_local_model(tiny_run):
    _, results, _ = tiny_run
    deltas = _test_records(results, "federated", "delta_auc")
    base = _test_records(results, "federated", "baseline_auc")
    p_values = _test_records(results, "federated", "p_value")
    # only the training centres (t trains nothing: it has no local arm), over all their test
    # images and per segment
    assert {c for c, _ in deltas} == {"a", "b"}
    for c in ("a", "b"):
        segments = {s for (centre, s) in _test_records(results, "federated", "auc") if centre == c}
        assert {s for (centre, s) in deltas if centre == c} == segments
        assert {s for (centre, s) in p_values if centre == c} == segments
    for c in ("a", "b"):
        fed = _test_records(results, "federated", "auc")[c, None]
        local = _test_records(results, f"local-{c}", "auc")[c, None]
        # the baseline is local-c on the same images and the same patient resamples: its AUROC
        # and CI repeat local-c's own test record exactly
        assert _estimate(base[c, None]) == _estimate(local)
        delta = deltas[c, None]
        assert delta["value"] == pytest.approx(fed["value"] - local["value"], abs=1e-12)
        assert delta["ci_low"] <= delta["ci_high"]
        assert delta["ci_high"] - delta["ci_low"] > 0  # 50 resamples of a few patients vary
        assert 0.0 <= p_values[c, None]["value"] <= 1.0
    assert results["failures"] == []


@pytest.mark.usefixtures("one_torch_thread")
def test_every_centre_compares_federated_with_the_pooled_model(tiny_run):
    _, results, _ = tiny_run
    deltas = _test_records(results, "federated", "delta_auc_vs_pooled")
    pooled_auc = _test_records(results, "federated", "pooled_auc")
    p_values = _test_records(results, "federated", "p_value_vs_pooled")
    # every centre, the test-only one too, over all its test images and per segment
    assert {c for c, _ in deltas} == {"a", "b", "t"}
    segments = set(_test_records(results, "federated", "auc"))
    assert set(deltas) == set(pooled_auc) == set(p_values) == segments
    for c in ("a", "b", "t"):
        fed = _test_records(results, "federated", "auc")[c, None]
        pooled = _test_records(results, "pooled", "auc")[c, None]
        # pooled_auc repeats the pooled arm's own test AUROC and CI at c
        assert _estimate(pooled_auc[c, None]) == _estimate(pooled)
        assert deltas[c, None]["value"] == pytest.approx(fed["value"] - pooled["value"], abs=1e-12)
        assert deltas[c, None]["ci_low"] <= deltas[c, None]["value"] <= deltas[c, None]["ci_high"]
    # the comparison with local-c keeps its own names: nothing of it was renamed
    assert {c for c, _ in _test_records(results, "federated", "delta_auc")} == {"a", "b"}


@pytest.mark.usefixtures("one_torch_thread")
def test_results_md_tabulates_each_centres_gain(tiny_run):
    run_dir, results, _ = tiny_run
    text = (run_dir / "results.md").read_text()
    assert "## What each centre gains from federating" in text
    # where p comes from and how to read it next to the CI, under both tables
    assert text.count("a difference is significant only when both hold") == 2
    assert text.count("The two-sided p-value is a paired permutation test's") == 2
    delta = _test_records(results, "federated", "delta_auc")
    local = _test_records(results, "local-a", "auc")["a", None]
    row = next(line for line in text.splitlines() if line.startswith("| a |"))
    d = delta["a", None]
    assert f"{local['value']:.3f} [{local['ci_low']:.3f}, {local['ci_high']:.3f}]" in row
    assert f"{d['value']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]" in row
    gains, pooled = text.split("## What each centre gains from federating")[1].split(
        "## Federated against pooled"
    )
    assert not any(line.startswith("| t |") for line in gains.splitlines())
    # the pooled table: a row per centre, the test-only t too, with its paired difference
    vs_pooled = _test_records(results, "federated", "delta_auc_vs_pooled")
    for c in ("a", "b", "t"):
        row = next(line for line in pooled.splitlines() if line.startswith(f"| {c} |"))
        d = vs_pooled[c, None]
        assert f"{d['value']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]" in row
    assert "| centre | pooled AUROC | federated AUROC | ΔAUROC | p-value |" in pooled
    # and report.html draws both as a forest plot
    assert 'alt="paired AUROC differences"' in (run_dir / "report.html").read_text()


@pytest.mark.usefixtures("one_torch_thread")
def test_a_comparison_without_the_baseline_weights_is_refused_by_name(tiny_run, monkeypatch):
    run_dir, _, grid = tiny_run
    monkeypatch.setenv(ENV_VAR, str(run_dir / "runspec.json"))
    # the run's own test evaluation at a, now naming a baseline arm but carrying no weights
    node, config = next(
        (n, cfg)
        for n, kind, cfg in grid.log
        if kind == EvaluateClassifier.KIND and grid.names[n] == "a" and cfg["split"] == "test"
    )
    m = dataclasses.replace(EvaluateClassifier.from_config(config), baseline="local-a")
    arrays = ArrayRecord(torch.load(run_dir / "checkpoints" / "federated" / "seed0_round002.pt"))
    grid.strict = False
    with in_process_identity():
        message = Message(m.content({ARRAYS: arrays}), dst_node_id=node, message_type=m.KIND)
        [reply] = grid.send_and_receive([message])
    assert reply.has_error()
    assert "names baseline arm local-a but carries no baseline record" in reply.error.reason


def test_with_several_seeds_each_centre_gets_its_mean_over_seeds():
    # Prepare: s1's gain in two seeds, the first CI above 0, the second holding it
    def rec(seed, metric, value, lo=None, hi=None):
        return {
            "arm": "federated", "seed": seed, "centre": "s1", "segment": None, "split": "test",
            "metric": metric, "value": value, "ci_low": lo, "ci_high": hi, "round": None,
        }  # fmt: skip

    records = [
        rec(0, "auc", 0.90, 0.85, 0.95), rec(0, "baseline_auc", 0.80, 0.70, 0.90),
        rec(0, "delta_auc", 0.10, 0.02, 0.18), rec(0, "p_value", 0.01),
        rec(1, "auc", 0.84, 0.78, 0.90), rec(1, "baseline_auc", 0.80, 0.71, 0.89),
        rec(1, "delta_auc", 0.04, -0.03, 0.11), rec(1, "p_value", 0.3),
    ]  # fmt: skip
    frame = pd.DataFrame(records, columns=list(RECORD_FIELDS))
    # Execute
    table = gain_table(frame)
    # Assert: a row per seed with its CI, then the mean (s.d.) and the seeds' CIs counted
    assert list(table.index) == ["s1 seed 0", "s1 seed 1", "s1, 2 seeds"]
    assert table.loc["s1 seed 0", "ΔAUROC"] == "0.100 [0.020, 0.180]"
    mean = table.loc["s1, 2 seeds"]
    assert mean["ΔAUROC"] == f"0.070 ({np.std([0.10, 0.04], ddof=1):.3f})"
    assert mean["federated AUROC"] == "0.870 (0.042)"
    assert mean["seeds with the CI above / below 0"] == "1 / 0 of 2"
    assert mean["p-value"] == ""
