"""Membership audits of the multi-task method: ``evaluate.mtl_audit`` inside a centre (loss of
the malignancy head, only scores leave, the epsilon bound under DP) and the mtl_finetune
runner auditing every arm's final model at every training centre, on an in-process grid.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from flwr.app import ConfigRecord, Context, RecordDict
from helpers.centre_nodes import node_context, prepared_centre, use_privacy
from helpers.flower_messages import InProcessGrid, make_incoming, run_strategy_in_process

from fedmammo.apps import DP_CAPABLE  # noqa: E402
from fedmammo.config import load_scenario
from fedmammo.data.labels import MISSING, manifest_targets
from fedmammo.federation.codec import put_json, state_to_arrays
from fedmammo.federation.egress import egress_mod
from fedmammo.federation.privacy.codec import decode_privacy
from fedmammo.federation.privacy.ledger import LEDGER_KEY, PLANNED_ROUNDS_KEY, dp_guard_mod
from fedmammo.federation.privacy.phases import PARENT_LEDGER_KEY
from fedmammo.federation.runspec import RunSpec
from fedmammo.methods.mtl_finetune import audit as mtl_audit_handler
from fedmammo.methods.mtl_finetune import client as handlers
from fedmammo.methods.mtl_finetune.messages import EvaluateMtlAudit
from fedmammo.methods.mtl_finetune.server import run as run_mtl_finetune
from fedmammo.models import build_model

DP_GUARD = dp_guard_mod(DP_CAPABLE)
ROOT = Path(__file__).resolve().parents[3]
SIZE = (32, 24)
# a small two-task net (malignancy and view, no decoder) that memorises a few images quickly
MODEL = {
    "name": "multitask",
    "options": {
        "widths": [4, 4, 8, 8, 8],
        "dropout": 0.0,
        "decoder": False,
        "tasks": {"malignancy": 2, "view": 2},
    },
}
TRAIN = {"epochs": 1, "batch_size": 8, "lr": 0.005, "augment": False}
SCORE_KEYS = {
    "auc",
    "tpr-at-1pct-fpr",
    "fpr-reached",
    "epsilon-lower-95",
    "n-members",
    "n-nonmembers",
    "compute-seconds",
}
BOUND_KEYS = {"epsilon", "delta", "tpr-bound-at-1pct-fpr"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- one centre
@pytest.fixture(scope="module")
def centre(tmp_path_factory):
    """Every patient has one cancer: balanced malignancy labels, 30% of them missing."""
    labels = {"missing": {"malignancy": 0.3}}
    return prepared_centre(
        tmp_path_factory.mktemp("mtlaudit"), "mia", SIZE, prevalence=1.0, labels=labels
    )


def new_context(data_dir: Path) -> Context:
    return node_context("mia", data_dir)


def send(fn, kind: str, context: Context, *, arrays=None, train=TRAIN, **config) -> RecordDict:
    """One message through the ClientApp's DP guard and egress guard (the real path)."""
    torch.manual_seed(0)
    net = build_model(MODEL["name"], **MODEL["options"])
    cfg = ConfigRecord({"image-size": list(SIZE), "data-seed": 0, "arm": "mtl", "seed": 0})
    put_json(cfg, "model", MODEL)
    if kind.startswith("train."):  # an audit message carries no training recipe
        put_json(cfg, "train", train)
    for key, value in config.items():
        cfg[key] = value
    weights = arrays if arrays is not None else state_to_arrays(net.state_dict())
    content = RecordDict({"config": cfg, "arrays": weights})
    out = DP_GUARD(make_incoming(content, kind), context, lambda m, c: egress_mod(m, c, fn))
    assert not out.has_error(), out.error
    return out.content


def train(context: Context, *, epochs: int) -> RecordDict:
    return send(
        handlers.train,
        "train.mtl",
        context,
        train={**TRAIN, "epochs": epochs},
        **{LEDGER_KEY: "mtl|0", PLANNED_ROUNDS_KEY: 1},
    )


def audit(context: Context, *, arrays=None, **config) -> dict:
    out = send(mtl_audit_handler.mtl_audit, "evaluate.mtl_audit", context, arrays=arrays, **config)
    assert set(out) == {"metrics"}  # scores only: no arrays, no per-image values
    return dict(out["metrics"])


def labelled(data, rows: np.ndarray) -> int:
    return int((manifest_targets(data.manifest.iloc[rows])[0]["malignancy"] != MISSING).sum())


def test_mtl_audit_replies_scores_only_and_leaves_out_unlabelled_images(centre):
    # Prepare: a centre without DP, the initial net.
    data, data_dir = centre
    use_privacy(data_dir)
    # Execute
    m = audit(new_context(data_dir), **{LEDGER_KEY: "mtl|0"})
    # Assert: the same metric keys as evaluate.audit, counts of labelled images only
    assert set(m) == SCORE_KEYS
    held = np.concatenate([data.rows("val", label=None), data.rows("test", label=None)])
    assert m["n-members"] == labelled(data, data.rows("train", label=None))
    assert m["n-nonmembers"] == labelled(data, held)
    assert m["n-members"] < len(data.rows("train", label=None))  # some labels are missing
    assert 0.0 <= m["auc"] <= 1.0 and 0.0 <= m["tpr-at-1pct-fpr"] <= 1.0


