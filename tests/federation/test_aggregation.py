"""Robust aggregation (``strategy.params.aggregation: median | trimmed_mean``): the combined
update is the coordinate-wise median / trimmed mean of the centres' updates (a far-off update
does not move it), every centre counts once, results record the rule, and the rule is refused
where it cannot see the updates (secure aggregation)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from helpers.flower_messages import run_strategy_in_process
from rich.console import Console

from fedmammo.config import load_scenario
from fedmammo.errors import ConfigError
from fedmammo.evaluation.report import write_summary
from fedmammo.federation.aggregation import aggregate, rule_note, trimmed_per_end
from fedmammo.federation.rounds import CentreFedAvg
from fedmammo.federation.runspec import RunSpec
from fedmammo.methods import METHODS
from fedmammo.methods.fedavg.messages import TrainClassifier


def _reply(values: list[float], weight: float) -> RecordDict:
    return RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.asarray(values, dtype=np.float32))}),
            "metrics": MetricRecord({"agg-weight": weight}),
        }
    )


# five centres; the last sends an update far off in the first coordinate
_UPDATES = [[1.0, 5.0], [2.0, 4.0], [3.0, 3.0], [4.0, 2.0], [1000.0, 1.0]]


def _combine(rule: str, trim_fraction: float = 0.2) -> np.ndarray:
    replies = [_reply(v, w) for v, w in zip(_UPDATES, [1, 1, 1, 1, 6], strict=True)]
    return aggregate(replies, rule, weight_key="agg-weight", trim_fraction=trim_fraction)[
        "w"
    ].numpy()


def test_the_mean_is_fedavgs_weighted_mean():
    # weights 1, 1, 1, 1, 6 of 10
    np.testing.assert_allclose(_combine("mean"), [(1 + 2 + 3 + 4 + 6000) / 10, 2.0])


def test_the_median_ignores_the_weights_and_the_far_off_update():
    np.testing.assert_allclose(_combine("median"), [3.0, 3.0])


def test_the_trimmed_mean_drops_one_update_from_each_end_of_five_at_a_fifth():
    # 0.2 x 5 = 1 from each end: mean of 2, 3, 4 in both coordinates
    np.testing.assert_allclose(_combine("trimmed_mean", 0.2), [3.0, 3.0])
    # 0.1 x 5 = 0: the unweighted mean, outlier included
    np.testing.assert_allclose(_combine("trimmed_mean", 0.1), [1010 / 5, 3.0])


def test_a_robust_rule_refuses_replies_with_different_arrays():
    replies = [_reply([1.0], 1), RecordDict({"arrays": ArrayRecord(), "metrics": MetricRecord()})]
    with pytest.raises(ValueError, match="array 'w' is in 1 of 2 replies"):
        aggregate(replies, "median", weight_key="agg-weight")


@pytest.mark.parametrize(
    ("rule", "n", "fraction", "note"),
    [
        ("median", 2, 0.2, "median over 2 centres is their unweighted mean"),
        ("median", 3, 0.2, None),
        ("trimmed_mean", 4, 0.2, "drops one from each end from 5 centres"),
        ("trimmed_mean", 5, 0.2, None),
        ("trimmed_mean", 3, 0.34, None),
        ("mean", 2, 0.2, None),
    ],
)
def test_a_rule_that_is_the_plain_mean_for_so_few_centres_says_so(rule, n, fraction, note):
    got = rule_note(rule, n, fraction)
    assert (got is None) == (note is None)
    if note:
        assert note in got
    if rule == "trimmed_mean":
        assert (trimmed_per_end(n, fraction) == 0) == (note is not None)


def test_a_robust_rule_weighs_every_centre_once_whatever_the_weighting():
    strategy = CentreFedAvg(
        {"a": 1, "b": 2}, message=TrainClassifier, weighting="labelled", aggregation="median"
    )
    assert strategy.weighting == "uniform"
    alone = CentreFedAvg({"a": 1}, message=TrainClassifier, aggregation="median")
    assert (alone.aggregation, alone.weighting) == ("mean", "images")  # one centre: its mean
    with pytest.raises(ConfigError, match="aggregation 'mode': valid are mean, median"):
        CentreFedAvg({"a": 1}, message=TrainClassifier, aggregation="mode")


_SCENARIO = """
centres:
  - {profile: tiny, name: a, role: train, overrides: {source: S1}}
  - {profile: tiny, name: b, role: train, overrides: {source: S2}}
  - {profile: tiny, name: c, role: train, overrides: {source: S1}}
  - {profile: tiny, name: t, role: test, overrides: {source: S3}}
strategy: fedavg
strategy_overrides:
  params.rounds: 1
  params.arms: [federated, local]
  params.bootstrap: 0
  params.model.options: {width: 4, depth: 3, norm: batch}
  params.train.steps_per_epoch: 2
  params.aggregation: median
image_size: [32, 24]
"""


def test_scenario_with_secure_aggregation_and_a_median_is_refused_in_one_line(tmp_path):
    path = tmp_path / "median.yaml"
    path.write_text(_SCENARIO + "data_dir: data\n")
    with pytest.raises(ConfigError, match="needs every centre's update, and secure_aggregation"):
        load_scenario(path, sets={"strategy.params.secure_aggregation": True})


@pytest.mark.usefixtures("one_torch_thread")
def test_a_median_round_is_the_coordinate_median_of_the_three_centres_updates(tmp_path):
    # Prepare
    path = tmp_path / "median.yaml"
    path.write_text(_SCENARIO)
    sets = {"data_dir": str(tmp_path / "data")}
    scenario = load_scenario(path, sets=sets)
    spec = RunSpec(scenario_file=str(path), run_dir=str(tmp_path / "run"), sets=sets)
    # Execute
    orc, grid = run_strategy_in_process(spec, scenario, METHODS["fedavg"].run, strict=True)
    # Assert: the federated round's model is the median of a, b and c's updates (float arrays)
    sent = [(grid.names[n], cfg["arm"]) for n, k, cfg in grid.log if k == "train.classifier"]
    got = [(c, content) for c, k, content in grid.replies if k == "train.classifier"]
    updates = [content["arrays"] for (_, arm), (_, content) in zip(sent, got) if arm == "federated"]
    assert len(updates) == 3
    model = orc.load_checkpoint("federated", 0, 1)
    far_from_mean = False
    for key in model.keys():
        stack = np.stack([u[key].numpy() for u in updates])
        if not np.issubdtype(stack.dtype, np.floating):
            continue
        np.testing.assert_allclose(model[key].numpy(), np.median(stack, axis=0), err_msg=key)
        far_from_mean |= not np.allclose(np.median(stack, axis=0), stack.mean(axis=0))
    assert far_from_mean  # the test can tell a median from a mean
    results = json.loads((Path(tmp_path) / "run" / "results.json").read_text())
    assert results["meta"]["aggregation"] == {"federated": "median"}  # local arms: their own
    assert results["meta"]["weighting"]["federated"] == "uniform"
    assert not [r for r in results["metrics"] if r["metric"] == "fedavg_share"]
    report = write_summary(orc.recorder, Console(file=io.StringIO()))
    assert "by a robust rule" in report and "federated: median." in report
