"""``secure_aggregation: true`` for periodic sampling's federated arms: every weighting is the
centre's own count (quota, images, labelled) or uniform, so each centre weighs its own update;
every federated round runs SecAgg+ and the server receives only masked updates."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ArrayRecord
from helpers.flower_messages import run_tiny_in_process

from fedmammo.config import load_scenario
from fedmammo.errors import ConfigError
from fedmammo.federation.secagg import MASKED_RECORD
from fedmammo.methods.periodic_sampling.messages import TrainPeriodic

TINY = Path(__file__).resolve().parent / "tiny.yaml"


def test_centre_counted_weightings_load_under_secure_aggregation_and_unknown_ones_do_not():
    sets = {
        "strategy.params.secure_aggregation": True,
        "strategy.params.periodic_weightings": ["quota", "num_images", "equal", "labelled"],
    }
    scenario = load_scenario(TINY, sets=sets)  # old names mapped to the new ones
    weightings = scenario.strategy.typed_params().periodic_weightings
    assert weightings == ["quota", "images", "uniform", "labelled"]
    sets["strategy.params.periodic_weightings"] = ["per_centre"]
    with pytest.raises(ConfigError, match="periodic_weightings"):
        load_scenario(TINY, sets=sets)


@pytest.mark.usefixtures("one_torch_thread")
def test_federated_arms_run_under_secure_aggregation(tmp_path, monkeypatch):
    # Prepare: the tiny scenario, federated setting only, quota weights for P. sampling
    sets = {
        "strategy.params.settings": ["federated"],
        "strategy.params.periodic_weightings": ["quota"],
        "strategy.params.secure_aggregation": True,
    }
    results, grid = run_tiny_in_process(TINY, tmp_path, monkeypatch, "periodic_sampling", sets)
    # Assert: no failures; every two-centre train reply carried the masked vector only
    assert results["failures"] == []
    train = [c for _, kind, c in grid.replies if kind == TrainPeriodic.KIND]
    masked = [c for c in train if MASKED_RECORD in c]
    assert masked, "no round ran under secure aggregation"
    for content in masked:
        assert [k for k, v in content.items() if isinstance(v, ArrayRecord)] == [MASKED_RECORD]
    stages = [c for c in train if "secaggplus_configs" in c]  # setup, share keys, unmask
    plain = [c for c in train if c not in masked and c not in stages]
    assert all("arrays" in c for c in plain)  # one-centre rounds (baselines) stay plain
    assert len(stages) == 3 * len(masked)