def test_overfit_net_separates_members_and_a_dp_net_reports_the_bound(centre):
    # Prepare: 40 epochs without DP (memorises its 19 labels); 10 epochs with sigma 2.
    _, data_dir = centre
    audits, reports = {}, {}
    for name, privacy, epochs in (("plain", {}, 40), ("dp", {"noise_multiplier": 2.0}, 10)):
        use_privacy(data_dir, **privacy)
        context = new_context(data_dir)
        trained = train(context, epochs=epochs)
        reports[name] = trained.get("privacy")
        # Execute: audit the returned weights at the same centre, on the same ledger
        audits[name] = audit(context, arrays=trained["arrays"], **{LEDGER_KEY: "mtl|0"})
    plain, dp = audits["plain"], audits["dp"]
    # Assert: members' losses stand out of the overfit net; no epsilon without DP ...
    assert plain["auc"] > 0.75 and set(plain) == SCORE_KEYS  # 0.86 here; 0.9-0.98 other seeds
    # ... the DP net reports its ledger's epsilon and the TPR bound it implies
    assert set(dp) == SCORE_KEYS | BOUND_KEYS
    assert dp["epsilon"] == pytest.approx(decode_privacy(reports["dp"])["ledger_epsilon"])
    bound = min(1.0, math.exp(dp["epsilon"]) * 0.01 + dp["delta"])
    assert dp["tpr-bound-at-1pct-fpr"] == pytest.approx(bound)
    assert dp["auc"] < plain["auc"]  # 0.60 here
    # ... and the epsilon the attack proves stays within the one spent (19 members prove none)
    assert 0.0 <= dp["epsilon-lower-95"] <= dp["epsilon"]


def test_finetuned_model_where_only_pretraining_ran_reports_the_parent_ledger(centre):
    # Prepare: one DP pre-training round (ledger mtl|0) at this centre; no fine-tuning here.
    # One ledger per what-if arm (as in simulation; a site's one ledger answers either way).
    _, data_dir = centre
    use_privacy(data_dir, noise_multiplier=2.0, ledger_scope="arm")
    context = new_context(data_dir)
    report = decode_privacy(train(context, epochs=1)["privacy"])
    # Execute: audit a fine-tuning arm's model, with and without naming the ledger it continues
    ft = {LEDGER_KEY: "finetune_u1_0.5|0"}
    with_parent = audit(context, **ft, **{PARENT_LEDGER_KEY: "mtl|0"})
    without = audit(context, **ft)
    # Assert: the pre-training's epsilon (its only cost at this centre), else no bound
    assert with_parent["epsilon"] == pytest.approx(report["ledger_epsilon"])
    assert set(without) == SCORE_KEYS


def test_drop_all_arm_counts_only_the_images_it_trained_on(centre):
    # Prepare: the config of a drop_all_50 arm (as train.mtl receives it).
    data, data_dir = centre
    use_privacy(data_dir)
    drop = dict(drop_fraction=0.5, drop_all=True, drop_seed=11)
    arm = EvaluateMtlAudit(image_size=SIZE, arm="mtl", seed=0, model=MODEL, **drop)
    targets, _, kept = handlers.training_targets(data, data.rows("train", label=None), arm, "mia")
    # Execute
    m = audit(new_context(data_dir), **{arm.key(k): v for k, v in drop.items()})
    # Assert: members are the images the arm kept, with a malignancy label it kept
    assert m["n-members"] == int((targets["malignancy"] != MISSING).sum())
    assert len(kept) < len(data.rows("train", label=None))
    assert m["n-members"] < labelled(data, data.rows("train", label=None))


# --------------------------------------------------------------------------- the runner
ARMS = ["mtl", "finetune_u1_0.5"]
# merged into the recipe's train blocks: a fresh Adam every round (not the recipe's)
RUN_TRAIN = {
    "epochs": 1,
    "batch_size": 8,
    "lr": 0.001,
    "augment": False,
    "keep_optimizer_state": False,
}


