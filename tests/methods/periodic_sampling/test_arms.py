"""Tests of fedmammo.methods.periodic_sampling.arms: identify counts and the arm plan."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fedmammo.errors import ConfigError
from fedmammo.methods.periodic_sampling import arms as periodic_arms
from fedmammo.methods.periodic_sampling.arms import plan_arms, rarest_label_counts
from fedmammo.methods.periodic_sampling.params import PeriodicSamplingParams

IDENTIFY = {
    "s1": {
        "n-images": 99,
        "n|train|S1-Ma|0": 40,
        "n|train|S1-Ma|1": 25,
        "n|val|S1-Ma|1": 7,
        "n|train|S1-Mb|0": 3,
        "n|train|S1-Mb|1": 9,
        "n|train|S1-Mb|na": 50,
    },
    "s2": {"n|train|S2-Ma|0": 200, "n|train|S2-Ma|1": 4, "n|train|S2-Mb|0": 180},
    "s3": {"n|test|S3-Ma|0": 80, "n|test|S3-Ma|1": 6},
}


def test_rarest_label_counts_take_the_minimum_over_labels_of_the_named_segments():
    # Execute
    counts = rarest_label_counts(IDENTIFY, ["S1-Ma", "S1-Mb", "S2-Ma", "S2-Mb", "S3-Ma"])
    # Assert: NA labels ignored, a one-label segment counts 0, test splits ignored
    assert counts == {"s1": {"S1-Ma": 25, "S1-Mb": 3}, "s2": {"S2-Ma": 4, "S2-Mb": 0}}
    assert rarest_label_counts(IDENTIFY, ["S2-Ma"]) == {"s2": {"S2-Ma": 4}}


def test_plan_arms_orders_baselines_first_and_expands_periodic_weightings():
    # Prepare
    params = PeriodicSamplingParams(
        experiments={"e1": ["S1-Ma", "S2-Ma"]}, baselines={"S1-Ma": ["S3-Ma"]}
    )
    # Execute
    arms, notes = plan_arms(params, IDENTIFY, pooled=True)
    # Assert
    names = [a.name for a in arms]
    assert names == [
        "baseline-S1-Ma",
        "e1-pooled-balanced_labels",
        "e1-pooled-balanced_segments",
        "e1-pooled-periodic",
        "e1-federated-balanced_labels",
        "e1-federated-balanced_segments",
        "e1-federated-periodic",
        "e1-federated-periodic-images",
        "e1-federated-periodic-uniform",
    ]
    by = {a.name: a for a in arms}
    assert by["baseline-S1-Ma"].centres == ["s1"] and by["baseline-S1-Ma"].segments == ["S1-Ma"]
    assert by["e1-pooled-periodic"].centres == ["pooled"]
    fed = by["e1-federated-periodic-images"]
    assert fed.centres == ["s1", "s2"] and fed.weighting == "images"
    assert fed.counts == {"s1": {"S1-Ma": 25}, "s2": {"S2-Ma": 4}}
    assert by["e1-federated-balanced_labels"].weighting == "labelled"
    assert notes == []
    # without a pooled node (deployment) the pooled arms are skipped with a note
    arms, notes = plan_arms(params, IDENTIFY, pooled=False)
    assert not any(a.setting == "pooled" for a in arms) and "pooled arms skipped" in notes[0]


def test_plan_arms_names_segments_that_no_centre_holds():
    params = PeriodicSamplingParams(
        experiments={"e1": ["S1-Ma", "S9-Mz"]}, baselines={"S1-Ma": ["S3-Ma"]}
    )
    with pytest.raises(ConfigError, match=r"experiments.e1: segments \['S9-Mz'\]"):
        plan_arms(params, IDENTIFY, pooled=True)


def test_plan_arms_lists_every_segment_the_training_centres_hold():
    # Prepare: none of the named segments is held
    params = PeriodicSamplingParams(experiments={"e1": ["S9-Mz"]}, baselines={})
    # Execute
    with pytest.raises(ConfigError) as info:
        plan_arms(params, IDENTIFY, pooled=True)
    # Assert: the held list shows what the recipe can name (train split, labelled), sorted;
    # not the (empty) intersection with the request, nor s3's test-only segment
    message = str(info.value)
    assert "\n" not in message
    assert "held: ['S1-Ma', 'S1-Mb', 'S2-Ma', 'S2-Mb']" in message
    assert "fix" in message


def test_arm_planning_does_not_import_flower():
    tree = ast.parse(Path(periodic_arms.__file__).read_text())
    modules = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m.split(".")[0] == "flwr" for m in modules)
