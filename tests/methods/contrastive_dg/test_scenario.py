"""scenarios/contrastive_dg.yaml splits vendors as the paper does; the plan refuses DP centres."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from fedmammo.config import load_scenario
from fedmammo.data.phantom_styles import STYLES
from fedmammo.errors import ConfigError
from fedmammo.methods.contrastive_dg.params import ARMS, ContrastiveDgParams
from fedmammo.methods.contrastive_dg.server import make_plan
from fedmammo.simulate import plan_run

ROOT = Path(__file__).resolve().parents[3]
SCENARIO = ROOT / "scenarios" / "contrastive_dg.yaml"


def _style(scenario, centre: str) -> str:
    (segment,) = scenario.resolved_profiles[centre].data.synthetic.segments
    return segment.style or segment.manufacturer.lower()


@pytest.mark.parametrize("quick", [False, True])
def test_three_seen_vendors_train_three_unseen_only_test_one_of_them_film(quick):
    # Execute
    scenario = load_scenario(SCENARIO, quick=quick)
    params = scenario.recipe.typed_params(quick=quick)
    # Assert
    seen = scenario.centre_names("train")
    unseen = scenario.centre_names("test")
    assert len(seen) == len(unseen) == 3
    styles = {c: _style(scenario, c) for c in seen + unseen}
    assert len(set(styles.values())) == 6 and set(styles.values()) <= set(STYLES)
    assert "film" in {styles[c] for c in unseen}
    assert isinstance(params, ContrastiveDgParams)
    assert {"random", "simclr", "msvcl", "pooled"} <= set(params.arms) <= set(ARMS)
    if quick:
        assert scenario.seeds == [0] and params.encoder.arch == "resnet_slim"
        assert len(params.fractions) < 5


def _orc(tmp_path, privacy: bool, **params):
    sets = {"data_dir": str(tmp_path)}
    if privacy:
        sets["centres.B.privacy.noise_multiplier"] = 1.0
    scenario = load_scenario(SCENARIO, sets=sets)
    roles = {c: scenario.entry(c).role for c in scenario.centre_names()}
    orc = SimpleNamespace(
        scenario=scenario,
        nodes={c: i for i, c in enumerate([*roles, "pooled"])},
        spec=SimpleNamespace(deployment=False),
        centres=lambda *r: [c for c, role in roles.items() if not r or role in r],
    )
    return orc, ContrastiveDgParams(**params)


def test_plan_tests_the_labelled_centres_models_on_the_unseen_vendors(tmp_path):
    # Execute
    orc, p = _orc(tmp_path, privacy=False)
    plan = make_plan(orc, p)
    # Assert
    assert plan.seen == plan.labelled == ["A", "B", "C"]
    assert plan.unseen == ["D", "E", "F"]
    assert plan.pooled and plan.arms == list(ARMS)


def test_plan_refuses_dp_centres_and_unknown_downstream_centres(tmp_path):
    # Execute / Assert
    orc, p = _orc(tmp_path, privacy=True)
    with pytest.raises(ConfigError, match=r"centres \['B'\] ask for DP.*cannot run under DP-SGD"):
        make_plan(orc, p)
    orc, p = _orc(tmp_path, privacy=False, downstream_centres=["D"])
    with pytest.raises(ConfigError, match="not training centres"):
        make_plan(orc, p)


@pytest.mark.parametrize(
    ("sets", "where"),
    [
        (
            {"centres.A.privacy.noise_multiplier": 1.1, "centres.C.privacy.target_epsilon": 8},
            "--set centres.A.privacy.noise_multiplier=1.1; --set centres.C.privacy."
            "target_epsilon=8: contrastive_dg: centres ['A', 'C'] ask for DP",
        ),
        (  # the whole overrides mapping of the scenario's entry, by index
            {"centres.1.overrides": {"privacy": {"noise_multiplier": 1.1}}},
            '--set centres.1.overrides={"privacy": {"noise_multiplier": 1.1}}: contrastive_dg: '
            "centres ['B'] ask for DP",
        ),
    ],
)
def test_a_dp_centre_is_refused_naming_the_override_that_made_it_one(sets, where):
    # Execute / Assert: the --set, not the scenario file
    with pytest.raises(ConfigError) as caught:
        plan_run(SCENARIO, sets=sets, quick=True)
    assert where in str(caught.value)


def test_plan_drops_pooled_without_a_pooled_node(tmp_path):
    # Prepare
    orc, p = _orc(tmp_path, privacy=False)
    del orc.nodes["pooled"]
    # Execute
    plan = make_plan(orc, p)
    # Assert
    assert "pooled" not in plan.arms and not plan.pooled
    assert any("pooled skipped" in n for n in plan.notes)
