"""End-to-end: scenarios/periodic_sampling.yaml --quick through the simulate command (in
process: the Ray backend gives the same numbers, tests/federation/test_inprocess.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedmammo.methods.periodic_sampling.report import BUDGET_NOTE

ROOT = Path(__file__).resolve().parents[3]
TEST_SEGMENTS = ["S3-Ma", "S3-Mb", "S4-Mc", "S4-Md", "S5-Mc"]
EXPERIMENT_ARMS = [
    "pooled-balanced_labels",
    "pooled-balanced_segments",
    "pooled-periodic",
    "federated-balanced_labels",
    "federated-balanced_segments",
    "federated-periodic",
    "federated-periodic-images",
    "federated-periodic-uniform",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out, data = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "fedmammo.simulate",
        "scenarios/periodic_sampling.yaml",
        "--quick",
        "--backend",
        "inprocess",
        "--out",
        str(out),
        "--set",
        "strategy.quick.rounds=2",
        "--set",
        f"data_dir={data}",  # fresh phantoms: never a cache made by another phantom version
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run,) = (out / "periodic_sampling").iterdir()
    return run


@pytest.mark.slow
def test_quick_run_tabulates_every_arm_on_every_test_segment(run_dir):
    # Prepare
    results = json.loads((run_dir / "results.json").read_text())
    tables = results["meta"]["periodic_tables"]
    # Assert: both experiments, every test segment, every arm, no centre failure
    assert results["failures"] == []
    assert set(tables) == {"exp1", "exp2"}
    tested = 0
    for exp, by_seed in tables.items():
        by_segment = by_seed["0"]
        assert list(by_segment) == TEST_SEGMENTS
        for rows in by_segment.values():
            assert [r["arm"] for r in rows] == [f"{exp}-{a}" for a in EXPERIMENT_ARMS]
            for r in rows:
                assert r["delta"] == pytest.approx(r["auc"] - r["baseline_auc"], abs=1e-9)
                # no CI or p from a segment of fewer than 5 cancer or 5 other test patients
                if r["p_value"] is None:  # results.json is strict JSON: NaN is null
                    assert r["delta_low"] is None and r["delta_high"] is None
                    continue
                assert 0.0 <= r["p_value"] <= 1.0
                assert r["delta_low"] <= r["delta_high"]
                tested += 1
    assert tested > 0
    markdown = (run_dir / "periodic_tables.md").read_text()
    assert markdown.count("| AUC baseline | Setting | Method | AUC | ΔAUC | p-value |") == 10
    assert BUDGET_NOTE in markdown  # the arms' training budgets differ, and it says how
    summary = (run_dir / "results.md").read_text()
    assert "periodic_tables.md" in summary
    assert markdown.strip() in summary  # the Tables 2-4 layout is in results.md too


@pytest.mark.slow
def test_each_test_segment_is_compared_with_its_own_baseline(run_dir):
    # Prepare: the baselines' own test AUCs, recorded when they were evaluated
    results = json.loads((run_dir / "results.json").read_text())
    own = {
        (m["arm"], m["segment"]): m["value"]
        for m in results["metrics"]
        if m["split"] == "test"
        and m["metric"] == "auc"
        and m["round"] is None
        and m["arm"].startswith("baseline-")
    }
    # Assert: (S3, Mb) against the (S1, Mb) baseline, every other segment against (S1, Ma)
    for segment, rows in results["meta"]["periodic_tables"]["exp2"]["0"].items():
        reference = "baseline-S1-Mb" if segment == "S3-Mb" else "baseline-S1-Ma"
        expected = own[(reference, segment)]
        for r in rows:
            if expected is None:
                assert r["baseline_auc"] is None
            else:
                assert r["baseline_auc"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.slow
def test_quick_run_draws_every_figure_and_records_learning_curves(run_dir):
    # Prepare
    plots = {p.name for p in (run_dir / "plots").iterdir()}
    results = json.loads((run_dir / "results.json").read_text())
    # Assert: figures per experiment and setting; validation records every round
    for exp in ("exp1", "exp2"):
        for setting in ("pooled", "federated"):
            assert f"learning_curves_{exp}_{setting}_seed0.png" in plots
            assert f"val_{exp}_{setting}_pooled_seed0_roc.png" in plots
            for centre in ("s3", "s4", "s5"):
                for kind in ("roc", "hist"):
                    assert f"test_{exp}_{setting}_{centre}_seed0_{kind}.png" in plots
    val = {
        (m["arm"], m["round"], m["segment"])
        for m in results["metrics"]
        if m["split"] == "val" and m["metric"] == "wll"
    }
    for rnd in (1, 2):
        assert ("exp2-federated-periodic", rnd, None) in val
        for segment in ("S1-Ma", "S1-Mb", "S2-Ma", "S2-Mb"):
            assert ("exp2-federated-periodic", rnd, segment) in val


@pytest.mark.slow
def test_each_centres_steps_and_images_per_round_are_recorded(run_dir):
    # Prepare: the quick recipe's round: 4 batches of 16 (strategies/periodic_sampling.yaml)
    results = json.loads((run_dir / "results.json").read_text())
    budget = {}
    for r in results["metrics"]:
        if r["split"] == "train" and r["metric"] in ("train_steps", "train_examples"):
            budget.setdefault((r["arm"], r["round"]), {}).setdefault(r["centre"], {})[
                r["metric"]
            ] = r["value"]
    # Assert: every arm's every round; a federated Bal. labels / Bal. segments arm takes the
    # round's 4 batches at each centre (twice the images of the pooled arm), federated P.
    # sampling splits one window of 4 x 16 between them, as the pooled arm takes it alone
    for exp in ("exp1", "exp2"):
        for rnd in (1, 2):
            pooled = budget[(f"{exp}-pooled-balanced_labels", rnd)]
            assert pooled == {"pooled": {"train_steps": 4.0, "train_examples": 64.0}}
            for method in ("balanced_labels", "balanced_segments"):
                per_centre = budget[(f"{exp}-federated-{method}", rnd)]
                assert per_centre == {
                    c: {"train_steps": 4.0, "train_examples": 64.0} for c in ("s1", "s2")
                }
            periodic = budget[(f"{exp}-federated-periodic", rnd)]
            assert sum(v["train_examples"] for v in periodic.values()) == 64.0
            assert all(1 <= v["train_steps"] <= 4 for v in periodic.values())
