"""The share_gans runner: in-process on tiny centres (fast) and the --quick scenario (slow)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from helpers.flower_messages import InProcessGrid, in_process_identity
from helpers.gan_runs import (
    ARMS,
    METRICS,
    ROOT,
    run_in_process,
    run_spec_in_process,
    tiny_gan_scenario,
)

from fedmammo.config import load_scenario
from fedmammo.errors import ConfigError, DataError
from fedmammo.evaluation.results import RunRecorder
from fedmammo.federation.runspec import ENV_VAR, RunSpec
from fedmammo.methods import get_method
from fedmammo.methods.share_gans.generators import (
    load_shared_generator,
    save_shared_generator,
    untrained_generator,
)
from fedmammo.methods.share_gans.params import UNTRAINED, ClassifierParams, parse_arm
from fedmammo.methods.share_gans.receiver import KEPT_SCORES, _added_lesions
from fedmammo.methods.share_gans.report import GAIN, GAIN_CI, record_arm
from fedmammo.methods.share_gans.server import TABLES_FILE, _check_plan
from fedmammo.models.gans import sample_generator
from fedmammo.seeds import derive_seed

# a second classifier (the paper's Swin transformer, tiny) for two of the arms
SWIN_OPTIONS = {"input_size": 16, "embed_dim": 8, "depths": [1, 1], "num_heads": [1, 2]}
SWIN = {"model": {"name": "swin_t", "options": {**SWIN_OPTIONS, "window_size": 2}},
        "arms": ["A", "A+synth_B_dcgan"], "optimizer": "adamw", "lr": 0.002}  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gans_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_VAR, "")
        for attr in ("_run_id", "_node_id", "_task_id"):  # what a server-side Message() reads
            mp.setattr(TaskIdentity, attr, 1)
        # the helper clears the recipe's extra_models (its Swin would merge into this one)
        scenario_file = tiny_gan_scenario(tmp, **{"classifier.extra_models.swin": SWIN})
        orc, grid = run_in_process(scenario_file, tmp / "run")
        yield tmp, scenario_file, orc, grid


def _final(records: list[dict]) -> dict[tuple, float]:
    return {
        (r["arm"], r["seed"], r["metric"]): r["value"]
        for r in records
        if r["split"] in ("test", "val") and r["round"] is None
    }


def test_every_arm_fraction_and_seed_has_test_metrics(env):
    # Prepare / Execute (the fixture ran the strategy)
    _, _, orc, _ = env
    final = _final(orc.recorder.metrics)
    # Assert
    assert orc.recorder.failures == []
    for arm in ARMS:
        for pct in (100, 50):
            for seed in (0, 1):
                for metric in METRICS:
                    value = final[(f"{arm}@all-{pct}", seed, metric)]
                    assert value is None or 0.0 <= value <= 1.0
    tables = (Path(orc.spec.run_dir) / TABLES_FILE).read_text()
    assert tables.count("| A+synth_B_dcgan+synth_C_dcgan |") == 2  # both fractions


def test_an_extra_classifier_trains_its_arms_on_the_same_patches_and_follows_in_the_tables(env):
    # Prepare / Execute (the fixture ran the strategy with the tiny Swin for A, A+synth_B_dcgan)
    _, _, orc, grid = env
    final = _final(orc.recorder.metrics)
    sent = {c["arm"]: json.loads(c["classifier"]) for _, k, c in grid.log
            if k == "train.patch_classifier"}  # fmt: skip
    swin = {arm: clf for arm, clf in sent.items() if "~" in arm}
    # Assert: only the listed arms, each cell and seed, the Swin model and its own optimiser
    # (the rest of the loop as the CNN's), the same patches
    assert sorted(swin) == sorted(f"{a}~swin@all-{p}" for a in SWIN["arms"] for p in (100, 50))
    cnn = sent["A@all-100"]
    assert cnn["optimizer"] == "sgd" and "extra_models" not in cnn
    for clf in swin.values():
        assert clf == {**cnn, "model": SWIN["model"], "optimizer": "adamw", "lr": 0.002}
    for arm in SWIN["arms"]:
        for pct in (100, 50):
            for seed in (0, 1):
                name = f"{arm}~swin@all-{pct}"
                assert 0.0 <= final[(name, seed, "auc")] <= 1.0
                for count in ("n_own_lesion", "n_added_lesion", "healthy_shortfall"):
                    assert final[(name, seed, count)] == final[(f"{arm}@all-{pct}", seed, count)]
    tables = (Path(orc.spec.run_dir) / TABLES_FILE).read_text()
    block = tables.split("### ")[1]  # all lesion types, 100 %: CNN rows, then the Swin rows
    rows = [ln.split("|")[1].strip() for ln in block.splitlines() if ln.startswith("| A")]
    assert rows == [*ARMS, "A~swin", "A+synth_B_dcgan~swin"]


def test_every_arm_run_is_compared_with_the_receiver_alone_inside_the_receiver(env):
    # Prepare / Execute (the fixture ran the strategy: phase 3 compares every arm run)
    _, _, orc, grid = env
    test = {
        (r["arm"], r["seed"], r["metric"]): r
        for r in orc.recorder.metrics
        if r["split"] == "test" and r["segment"] is None
    }
    runs = [(a, "") for a in ARMS] + [(a, "swin") for a in SWIN["arms"]]
    # Assert: each arm run against A's run of the same cell, seed and classifier: A's AUROC and
    # CI repeated exactly (the same patches and resamples), the difference of the two AUROCs
    compared = 0
    for arm, label in runs:
        for pct in (100, 50):
            for seed in (0, 1):
                rec, alone = (record_arm(a, "all", pct / 100, label) for a in (arm, "A"))
                if arm == "A":
                    assert (rec, seed, "delta_auc") not in test
                    continue
                base, delta = test[(rec, seed, "baseline_auc")], test[(rec, seed, "delta_auc")]
                a_auc = test[(alone, seed, "auc")]
                assert [base[k] for k in ("value", "ci_low", "ci_high")] == [
                    a_auc[k] for k in ("value", "ci_low", "ci_high")
                ]
                auc = test[(rec, seed, "auc")]["value"]
                assert delta["value"] == pytest.approx(auc - a_auc["value"], abs=1e-12)
                assert delta["ci_low"] <= delta["ci_high"]
                assert 0 <= test[(rec, seed, "p_value")]["value"] <= 1
                compared += 1
    gains = [c for _, k, c in grid.log if k == "evaluate.patch_gain"]
    assert compared == len(gains) == (len(ARMS) - 1 + 1) * 2 * 2
    # the scores stayed at the receiver: one kept file per arm run, in its own state folder
    centres = Path(orc.spec.run_dir) / "centres"
    assert len(list(centres.glob(f"A/{KEPT_SCORES}/*/*.npz"))) == (len(ARMS) + 2) * 2 * 2
    assert not list(centres.glob(f"[BC]/{KEPT_SCORES}"))
    tables = (Path(orc.spec.run_dir) / TABLES_FILE).read_text()
    lines = tables.splitlines()
    header = next(ln for ln in lines if ln.startswith("| arm |")).split("|")
    cells = dict(zip(header, next(ln for ln in lines if ln.startswith("| A |")).split("|")))
    assert cells[f" {GAIN} "] == cells[f" {GAIN_CI} "] == " - "  # A: no gain over itself
    cells = dict(zip(header, next(ln for ln in lines if ln.startswith("| A+real_B |")).split("|")))
    assert cells[f" {GAIN_CI} "].strip().endswith("of 2")  # two seeds, each with its CI


def test_a_gain_without_kept_scores_is_refused_by_name(env, monkeypatch):
    # Prepare: the run's own gain message, for an arm run the receiver never trained, to a
    # fresh receiver node of the run (its state folder is the run's)
    _, _, orc, run_grid = env
    config = next(c for _, k, c in run_grid.log if k == "evaluate.patch_gain")
    config = {**config, "arm": "A+synth_Z_dcgan@all-100"}
    monkeypatch.setenv(ENV_VAR, str(Path(orc.spec.run_dir) / "runspec.json"))
    grid = InProcessGrid(orc.spec.node_order)
    node = next(n for n, name in grid.names.items() if name == "A")
    # Execute
    with in_process_identity():
        content = RecordDict({"config": ConfigRecord(config)})
        message = Message(content, dst_node_id=node, message_type="evaluate.patch_gain")
        [reply] = grid.send_and_receive([message])
    # Assert
    assert reply.has_error()
    assert "no test scores kept of arm A+synth_Z_dcgan@all-100" in reply.error.reason


def test_arms_of_one_seed_share_the_receivers_own_patches(env):
    # Prepare
    _, _, orc, _ = env
    final = _final(orc.recorder.metrics)
    # Execute
    own = {
        (pct, seed): {final[(f"{a}@all-{pct}", seed, "n_own_lesion")] for a in ARMS}
        for pct in (100, 50)
        for seed in (0, 1)
    }
    added = {a: final[(f"{a}@all-100", 0, "n_added_lesion")] for a in ARMS}
    # Assert
    assert all(len(v) == 1 for v in own.values())
    assert own[(50, 0)].pop() < own[(100, 0)].pop()
    assert added["A"] == 0 and 0 < added["A+real_B"] <= 8
    assert all(added[a] == 8 for a in ARMS if a != "A" and "real_" not in a)  # generators


def test_the_control_arms_generator_is_the_servers_untrained_one(env):
    # Prepare / Execute (the fixture ran A+untrained_dcgan beside the other arms)
    _, _, orc, grid = env
    name = "untrained_dcgan_all"
    saved = load_shared_generator(Path(orc.spec.run_dir) / "generators" / name)
    made = untrained_generator(
        name, "dcgan", patch_size=16, latent_dim=100, width=4, seed=derive_seed(0, name, "gan"),
        subset="all",
    )  # fmt: skip
    sent = [c for _, k, c in grid.log if k == "train.generator"]
    control = [c for _, k, c in grid.log if k == "train.patch_classifier"
               and c["arm"].startswith("A+untrained_dcgan@")]  # fmt: skip
    # Assert: no centre was asked to train it; its weights are the seeded initialisation, never
    # trained; every classifier run of the arm received it
    assert [c["gan"] for c in sent].count("dcgan") == 2  # B's and C's, not the control's
    assert (saved.description.epochs, saved.description.centre) == (0, None)
    assert [r for r, _ in saved.snapshots] == ["gen-e0"]
    for (_, a), (_, b) in zip(saved.snapshots, made.snapshots, strict=True):
        for key, tensor in a.to_torch_state_dict().items():
            assert torch.equal(tensor, b.to_torch_state_dict()[key])
    assert len(control) == 4  # 2 fractions x 2 seeds
    assert all(json.loads(c["generators"])[0]["description"]["epochs"] == 0 for c in control)


def test_every_arm_run_receives_each_of_its_generators_and_no_other(env):
    # Prepare / Execute (the fixture ran every arm, A+synth_B_dcgan+synth_C_dcgan included)
    _, _, _, grid = env
    sent = [c for _, k, c in grid.log if k == "train.patch_classifier"]
    # Assert: per message, the generators described are the arm's (centre, gan) in its order,
    # each with its own records (the two-generator arm trains with B's and C's)
    arms = set()
    for cfg in sent:
        arm = cfg["arm"].rpartition("@")[0].partition("~")[0]
        arms.add(arm)
        expected = [(None if c == UNTRAINED else c, g) for c, g in parse_arm(arm).generators]
        generators = json.loads(cfg["generators"])
        got = [(d["description"]["centre"], d["description"]["kind"]) for d in generators]
        assert got == expected, cfg["arm"]
        for i, d in enumerate(generators):
            assert d["records"] and all(r.startswith(f"g{i}-") for r in d["records"])
    assert arms == set(ARMS)
    both = [c for c in sent if c["arm"].startswith("A+synth_B_dcgan+synth_C_dcgan@")]
    assert len(both) == 4  # 2 fractions x 2 seeds


def test_the_second_control_adds_the_receivers_own_lesions_again(env):
    # Prepare / Execute (the fixture ran A+own_lesions beside the other arms)
    _, _, orc, grid = env
    final = _final(orc.recorder.metrics)
    sent = [c for _, k, c in grid.log if k == "train.patch_classifier"]
    control = [c for c in sent if c["arm"].startswith("A+own_lesions@")]
    # Assert: only its messages ask for the own lesions again, with no generator or real
    # patches; it adds as many lesion patches as a generator arm, and as many healthy ones
    assert len(control) == 4  # 2 fractions x 2 seeds
    assert all(c["own-lesions"] and json.loads(c["generators"]) == [] for c in control)
    assert all(not c["real-from"] for c in control)
    assert not any(c["own-lesions"] for c in sent if c not in control)
    for pct in (100, 50):
        for seed in (0, 1):
            arm, synth = f"A+own_lesions@all-{pct}", f"A+synth_B_dcgan@all-{pct}"
            assert final[(arm, seed, "n_added_lesion")] == 8
            for count in ("n_own_lesion", "healthy_shortfall"):
                assert final[(arm, seed, count)] == final[(synth, seed, count)]


def test_own_lesions_are_drawn_from_the_receivers_patches_by_seed():
    # Prepare: 3 own patches, a message asking for 7 of them again
    own = np.arange(3 * 16, dtype=np.float32).reshape(3, 1, 4, 4)
    m = SimpleNamespace(n_synthetic=7, real_from="", own_lesions=True)
    ident = SimpleNamespace(name="A")
    # Execute
    draw = [_added_lesions(None, m, None, ident, own, "all", {}, seed) for seed in (1, 1, 2)]
    # Assert: every patch is one of the own ones; the seed fixes the draw
    assert draw[0].shape == (7, 1, 4, 4)
    assert all(any(np.array_equal(p, o) for o in own) for p in draw[0])
    assert np.array_equal(draw[0], draw[1]) and not np.array_equal(draw[0], draw[2])
    with pytest.raises(DataError, match="centre 'A': no own masses lesion patches to draw again"):
        _added_lesions(None, m, None, ident, own[:0], "masses", {}, 1)


def test_the_own_lesions_control_combines_with_nothing():
    assert parse_arm("A+own_lesions").own_lesions and not parse_arm("A+real_B").own_lesions
    for bad in ("A+own_lesions+synth_B_dcgan", "A+own_lesions+own_lesions"):
        with pytest.raises(ValueError, match="or own_lesions alone"):
            parse_arm(bad)
    with pytest.raises(ValueError, match="untrained_<gan> or own_lesions"):
        parse_arm("A+own_patches")


def test_a_centre_named_like_the_control_generator_is_refused(env):
    # Prepare: the tiny scenario's centre names, with a centre called "untrained"
    _, _, orc, _ = env
    names = [*orc.scenario.centre_names(), UNTRAINED]
    renamed = SimpleNamespace(
        scenario=SimpleNamespace(
            centre_names=lambda: names,
            name="x",
            resolved_profiles=orc.scenario.resolved_profiles,
        )
    )
    params = orc.params.model_copy(update={"arms": ["A", "A+untrained_dcgan"]})
    # Execute / Assert: refused with the fix; the same arms pass with the real names
    with pytest.raises(ConfigError, match="a centre is named 'untrained'.*rename the centre"):
        _check_plan(renamed, params)
    assert [s.name for s in _check_plan(orc, params)] == ["A", "A+untrained_dcgan"]
    with pytest.raises(ValueError, match="untrained_<gan> with gan in"):
        params.model_copy(update={"arms": ["A+untrained_stylegan"]}).arm_specs()


def test_generators_are_trained_once_saved_and_reloadable(env):
    # Prepare
    _, _, orc, grid = env
    run_dir = Path(orc.spec.run_dir)
    trained = [c["gan"] + "@" + str(n) for n, kind, c in grid.log if kind == "train.generator"]
    # Execute
    gen = load_shared_generator(run_dir / "generators" / "B_dcgan_all")
    patches = sample_generator(
        gen.description, [a.to_torch_state_dict() for _, a in gen.snapshots], 5
    )
    # Assert
    assert len(trained) == 3  # B dcgan, B wgan_gp, C dcgan; once for both seeds
    assert gen.description.snapshot_epochs == [1, 2] and gen.description.centre == "B"
    assert "frechet_distance" in gen.description.extra
    # how it was trained, for the site that receives it: the paper's DCGAN settings too
    training = gen.description.extra["training"]
    assert training["label_smoothing"] == [0.8, 1.1] and training["betas"] == [0.5, 0.999]
    assert (training["lr"], training["flip_p"]) == (2e-4, 0.5) and "seed" not in training
    wgan = load_shared_generator(run_dir / "generators" / "B_wgan_gp_all").description
    assert (wgan.extra["training"]["lambda_gp"], wgan.extra["training"]["n_critic"]) == (10.0, 2)
    assert patches.shape == (5, 16, 16) and 0.0 <= patches.min() <= patches.max() <= 1.0
    for name in ("B_dcgan_all", "B_wgan_gp_all", "C_dcgan_all"):
        assert (run_dir / "plots" / f"synthetic_samples_{name}.png").is_file()
    assert (run_dir / "plots" / "harmonised_samples_A_B_dcgan_all.png").is_file()


def test_load_generators_reuses_another_runs_generators(env):
    # Prepare
    tmp, _, orc, _ = env
    scenario_file = tiny_gan_scenario(
        tmp, arms=["A+synth_B_dcgan"], fractions=[1.0], load_generators=str(orc.spec.run_dir)
    )
    # Execute
    other, grid = run_in_process(scenario_file, tmp / "reuse")
    # Assert
    assert not [k for _, k, _ in grid.log if k == "train.generator"]
    first = _final(orc.recorder.metrics)[("A+synth_B_dcgan@all-100", 0, "auc")]
    assert _final(other.recorder.metrics)[("A+synth_B_dcgan@all-100", 0, "auc")] == first


def test_resume_runs_only_what_is_missing(env):
    # Prepare: forget one arm of seed 1, as if the run had stopped there
    tmp, scenario_file, orc, _ = env
    results = Path(orc.spec.run_dir) / "results.json"
    saved = json.loads(results.read_text())
    saved["progress"].pop("A+synth_C_dcgan@all-50|1")
    results.write_text(json.dumps(saved))
    # Execute
    resumed, grid = run_in_process(scenario_file, Path(orc.spec.run_dir), resume=True)
    # Assert
    sent = [(k, c.get("arm")) for _, k, c in grid.log if k != "query.identify"]
    assert sent == [
        ("train.patch_classifier", "A+synth_C_dcgan@all-50"),
        ("evaluate.patch_gain", "A+synth_C_dcgan@all-50"),  # its gain went with its records
    ]
    assert ("A+synth_C_dcgan@all-50", 1, "auc") in _final(resumed.recorder.metrics)


def test_real_patch_arm_needs_permission_and_never_runs_in_deployment(env):
    # Prepare
    _, _, orc, _ = env
    deployed = dataclasses.replace(
        orc,
        spec=dataclasses.replace(orc.spec, deployment=True),
        recorder=RunRecorder(Path(orc.spec.run_dir) / "dep"),
    )
    strict = load_scenario(orc.scenario.source_file)
    strict.resolved_profiles["B"].sharing.real_patches_in_simulation = False
    # Execute
    kept = [s.name for s in _check_plan(deployed, orc.params)]
    # Assert
    assert "A+real_B" not in kept and "A+synth_B_dcgan" in kept
    assert any("A+real_B skipped" in n for n in deployed.recorder.notes)
    with pytest.raises(ConfigError, match="real_patches_in_simulation"):
        _check_plan(dataclasses.replace(orc, scenario=strict), orc.params)


def test_a_deployment_sends_no_real_patch_arm_to_any_classifier(env):
    # Prepare: the real-patch arm for the CNN and the Swin, run as at real sites
    tmp, _, orc, _ = env
    swin = {**SWIN, "arms": ["A", "A+real_B"]}
    scenario_file = tiny_gan_scenario(
        tmp, arms=["A", "A+real_B"], fractions=[1.0], load_generators=str(orc.spec.run_dir),
        **{"classifier.extra_models.swin": swin},
    )  # fmt: skip
    spec = RunSpec(scenario_file=str(scenario_file), run_dir=str(tmp / "deployed"))
    # Execute
    deployed, grid = run_spec_in_process(
        dataclasses.replace(spec, deployment=True), load_scenario(scenario_file)
    )
    # Assert: the CNN and the Swin train A only; the real-patch arm is skipped with a note
    sent = sorted(c["arm"] for _, k, c in grid.log if k == "train.patch_classifier")
    assert sent == ["A@all-100", "A@all-100", "A~swin@all-100", "A~swin@all-100"]  # 2 seeds
    assert any("A+real_B skipped" in n for n in deployed.recorder.notes)


@pytest.mark.slow
def test_quick_scenario_runs_end_to_end(tmp_path):
    # Prepare: --quick, two seeds, a test-only cut (four arms, masses, one fraction, small B/C)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    arms = ["A", "A+real_B", "A+synth_B_dcgan", "A+harmonised_B_dcgan"]
    sets = {
        "seeds": "[0,1]",
        "data_dir": str(tmp_path / "data"),
        "strategy.params.arms": "[" + ",".join(arms) + "]",
        "strategy.params.subsets": "[masses]",
        "strategy.params.fractions": "[1.0]",
        "centres.B.data.synthetic.segments.0.patients": "20",
        "centres.B.data.synthetic.segments.1.patients": "30",
        "centres.C.data.synthetic.segments.0.patients": "10",
    }
    cmd = [
        sys.executable,
        "-m",
        "fedmammo.simulate",
        "scenarios/share_gans.yaml",
        "--quick",
        "--backend",
        "inprocess",  # no Ray start: same numbers (tests/federation/test_inprocess.py)
        "--out",
        str(tmp_path / "runs"),
    ]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    # Execute
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    # Assert
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "share_gans").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["failures"] == [], json.dumps(results["failures"])
    final = _final(results["metrics"])
    for arm in arms:
        for seed in (0, 1):
            assert all((f"{arm}@masses-100", seed, m) in final for m in METRICS)
    assert (run_dir / "plots" / "synthetic_samples_B_dcgan_masses.png").is_file()
    assert (run_dir / "generators" / "B_dcgan_masses" / "description.json").is_file()
    assert "A+real_B" in done.stdout and "MOVES REAL PIXELS" in done.stdout
    assert np.isfinite(final[("A+synth_B_dcgan@masses-100", 1, "auc")])


def test_the_shipped_full_plan_trains_the_swin_for_three_arms_and_quick_for_none():
    # Prepare
    def plan(quick: bool, **sets):
        sets = {"data_dir": "/tmp/unused", **sets}
        scenario = load_scenario(ROOT / "scenarios" / "share_gans.yaml", sets=sets, quick=quick)
        return get_method("share_gans").plan(scenario, scenario.recipe.typed_params(quick=quick))

    # Execute
    full = [r for r in plan(False) if "~" in r.arm]
    quick = [r for r in plan(True, **{"strategy.params.classifier.extra_models.swin.lr": 1e-4})]
    # Assert: 3 arms x 2 subsets x 2 fractions x 3 seeds, the Swin model in the plan
    assert len(full) == 36 and {r.arm.split("~")[0] for r in full} == {
        "A", "A+real_B", "A+synth_B_dcgan"
    }  # fmt: skip
    assert all(r.model["name"] == "swin_t" for r in full)
    assert not [r for r in quick if "~" in r.arm] and quick  # a --set swin value still loads


def test_the_shipped_recipe_trains_every_classifier_with_the_fast_kernels_off_by_default():
    # Prepare
    scenario = load_scenario(ROOT / "scenarios" / "share_gans.yaml", sets={"data_dir": "/tmp/x"})
    # Execute
    runs = {quick: scenario.recipe.typed_params(quick=quick).classifier_runs() for quick in (0, 1)}
    # Assert: the CNN and the Swin (full), the CNN (quick) ask for both; a recipe that does
    # not name them keeps the reference kernels
    assert {label for _, label, _ in runs[0]} == {"", "swin"} and runs[1]
    for _, _, classifier in runs[0] + runs[1]:
        assert classifier["channels_last"] is classifier["fused_optimizer"] is True
    default = ClassifierParams()
    assert default.channels_last is default.fused_optimizer is False


def test_generators_of_a_centre_under_dp_train_one_at_a_time():
    # two DP rounds must never charge one ledger at once: such a centre gets one job at a time
    from types import SimpleNamespace

    from fedmammo.methods.share_gans.server import _private_centres

    def profile(dp: bool):
        return SimpleNamespace(privacy=SimpleNamespace(enabled=dp))

    orc = SimpleNamespace(
        scenario=SimpleNamespace(resolved_profiles={"B": profile(True), "C": profile(False)})
    )
    # a centre the server has no profile of is treated as private
    assert _private_centres(orc, ["B", "C", "D"]) == {"B", "D"}


@pytest.mark.parametrize("fractions", [[0.5, 0.501], [1.0, 0.004]])
def test_fractions_that_would_share_a_results_name_are_refused(fractions):
    # 0.5 and 0.501 were both recorded as ...@masses-50 and averaged as one seed's two values
    from fedmammo.methods.share_gans.params import ShareGansParams

    with pytest.raises(ValueError, match=r"name the same whole percent .* or 0%"):
        ShareGansParams(fractions=fractions)


def test_a_receiver_without_test_images_is_refused_by_the_check():
    # a receiver without test images: every arm used to fail after the GANs were trained
    from fedmammo.simulate import plan_run

    scenario = Path(__file__).resolve().parents[3] / "scenarios" / "share_gans.yaml"
    sets = {"centres.A.split": {"train": 0.9, "val": 0.1, "test": 0.0}}
    with pytest.raises(ConfigError) as caught:
        plan_run(scenario, sets=sets, quick=True)
    assert str(caught.value).startswith(
        '--set centres.A.split={"train": 0.9, "val": 0.1, "test": 0.0}: share_gans: the receiver '
        "'A' has no test images"
    )


def test_the_generators_seed_is_the_recipes_not_the_first_scenario_seed():
    # seeds [3, 4] and [4, 3] used to train the generators from 3 or 4: seed 3's synthetic
    # arms scored 0.465 or 0.380 depending on the list's order
    scenario_file = Path(__file__).resolve().parents[3] / "scenarios" / "share_gans.yaml"
    method = get_method("share_gans")
    seeds_of = {}
    for seeds in ([3, 4], [4, 3]):
        scenario = load_scenario(scenario_file, sets={"seeds": seeds}, quick=True)
        rows = method.plan(scenario, scenario.recipe.typed_params(quick=True))
        seeds_of[tuple(seeds)] = {r.seed for r in rows if r.arm.startswith("B_")}
    assert seeds_of[(3, 4)] == seeds_of[(4, 3)] == {0}
    scenario = load_scenario(
        scenario_file, sets={"strategy_overrides": {"params.generator_seed": 7}}, quick=True
    )
    rows = method.plan(scenario, scenario.recipe.typed_params(quick=True))
    assert {r.seed for r in rows if r.arm.startswith("B_")} == {7}


def test_the_plan_says_which_generators_load_generators_gives_and_checks_their_patch_size(
    tmp_path,
):
    # Prepare: an earlier run's folder holding B's DCGAN of masses, once at the recipe's patch
    # size and once at another
    scenario_file = Path(__file__).resolve().parents[3] / "scenarios" / "share_gans.yaml"
    method = get_method("share_gans")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    sets = {"strategy.params.load_generators": str(earlier)}
    scenario = load_scenario(scenario_file, sets=sets, quick=True)
    params = scenario.recipe.typed_params(quick=True)
    name = next(r.arm for r in method.plan(scenario, params) if r.arm.startswith("B_dcgan"))
    subset = name.removeprefix("B_dcgan_")

    def saved(patch_size: int) -> None:
        gen = untrained_generator(
            name, "dcgan", patch_size=patch_size, latent_dim=8, width=4, seed=0, subset=subset
        )
        save_shared_generator(earlier / "generators", dataclasses.replace(gen, name=name))

    # Execute
    saved(params.patches.size)
    rows = {r.arm: r for r in method.plan(scenario, params)}
    saved(params.patches.size * 2)
    with pytest.raises(ConfigError) as caught:
        method.plan(scenario, params)
    # Assert: the loaded generator is trained by no centre; the others still are
    assert rows[name].messages == () and rows[name].centres == ()
    assert rows[name].note == f"dcgan, loaded from {earlier / 'generators' / name}"
    others = [r for arm, r in rows.items() if arm.startswith("B_") and arm != name]
    assert others and all(r.messages == (("train.generator", ("B",)),) for r in others)
    assert str(caught.value) == (
        f"{earlier / 'generators' / name}: generator of {params.patches.size * 2}-px patches, "
        f"the recipe's patches.size is {params.patches.size}"
    )


def test_an_unknown_gan_name_is_named_with_its_set_not_pydantics_key_mark():
    scenario_file = Path(__file__).resolve().parents[3] / "scenarios" / "share_gans.yaml"
    with pytest.raises(ConfigError) as caught:
        load_scenario(scenario_file, sets={"strategy.params.gans.stylegan.epochs": 3}, quick=True)
    assert str(caught.value) == (
        "--set strategy.params.gans.stylegan.epochs=3: key 'params.gans.stylegan': not a valid "
        "name here: Input should be 'dcgan' or 'wgan_gp'"
    )
