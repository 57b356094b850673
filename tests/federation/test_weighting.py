"""Every averaging round weighs centres as the recipe says (``weighting: images | labelled |
quota | uniform``), from the counts each centre reports in its reply: for centres of unequal
size and unequal labelled share, the averaged model equals the hand-computed weighted mean of
the centres' updates (FedAvg, periodic sampling's federated arms, the MTL baseline), the
reply counts equal the centres' identify counts, and results.json records the weighting per
arm. Real ClientApp, in process (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.flower_messages import run_strategy_in_process

from fedmammo.config import load_scenario
from fedmammo.data.prepare import materialise_centre
from fedmammo.errors import ConfigError
from fedmammo.federation.runspec import RunSpec
from fedmammo.methods import METHODS

# a: the tiny centre; b: more patients per segment and most malignancy labels missing, so
# images, labelled images and uniform weights all differ
_SMALL = "{manufacturer: Ma, patients: 4, prevalence: 0.5, lesion_prevalence: 0.5}"
_LARGE = "{manufacturer: Ma, patients: 12, prevalence: 0.34, lesion_prevalence: 0.5}"
_CENTRES = f"""
centres:
  - {{profile: tiny, name: {{a}}, role: train, overrides: {{source: S1,
      data.synthetic.segments: [{_SMALL}], labels.missing.malignancy: 0.0}}}}
  - {{profile: tiny, name: {{b}}, role: train, overrides: {{source: S2,
      data.synthetic.segments: [{_LARGE}], labels.missing.malignancy: 0.6}}}}
  - {{profile: tiny, name: {{t}}, role: test, overrides: {{source: S3}}}}
"""


def _scenario(tmp_path: Path, strategy: str, body: str, image_size: str, names=("a", "b", "t")):
    text = _CENTRES.replace("{a}", names[0]).replace("{b}", names[1]).replace("{t}", names[2])
    path = tmp_path / f"{strategy}_weighting.yaml"
    path.write_text(
        f"{text}strategy: {strategy}\nstrategy_overrides:\n{body}image_size: {image_size}\n"
    )
    return path


def _run(tmp_path: Path, scenario_file: Path, kind: str, sets: dict):
    sets = {"data_dir": str(tmp_path / "data"), **sets}
    scenario = load_scenario(scenario_file, sets=sets)
    spec = RunSpec(scenario_file=str(scenario_file), run_dir=str(tmp_path / "run"), sets=sets)
    orc, grid = run_strategy_in_process(spec, scenario, METHODS[kind].run, strict=True)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    return orc, grid, results


def _counts(orc, centre: str, segments=None) -> tuple[int, int]:
    """(training images, those with a malignancy label) counted in the centre's data."""
    sc = orc.scenario
    data = materialise_centre(
        sc.resolved_profiles[centre],
        sc.data_dir,
        image_size=tuple(sc.image_size),
        data_seed=sc.data_seed,
    )
    out = []
    for label in (None, "malignant"):
        rows = data.rows("train", label=label)
        keep = np.isin(data.segments(rows), sorted(segments)) if segments else rows >= 0
        out.append(int(keep.sum()))
    return out[0], out[1]


def _train_replies(grid, kind: str) -> list[tuple[str, dict, dict]]:
    """(centre, sent config, reply content) of every ``kind`` message, in sending order."""
    sent = [(grid.names[n], cfg) for n, k, cfg in grid.log if k == kind]
    got = [(c, content) for c, k, content in grid.replies if k == kind]
    assert [c for c, _ in sent] == [c for c, _ in got]
    return [(c, cfg, content) for (c, cfg), (_, content) in zip(sent, got, strict=True)]


def _weighted_mean(replies: list[tuple[dict, float]]) -> dict[str, np.ndarray]:
    total = sum(w for _, w in replies)
    out = {}
    for key, arr in replies[0][0]["arrays"].items():
        if np.issubdtype(arr.numpy().dtype, np.floating):
            out[key] = sum(c["arrays"][key].numpy().astype(np.float64) * w for c, w in replies)
            out[key] = out[key] / total
    return out


