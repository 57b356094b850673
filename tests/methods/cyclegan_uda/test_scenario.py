"""CycleGAN-UDA (paper 004): the plan, a tiny in-process run of every arm in both directions,
and one-line errors for bad recipe values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fedmammo.config import load_scenario
from fedmammo.data.prepare import materialise_centre
from fedmammo.errors import ConfigError
from fedmammo.evaluation.metrics import metrics_by_segment
from fedmammo.evaluation.results import RECORD_FIELDS
from fedmammo.methods import get_method
from fedmammo.methods.cyclegan_uda.params import same_domain_arm
from fedmammo.methods.cyclegan_uda.report import _directions_of, uda_table
from fedmammo.models import build_model
from fedmammo.training.classifier import predict_scores

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
SAME_DOMAIN = [same_domain_arm(a) for a in ARMS if not a.startswith("in_domain")]
BOTH = ("film", "digital")


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
    # one model per direction: each source model tested at its target and at its source
    assert by_arm["uda-alexnet"].note == (
        "trained at film, tested at digital (target) and film (source)\n"
        "trained at digital, tested at film (target) and digital (source)"
    )
    assert by_arm["in_domain-alexnet"].note == (
        "trained and tested at digital (the target of film -> digital)\n"
        "trained and tested at film (the target of digital -> film)"
    )


def test_one_direction_without_uda_needs_no_translator():
    rows = _plan(
        TINY,
        **{
            "strategy.params.directions": ["digital_to_film"],
            "strategy.params.arms": ["source_only", "in_domain"],
        },
    )
    assert [r.arm for r in rows] == [a for a in ARMS if not a.startswith("uda")]
    evaluated = {r.arm: dict(r.messages)["evaluate.uda_classifier"] for r in rows}
    notes = {r.arm: r.note for r in rows}
    # source_only is tested at its target and its own source, in_domain at the target only
    assert evaluated["source_only-alexnet"] == ("film", "digital")
    assert evaluated["in_domain-resnet50"] == ("film",)
    assert notes["source_only-alexnet"] == (
        "trained at digital, tested at film (target) and digital (source)"
    )
    assert notes["in_domain-alexnet"] == (
        "trained and tested at film (the target of digital -> film)"
    )


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
    # Assert: six arms, each tested at both target centres (digital: film -> digital), and
    # the four source models (source_only, uda) at their own source centre as well (in_domain,
    # trained at the target, has no same-domain record)
    assert results["failures"] == []
    assert set(final) == {(a, c) for a in ARMS + SAME_DOMAIN for c in BOTH}
    tested = [r for r in results["metrics"] if r["split"] == "test"]
    assert {r["segment"] for r in tested} == {None}  # one record per centre, not per segment
    for record in final.values():
        assert 0.0 <= record["value"] <= 1.0
        assert record["ci_low"] <= record["value"] <= record["ci_high"]
    assert results["meta"]["kind"] == "cyclegan_uda"
    assert all(results["progress"][f"{a}|0"]["done"] for a in ARMS + SAME_DOMAIN)


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
            # optimiser steps recorded: here train.steps_per_epoch fixes them (1 epoch of 2);
            # unset (the shipped recipe), uda's twice the images give it twice the steps
            for arm in ("uda", "source_only", "in_domain"):
                assert train[(f"{arm}-{model}", source, "train_steps")] == 2


def test_results_md_has_the_papers_layout(tiny_run):
    _, _, run_dir = tiny_run
    summary = (run_dir / "results.md").read_text()
    assert "CycleGAN-UDA (paper 004)" in summary
    table = summary.split("## CycleGAN-UDA")[1].split("## Gain")[0]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert rows == [
        "trained -> tested",
        "film -> digital (target)",
        "film -> film (source)",
        "digital -> film (target)",
        "digital -> digital (source)",
    ]
    same = next(line for line in summary.splitlines() if "| film -> film (source) |" in line)
    cells = [c.strip() for c in same.split("|")[2:-1]]  # 6 arm columns, in_domain's empty
    assert len(cells) == 6 and [c == "" for c in cells] == [False, True, False] * 2
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
    # baseline repeats source_only's own AUROC and CI (the same resamples); at the target for
    # uda and in_domain, at the source (same domain) for uda
    gains = {(a, c) for a, c, m in test if m == "delta_auc"}
    compared = [a for a in ARMS + SAME_DOMAIN if "source_only" not in a]
    assert gains == {(a, c) for a in compared for c in BOTH}
    for arm, centre in gains:
        base = f"source_only-{arm.split('-')[1]}"
        alone = test[(same_domain_arm(base) if arm in SAME_DOMAIN else base, centre, "auc")]
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
    assert "## Gain over source_only: ΔAUROC [95 % CI], p at the target and the source" in summary
    table = summary.split("## Gain over source_only")[1]
    assert "| film -> film (source) |" in table
    for arm, centre in gains:  # each gain with its p (the tables' rule needs both)
        assert f", p {test[(arm, centre, 'p_value')]['value']:.3f}" in table


def _test_images(run_dir: Path, centre: str):
    """``centre``'s test images, labels, segments and patients, prepared as the run did."""
    scenario = load_scenario(TINY, sets={"data_dir": str(run_dir.parent / "data")})
    data = materialise_centre(
        scenario.resolved_profiles[centre],
        scenario.data_dir,
        image_size=tuple(scenario.image_size),
        data_seed=scenario.data_seed,
    )
    rows = data.rows("test")
    return data.dataset(rows), data.labels(rows), data.segments(rows), data.patients(rows)


