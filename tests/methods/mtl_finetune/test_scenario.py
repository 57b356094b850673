"""The mtl_finetune runner: in-process on tiny centres (fast) and the --quick scenario (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from flwr.supercore.task_identity import TaskIdentity
from helpers.flower_messages import InProcessGrid

from fedmammo.config import load_scenario
from fedmammo.errors import ConfigError
from fedmammo.evaluation.report import share_table
from fedmammo.evaluation.results import RunRecorder
from fedmammo.federation.orchestrator import Orchestrator
from fedmammo.federation.runspec import ENV_VAR, RunSpec
from fedmammo.methods.mtl_finetune.params import MtlFinetuneParams, parse_arm
from fedmammo.methods.mtl_finetune.server import (
    TABLES_FILE,
    arm_config,
    arm_model,
    plan_arms,
)
from fedmammo.methods.mtl_finetune.server import run as run_mtl_finetune

ROOT = Path(__file__).resolve().parents[3]
ARMS = ["single_task", "mtl", "finetune_u1_0.5"]


FakeGrid = InProcessGrid


def _scenario(tmp: Path) -> Path:
    tiny = str(ROOT / "centres" / "tiny.yaml")
    data = {
        "name": "mtl_tiny",
        "centres": [
            {"profile": tiny, "name": "a", "role": "train"},
            {
                "profile": tiny,
                "name": "b",
                "role": "train",
                "overrides": {"labels.missing.malignancy": 0.9},
            },
            {"profile": tiny, "name": "c", "role": "test"},
        ],
        "strategy": str(ROOT / "strategies" / "mtl_finetune.yaml"),
        "strategy_overrides": {
            "params.rounds": 1,
            "params.finetune_rounds": 1,
            "params.finetune_centres": ["b"],
            "params.arms": ARMS,
            "params.model.widths": [4, 4, 8, 8, 8],
            "params.model.stem_stride": 1,
            "params.train.steps_per_epoch": 2,
            "params.finetune_train.steps_per_epoch": 2,
            "params.bootstrap": 20,
        },
        "image_size": [64, 48],
        "data_dir": str(tmp / "data"),
    }
    path = tmp / "mtl_tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _orchestrator(spec: RunSpec, grid: FakeGrid, *, resume: bool = False) -> Orchestrator:
    scenario = load_scenario(spec.scenario_file)
    recorder = RunRecorder(spec.run_dir, resume=resume)
    orc = Orchestrator(grid=grid, spec=spec, scenario=scenario, recorder=recorder)
    orc.identify(len(grid.contexts))
    return orc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mtl_run")
    scenario_file = _scenario(tmp)
    names = ["a", "b", "c"]
    spec = RunSpec(scenario_file=str(scenario_file), run_dir=str(tmp / "run"), node_order=names)
    Path(spec.run_dir).mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_VAR, str(spec.save()))
        for attr in ("_run_id", "_node_id", "_task_id"):  # what a server-side Message() reads
            mp.setattr(TaskIdentity, attr, 1)
        grid = FakeGrid(names)
        orc = _orchestrator(spec, grid)
        run_mtl_finetune(orc)
        yield spec, orc, grid, mp


def test_arm_plan_models_and_configs():
    # Prepare
    p = MtlFinetuneParams(
        arms=["finetune_u1_0", "single_task", "mtl_acr", "drop_all_50"],
        finetune_centres=["b"],
        finetune_train={"lr": 0.0001},
    )
    # Execute
    plan = [s.name for s in plan_arms(p)]
    single = arm_model(p, parse_arm("single_task"))["options"]
    acr = arm_model(p, parse_arm("mtl_acr"))["options"]
    tuned = arm_config(p, parse_arm("finetune_u1_0"), seed=4)
    drops = [arm_config(p, parse_arm("drop_all_50"), seed=s) for s in (4, 4, 5)]
    # Assert: mtl is trained before the fine-tuning arm that starts from it
    assert plan == ["single_task", "mtl_acr", "drop_all_50", "mtl", "finetune_u1_0"]
    assert single["tasks"] == {"malignancy": 2} and not single["fusion"] and not single["decoder"]
    assert acr["tasks"] == {"malignancy": 2, "acr": 6} and acr["fusion"]
    assert tuned["phase"] == "finetune" and tuned["u1"] == 0.0
    assert tuned["train"]["lr"] == 0.0001 and tuned["class_weight_high"] == 20.0
    assert drops[0]["drop_fraction"] == 0.5 and drops[0]["drop_all"] is True
    assert drops[0]["drop_seed"] == drops[1]["drop_seed"] != drops[2]["drop_seed"]
    no_acr = MtlFinetuneParams(model={"tasks": {"malignancy": 2}})
    with pytest.raises(ConfigError, match="mtl_acr.*switches off"):
        arm_model(no_acr, parse_arm("mtl_acr"))


def _finals(records: list[dict]) -> dict[tuple, dict]:
    return {
        (r["arm"], r["centre"], r["segment"], r["metric"]): r
        for r in records
        if r["split"] == "test" and r["round"] is None
    }


def test_every_arm_is_evaluated_at_the_test_only_centre(run):
    # Prepare / Execute (the fixture ran the strategy)
    spec, orc, grid, _ = run
    finals = _finals(orc.recorder.metrics)
    # Assert
    assert orc.recorder.failures == []
    for arm in ARMS:
        auc = finals[(arm, "c", None, "auc")]
        assert auc["value"] is None or 0.0 <= auc["value"] <= 1.0
        assert (arm, "c", "view=CC", "auc") in finals
        assert orc.recorder.is_done(arm, 0)
    assert "Tables 8-9" in (Path(spec.run_dir) / TABLES_FILE).read_text()
    assert (Path(spec.run_dir) / "plots" / "latent_c_seed0.png").is_file()


def test_finetuning_continues_the_mtl_model_at_the_named_centre_only(run):
    # Prepare
    spec, orc, grid, _ = run
    node_of = orc.nodes
    train = [(n, c) for n, kind, c in grid.log if kind == "train.mtl"]
    # Execute
    tuned = [(n, c) for n, c in train if c["arm"] == "finetune_u1_0.5"]
    pre = [(n, c) for n, c in train if c["arm"] == "mtl"]
    # Assert
    assert [n for n, _ in tuned] == [node_of["b"]]
    assert tuned[0][1]["phase"] == "finetune" and tuned[0][1]["u1"] == 0.5
    assert tuned[0][1]["server-round"] == 2  # numbering continues after the pre-training
    assert sorted(n for n, _ in pre) == sorted([node_of["a"], node_of["b"]])
    assert all(c["phase"] == "pretrain" for _, c in pre)
    single = torch.load(Path(spec.run_dir) / "checkpoints" / "single_task" / "seed0_round001.pt")
    assert not any(k.startswith(("decoder.", "heads.acr")) for k in single)
    assert "heads.malignancy.weight" in single


def test_each_arms_shares_of_the_average_follow_its_labelled_images(run):
    # Prepare: a and b hold the same images; 90% of b's malignancy labels are missing, and
    # every image keeps its view label
    spec, orc, grid, _ = run
    # Execute
    shares = share_table(orc.recorder.frame(), ["a", "b"]).astype(float)
    # Assert: the single-task net is averaged by malignancy labels (about 1 : 0.1), the
    # multi-task net by images with any label (1 : 1), so their FedAvg mixes differ;
    # fine-tuning (at b alone) averages nothing
    assert 0.8 <= shares.loc["single_task", "a"] <= 0.95
    assert shares.loc["mtl", "a"] == pytest.approx(0.5, abs=0.011)
    assert shares.loc["mtl", "a"] + shares.loc["mtl", "b"] == pytest.approx(1.0, abs=0.011)
    assert "finetune_u1_0.5" not in shares.index


def test_resume_trains_only_what_is_missing(run):
    # Prepare: forget the fine-tuning arm, as if the run had stopped before it
    spec, orc, _, mp = run
    results = Path(spec.run_dir) / "results.json"
    saved = json.loads(results.read_text())
    saved["progress"].pop("finetune_u1_0.5|0")
    results.write_text(json.dumps(saved))
    grid = FakeGrid(["a", "b", "c"])
    # Execute
    resumed = _orchestrator(spec, grid, resume=True)
    run_mtl_finetune(resumed)
    # Assert
    trained = {(c["arm"], n) for n, kind, c in grid.log if kind == "train.mtl"}
    assert trained == {("finetune_u1_0.5", resumed.nodes["b"])}
    finals = _finals(resumed.recorder.metrics)
    assert all((arm, "c", None, "auc") in finals for arm in ARMS)


@pytest.mark.slow
def test_quick_scenario_runs_end_to_end(tmp_path):
    # Prepare
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "fedmammo.simulate",
        "scenarios/mtl_finetune.yaml",
        "--quick",
        "--backend",
        "inprocess",  # no Ray start: same numbers (tests/federation/test_inprocess.py)
        "--out",
        str(tmp_path / "runs"),
        "--set",
        f"data_dir={tmp_path / 'data'}",
    ]
    # Execute
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    # Assert
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "mtl_finetune").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["failures"] == []
    finals = _finals(results["metrics"])
    for arm in ARMS:
        assert (arm, "inbreast_like", None, "auc") in finals
        assert (arm, "inbreast_like", "density=B", "auc") in finals
    summary = (run_dir / "results.md").read_text()
    assert all(f"| {arm} |" in summary for arm in ARMS)
    tables = (run_dir / TABLES_FILE).read_text()
    assert "Tables 2-3" in tables and "Tables 8-9" in tables
    assert "Tables 2-3" in summary and "Tables 8-9" in summary
    assert (run_dir / "plots" / "latent_inbreast_like_seed0.png").is_file()


@pytest.mark.parametrize(
    ("fault_round", "said"),
    [(3, "valid (3 units planned"), (1, "but arm 'finetune_u1_0.5' trains rounds 3..3")],
)
def test_a_fault_in_a_fine_tuning_round_is_checked_against_its_numbering(capsys, fault_round, said):
    # --quick: 2 pre-training rounds, then fine-tuning round 3 (it was refused as "past the
    # arm's 1 round", and round 1 let through)
    from fedmammo import cli

    fault = f"faults=[{{centre: vtb, round: {fault_round}, arm: finetune_u1_0.5}}]"
    cli.main(["check", str(ROOT / "scenarios" / "mtl_finetune.yaml"), "--quick", "--set", fault])
    assert said in capsys.readouterr().out