def _assert_equals_weighted_mean(orc, arm: str, rnd: int, replies: list[tuple[dict, float]]):
    expected = _weighted_mean(replies)
    plain = _weighted_mean([(c, 1.0) for c, _ in replies])
    got = orc.load_checkpoint(arm, 0, rnd).to_numpy_ndarrays()
    keys = list(orc.load_checkpoint(arm, 0, rnd).keys())
    got = dict(zip(keys, got, strict=True))
    differs = False
    for key, want in expected.items():
        np.testing.assert_allclose(got[key], want, rtol=1e-5, atol=1e-6, err_msg=f"{arm} {key}")
        differs |= not np.allclose(want, plain[key], rtol=1e-4, atol=1e-6)
    return differs


def _count(content: dict, key: str) -> float:
    return float(content["metrics"][key])


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("weighting", [None, "images", "labelled", "uniform", "num_examples"])
def test_fedavg_round_is_the_weighted_mean_of_the_centres_updates(tmp_path, weighting):
    # Prepare: centres of 8 and 24 training images, none and ~60 % of labels missing (None:
    # the default, labelled images: the examples each centre trains on)
    body = (
        "  params.rounds: 1\n  params.arms: [federated]\n  params.bootstrap: 0\n"
        "  params.model.options: {width: 4, depth: 3, norm: batch}\n"
        "  params.train.steps_per_epoch: 2\n"
        + (f"  params.weighting: {weighting}\n" if weighting else "")
    )
    scenario = _scenario(tmp_path, "fedavg", body, "[32, 24]")
    # Execute
    orc, grid, results = _run(tmp_path, scenario, "fedavg", {})
    # Assert: each reply carries the centre's own counts, as identify reported them
    name = {"num_examples": "images", None: "labelled"}.get(weighting, weighting)
    replies = []
    counts = {c: _counts(orc, c) for c in ("a", "b")}
    assert counts["a"][0] != counts["b"][0] and counts["a"][1] != counts["b"][1]
    for centre, _, content in _train_replies(grid, "train.classifier"):
        images, labelled = counts[centre]
        assert _count(content, "num-images") == images
        assert _count(content, "num-labelled") == labelled
        w = {"images": images, "labelled": labelled, "uniform": 1.0}[name]
        replies.append((content, float(w)))
    differs = _assert_equals_weighted_mean(orc, "federated", 1, replies)
    assert differs == (name != "uniform")  # the weighting changed the model
    assert results["meta"]["weighting"]["federated"] == name


