"""CycleGAN-UDA (paper 004): the plan, a tiny in-process run of every arm in both directions,
and one-line errors for bad recipe values."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmammo.config import load_scenario
from fedmammo.errors import ConfigError
from fedmammo.methods import get_method

TINY = Path(__file__).resolve().parent / "tiny.yaml"
ROOT = Path(__file__).resolve().parents[3]
ARMS = [
    "source_only-alexnet",
    "in_domain-alexnet",
    "uda-alexnet",
    "source_only-resnet50",
    "in_domain-resnet50",
    "uda-resnet50",
]


def _plan(path: Path, **sets):
    scenario = load_scenario(path, sets={"data_dir": "/tmp/unused", **sets})
    method = get_method("cyclegan_uda")
    return method.plan(scenario, scenario.recipe.typed_params())


def test_plan_lists_the_six_arms_after_both_translators():
    # Prepare / Execute
    rows = _plan(ROOT / "scenarios" / "cyclegan_uda.yaml")
    seed0 = [r for r in rows if r.seed == 0]
    # Assert: translators first (one per direction, trained at the target), then the arms
    assert [r.arm for r in seed0] == [
        "tile_gan-film",
        "translator-film_to_digital",
        "tile_gan-digital",
        "translator-digital_to_film",
        *ARMS,
    ]
    by_arm = {r.arm: r for r in seed0}
    assert by_arm["translator-film_to_digital"].centres == ("digital",)
    assert by_arm["tile_gan-film"].messages == (("train.uda_tile_generator", ("film",)),)
    assert dict(by_arm["uda-alexnet"].messages) == {
        "train.uda_classifier": ("film", "digital"),
        "evaluate.uda_classifier": ("digital", "film"),
    }
    assert dict(by_arm["in_domain-resnet50"].messages)["train.uda_classifier"] == (
        "digital",
        "film",
    )
    assert by_arm["uda-resnet50"].model["name"] == "resnet50"
    assert {r.seed for r in rows} == {0, 1, 2}


def test_one_direction_without_uda_needs_no_translator():
    rows = _plan(
        TINY,
        **{
            "strategy.params.directions": ["digital_to_film"],
            "strategy.params.arms": ["source_only", "in_domain"],
        },
    )
    assert [r.arm for r in rows] == [a for a in ARMS if not a.startswith("uda")]
    assert all(dict(r.messages)["evaluate.uda_classifier"] == ("film",) for r in rows)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("strategy.params.arms", ["source_only", "fine_tuned"], r"params\.arms\.1.*'uda'"),
        ("strategy.params.film", "ddsm", r"params\.film names centre 'ddsm'.*fix:"),
        ("strategy.params.tiles.tile_size", 12, r"tile_size must be a power of two"),
        ("strategy.params.digital", "film", r"film and digital must be two centres"),
        ("strategy.params.models", {"alex-net": {"name": "alexnet"}}, r"model keys name arms"),
    ],
)
def test_bad_recipe_values_fail_in_one_line(key, value, match):
    with pytest.raises(ConfigError, match=match) as err:
        _plan(TINY, **{key: value})
    assert "\n" not in str(err.value)


def test_every_arm_has_a_test_auroc_with_ci_at_each_target_centre(tiny_run):
    # Prepare
    results, _, _ = tiny_run
    final = {
        (r["arm"], r["centre"]): r
        for r in results["metrics"]
        if r["split"] == "test"
        and r["round"] is None
        and r["metric"] == "auc"
        and r["segment"] is None
    }
    # Assert: six arms, each tested at both target centres (digital: film -> digital)
    assert results["failures"] == []
    assert set(final) == {(a, c) for a in ARMS for c in ("film", "digital")}
    tested = [r for r in results["metrics"] if r["split"] == "test"]
    assert {r["segment"] for r in tested} == {None}  # one record per centre, not per segment
    for record in final.values():
        assert 0.0 <= record["value"] <= 1.0
        assert record["ci_low"] <= record["value"] <= record["ci_high"]
    assert results["meta"]["kind"] == "cyclegan_uda"
    assert all(results["progress"][f"{a}|0"]["done"] for a in ARMS)


def test_uda_arms_train_on_translated_images_and_the_others_do_not(tiny_run):
    # Prepare
    results, _, _ = tiny_run
    train = {
        (r["arm"], r["centre"], r["metric"]): r["value"]
        for r in results["metrics"]
        if r["split"] == "train"
    }
    # Assert: uda trains at the source on its images and as many translations
    for model in ("alexnet", "resnet50"):
        for source in ("film", "digital"):
            labelled = train[(f"uda-{model}", source, "n_labelled")]
            assert train[(f"uda-{model}", source, "n_translated")] == labelled > 0
            assert train[(f"source_only-{model}", source, "n_translated")] == 0
            assert train[(f"in_domain-{model}", source, "n_translated")] == 0


def test_results_md_has_the_papers_layout(tiny_run):
    _, _, run_dir = tiny_run
    summary = (run_dir / "results.md").read_text()
    assert "CycleGAN-UDA (paper 004)" in summary
    assert "| -> digital (tested at digital) |" in summary
    assert "| -> film (tested at film) |" in summary
    assert (run_dir / "translators" / "film_to_digital_seed0.pt").is_file()
    figures = sorted(p.name for p in (run_dir / "plots").glob("translated_*.png"))
    assert figures == ["translated_digital_to_film.png", "translated_film_to_digital.png"]


def test_uda_and_in_domain_are_compared_with_source_only_at_each_target(tiny_run):
    # Prepare
    results, _, run_dir = tiny_run
    test = {
        (r["arm"], r["centre"], r["metric"]): r
        for r in results["metrics"]
        if r["split"] == "test" and r["round"] is None
    }
    # Assert: per model and direction, the paired gain over source_only (same model), whose
    # baseline repeats source_only's own AUROC and CI (the same resamples)
    gains = {(a, c) for a, c, m in test if m == "delta_auc"}
    assert gains == {(a, c) for a in ARMS if "source_only" not in a for c in ("film", "digital")}
    for arm, centre in gains:
        alone = test[(f"source_only-{arm.split('-')[1]}", centre, "auc")]
        base = test[(arm, centre, "baseline_auc")]
        assert [base[k] for k in ("value", "ci_low", "ci_high")] == [
            alone[k] for k in ("value", "ci_low", "ci_high")
        ]
        delta = test[(arm, centre, "delta_auc")]
        assert delta["value"] == pytest.approx(
            test[(arm, centre, "auc")]["value"] - alone["value"], abs=1e-12
        )
        assert 0.0 <= test[(arm, centre, "p_value")]["value"] <= 1.0
    summary = (run_dir / "results.md").read_text()
    assert "## Gain over source_only: ΔAUROC [95 % CI] at the target centre" in summary