def _alexnet_scores(run_dir: Path, arm: str, target: str, dataset) -> np.ndarray:
    """Scores on ``dataset`` of ``arm``'s AlexNet of the direction into ``target`` (saved)."""
    model = build_model("alexnet", input_size=64, hidden=16)
    path = run_dir / "checkpoints" / f"{arm}@{target}" / "seed0_round000.pt"
    model.load_state_dict(torch.load(path, weights_only=True))
    return predict_scores(model, dataset)


def test_source_models_match_an_independent_auroc_at_the_source_and_the_target(tiny_run):
    # Prepare: both centres' test images; the film-trained AlexNets of film -> digital
    results, _, run_dir = tiny_run
    test = {
        (r["arm"], r["centre"], r["metric"]): r
        for r in results["metrics"]
        if r["split"] == "test" and r["round"] is None and r["segment"] is None
    }
    images = {c: _test_images(run_dir, c) for c in BOTH}
    auroc = {}
    for arm in ("source_only-alexnet", "uda-alexnet"):
        # Execute: sklearn's AUROC of the same classifier on each centre's test images, and
        # its CI over the centre's test patients
        for record, centre in ((arm, "digital"), (same_domain_arm(arm), "film")):
            dataset, y, segments, patients = images[centre]
            scores = _alexnet_scores(run_dir, arm, "digital", dataset)
            auroc[(arm, centre)] = roc_auc_score(y, scores)
            own = metrics_by_segment(y, scores, segments, groups=patients)
            ci = next(r for r in own if r["metric"] == "auc" and r["segment"] is None)
            # Assert
            got = test[(record, centre, "auc")]
            assert got["value"] == pytest.approx(auroc[(arm, centre)], abs=1e-9)
            assert (got["ci_low"], got["ci_high"]) == pytest.approx((ci["ci_low"], ci["ci_high"]))
    # Assert: the paired gain at the source is uda's AUROC minus source_only's, there
    gain = test[(same_domain_arm("uda-alexnet"), "film", "delta_auc")]["value"]
    expected = auroc[("uda-alexnet", "film")] - auroc[("source_only-alexnet", "film")]
    assert gain == pytest.approx(expected, abs=1e-9)


def test_table_puts_same_domain_records_in_their_own_rows():
    # Prepare: film -> digital only; records at digital (target) and film (source)
    def record(arm, centre, value):
        fields = {"arm": arm, "seed": 0, "centre": centre, "split": "test", "metric": "auc"}
        return dict.fromkeys(RECORD_FIELDS) | fields | {"value": value}

    frame = pd.DataFrame(
        [
            record("source_only-a", "digital", 0.6),
            record("in_domain-a", "digital", 0.9),
            record("uda-a", "digital", 0.7),
            record("source_only-a-same_domain", "film", 0.8),
            record("uda-a-same_domain", "film", 0.75),
        ]
    )
    # Execute
    table = uda_table(frame, [["film", "digital"]])
    # Assert
    assert list(table.columns) == ["source_only-a", "in_domain-a", "uda-a"]
    assert table.loc["film -> digital (target)"].tolist() == ["0.600", "0.900", "0.700"]
    assert table.loc["film -> film (source)"].tolist() == ["0.800", "", "0.750"]
    # a run folder from before the directions were kept: each test centre the other's target
    old = frame[~frame["arm"].str.endswith("same_domain")].assign(
        centre=["digital", "film", "digital"]
    )
    assert _directions_of(old) == [["film", "digital"], ["digital", "film"]]
    assert list(uda_table(frame, [["digital", "film"]]).index) == []  # no such direction ran