@pytest.mark.usefixtures("one_torch_thread")
def test_periodic_federated_arms_are_the_weighted_means_of_the_centres_updates(tmp_path):
    # Prepare: S1-Ma at s1 (8 images, all labelled), S2-Ma at s2 (24, most unlabelled)
    body = (
        "  params.model.options: {width: 4, depth: 3, norm: batch}\n"
        "  params.train.batch_size: 4\n  params.rounds: 1\n  params.batches_per_round: 2\n"
        # only these (a mapping merges into the recipe's: {} clears it first)
        "  params.experiments: {}\n  params.experiments.exp1: [S1-Ma, S2-Ma]\n"
        "  params.baselines: {}\n  params.baselines.S1-Ma: [S3-Ma]\n"
        "  params.settings: [federated]\n  params.methods: [balanced_labels, periodic]\n"
        "  params.periodic_weightings: [quota, images, labelled, uniform]\n"
        "  params.fedavg_weighting: images\n"
        "  params.bootstrap: 0\n  params.plots: false\n"
    )
    scenario = _scenario(tmp_path, "periodic_sampling", body, "[32, 24]", ("s1", "s2", "s3"))
    # Execute
    orc, grid, results = _run(tmp_path, scenario, "periodic_sampling", {})
    # Assert
    segments = {"S1-Ma", "S2-Ma"}
    counts = {c: _counts(orc, c, segments) for c in ("s1", "s2")}
    assert counts["s1"][0] != counts["s2"][0] and counts["s1"][1] != counts["s2"][1]
    by_arm: dict[str, list] = {}
    for centre, cfg, content in _train_replies(grid, "train.periodic"):
        by_arm.setdefault(cfg["arm"], []).append((centre, cfg, content))
    arms = {
        "exp1-federated-balanced_labels": "images",
        "exp1-federated-periodic": "quota",
        "exp1-federated-periodic-images": "images",
        "exp1-federated-periodic-labelled": "labelled",
        "exp1-federated-periodic-uniform": "uniform",
    }
    for arm, name in arms.items():
        replies = []
        assert {c for c, _, _ in by_arm[arm]} == {"s1", "s2"}, arm
        for centre, cfg, content in by_arm[arm]:
            images, labelled = counts[centre]
            assert _count(content, "num-images") == images
            assert _count(content, "num-labelled") == labelled
            quota = sum(json.loads(cfg["quota"]).values()) if "quota" in cfg else None
            if quota is not None:
                assert _count(content, "quota") == quota
            w = {"images": images, "labelled": labelled, "uniform": 1, "quota": quota}[name]
            replies.append((content, float(w)))
        differs = _assert_equals_weighted_mean(orc, arm, 1, replies)
        if name != "quota":  # (this round's quotas may happen to be equal)
            assert differs == (name != "uniform"), arm
        assert results["meta"]["weighting"][arm] == name
    assert results["meta"]["weighting"]["baseline-S1-Ma"] == "uniform"


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("weighting", [None, "images"])
def test_mtl_baseline_weighs_centres_by_their_labelled_images(tmp_path, weighting):
    # Prepare: the single-task baseline; b's images are mostly unlabelled for malignancy
    body = (
        "  params.rounds: 1\n  params.finetune_rounds: 0\n  params.arms: [single_task]\n"
        "  params.model.widths: [4, 4, 8, 8, 8]\n  params.model.stem_stride: 1\n"
        "  params.train.steps_per_epoch: 2\n  params.bootstrap: 0\n"
        + (f"  params.weighting: {weighting}\n" if weighting else "")
    )
    scenario = _scenario(tmp_path, "mtl_finetune", body, "[64, 48]")
    # Execute
    orc, grid, results = _run(tmp_path, scenario, "mtl_finetune", {})
    # Assert: the default weighs by malignancy-labelled images, not by all images
    name = weighting or "labelled"
    counts = {c: _counts(orc, c) for c in ("a", "b")}
    replies = []
    for centre, _, content in _train_replies(grid, "train.mtl"):
        images, labelled = counts[centre]
        assert _count(content, "num-images") == images
        assert _count(content, "num-labelled") == labelled
        replies.append((content, float(images if name == "images" else labelled)))
    assert _assert_equals_weighted_mean(orc, "single_task", 1, replies)
    assert results["meta"]["weighting"]["single_task"] == name


def test_a_weighting_a_method_cannot_count_is_refused_in_one_line():
    from fedmammo.config.recipe import validate_recipe_params

    with pytest.raises(Exception, match="weighting") as info:
        validate_recipe_params("fedavg", {"weighting": "quota"})
    assert "images" in str(info.value) and "uniform" in str(info.value)
    with pytest.raises(Exception, match="fedavg_weighting"):
        validate_recipe_params("periodic_sampling", {"fedavg_weighting": "quota"})
    from fedmammo.federation.rounds import check_weighting

    with pytest.raises(ConfigError, match="valid are images, labelled, quota, uniform"):
        check_weighting("by_size")
    assert check_weighting("equal") == "uniform" and check_weighting("num_images") == "images"


def test_each_centres_training_seed_depends_on_the_arm_seed_the_centre_and_the_round():
    # Prepare: one round's base message for two arm seeds (each arm runs once per seed)
    from dataclasses import replace

    from fedmammo.federation.rounds import CentreFedAvg
    from fedmammo.methods.fedavg.messages import TrainClassifier

    strategy = CentreFedAvg({"a": 1, "b": 2}, message=TrainClassifier)
    base = TrainClassifier(
        image_size=(32, 24), arm="federated", seed=0, model={"name": "mammo_cnn"}, train={}
    )
    keys = [(s, c, r) for s in (0, 1) for c in ("a", "b") for r in (1, 2)]

    def sent_seeds() -> dict:
        return {
            (s, c, r): strategy.centre_message(replace(base, seed=s), c, r).seed for s, c, r in keys
        }

    # Execute
    seeds = sent_seeds()
    # Assert: the arm seed changes every centre's seed in every round (batch order,
    # augmentation, DP noise), centres and rounds get their own, and it is reproducible
    assert all(seeds[(0, c, r)] != seeds[(1, c, r)] for _, c, r in keys)
    assert len(set(seeds.values())) == len(keys)
    assert sent_seeds() == seeds