def _scenario(tmp: Path, *, privacy: bool, arms: list[str]) -> Path:
    """a trains with DP (when ``privacy``), b without; c only tests. b fine-tunes."""
    tiny = str(ROOT / "centres" / "tiny.yaml")
    dp = {"overrides": {"privacy": {"target_epsilon": 8.0}}} if privacy else {}
    data = {
        "name": "mtl_audit_tiny",
        "centres": [
            {"profile": tiny, "name": "a", "role": "train", **dp},
            {"profile": tiny, "name": "b", "role": "train"},
            {"profile": tiny, "name": "c", "role": "test"},
        ],
        "strategy": str(ROOT / "strategies" / "mtl_finetune.yaml"),
        "strategy_overrides": {
            "params.rounds": 2,
            "params.finetune_rounds": 1,
            "params.finetune_centres": ["b"],
            "params.arms": arms,
            "params.model.widths": [4, 4, 8, 8, 8],
            "params.model.stem_stride": 1,
            "params.train": RUN_TRAIN,
            "params.finetune_train": RUN_TRAIN,
            "params.bootstrap": 10,
        },
        "image_size": list(SIZE),
        "data_dir": str(tmp / "data"),
    }
    if privacy:
        data["privacy"] = {"max_grad_norm": 1.0}  # b: no DP of its own, audits on
    path = tmp / "mtl_audit_tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_runner(
    tmp: Path, *, privacy: bool, arms: list[str] = ARMS, run_dir: Path | None = None
) -> tuple[Path, InProcessGrid]:
    """The mtl_finetune runner on a fresh in-process grid; ``run_dir`` given: resume it."""
    scenario_file = _scenario(tmp, privacy=privacy, arms=arms)
    resume = run_dir is not None
    run_dir = run_dir or tmp / "run"
    spec = RunSpec(scenario_file=str(scenario_file), run_dir=str(run_dir))
    scenario = load_scenario(spec.scenario_file)
    _, grid = run_strategy_in_process(spec, scenario, run_mtl_finetune, resume=resume)
    return run_dir, grid


def _audit_rows(run_dir: Path) -> list[dict]:
    results = json.loads((run_dir / "results.json").read_text())
    return [m for m in results["metrics"] if m["split"] == "audit"]


@pytest.fixture(scope="module")
def audited_run(tmp_path_factory):
    return run_runner(tmp_path_factory.mktemp("mtl_audit_run"), privacy=True)


def test_runner_audits_every_arm_at_every_training_centre(audited_run):
    # Prepare / Execute (the fixture ran the strategy with privacy set)
    run_dir, grid = audited_run
    rows = _audit_rows(run_dir)
    privacy = json.loads((run_dir / "privacy.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    # Assert: one audit per arm and training centre (b fine-tuned; a pre-trained only) ...
    assert not results["failures"]
    sent = {(grid.names[n], c["arm"]) for n, kind, c in grid.log if kind == "evaluate.mtl_audit"}
    assert sent == {(c, arm) for c in ("a", "b") for arm in ARMS}
    scores = {(m["centre"], m["arm"], m["metric"]) for m in rows}
    for centre in ("a", "b"):
        for arm in ARMS:
            assert {(centre, arm, "attack_auc"), (centre, arm, "attack_tpr_at_1pct_fpr")} <= scores
    assert all(0.0 <= m["value"] <= 1.0 and m["round"] is None for m in rows)
    # ... the bound only where the centre trained with DP (a), for the fine-tuned model too
    bound = {(m["centre"], m["arm"]) for m in rows if m["metric"] == "attack_tpr_bound_at_1pct_fpr"}
    assert bound == {("a", arm) for arm in ARMS}
    audits = {(a["centre"], a["arm"]): a for a in privacy["audits"]}
    assert set(audits) == {(c, arm) for c in ("a", "b") for arm in ARMS}
    a_mtl = next(r for r in privacy["records"] if (r["centre"], r["arm"]) == ("a", "mtl"))
    for arm in ARMS:  # fine-tuning never touched a's images: its epsilon is a's pre-training
        assert audits[("a", arm)]["epsilon"] == pytest.approx(a_mtl["ledger_epsilon"])
        assert "epsilon" not in audits[("b", arm)]
        assert audits[("a", arm)]["attack"] == "loss_threshold"
        assert audits[("a", arm)]["n_members"] > 0 and audits[("a", arm)]["n_nonmembers"] > 0


def test_resumed_run_does_not_redo_recorded_audits(audited_run, tmp_path):
    # Prepare: a copy of the finished run, resumed on a fresh grid.
    first_run, _ = audited_run
    run_dir = tmp_path / "run"
    shutil.copytree(first_run, run_dir)
    before = _audit_rows(run_dir)
    # Execute
    _, grid = run_runner(tmp_path, privacy=True, run_dir=run_dir)
    # Assert: completed arms are neither trained nor audited again (as in the FedAvg runner)
    kinds = {kind for _, kind, _ in grid.log}
    assert "evaluate.mtl_audit" not in kinds and "train.mtl" not in kinds
    assert _audit_rows(run_dir) == before


def test_runner_without_privacy_runs_no_audit(tmp_path):
    # Execute: no scenario privacy, no DP centre
    run_dir, grid = run_runner(tmp_path, privacy=False, arms=["mtl"])
    # Assert
    assert not _audit_rows(run_dir)
    assert all(kind != "evaluate.mtl_audit" for _, kind, _ in grid.log)
    results = json.loads((run_dir / "results.json").read_text())
    assert {m["arm"] for m in results["metrics"] if m["split"] == "test"} == {"mtl"}
