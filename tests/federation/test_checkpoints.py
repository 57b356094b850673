"""The server's checkpoints (``Orchestrator.checkpoint``): each a plain state dict written
whole, with a sidecar JSON (its sha256, arm, seed, round, model spec, scenario, code) that
makes a damaged file one error line on resume, and that docs/reuse.md rebuilds the model from."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord
from helpers.flower_messages import run_tiny_in_process
from sklearn.metrics import roc_auc_score

from fedmammo.config.loading import write_resolved
from fedmammo.data.dicom import load_mammogram
from fedmammo.data.prepare import centre_data_dir
from fedmammo.errors import DataError
from fedmammo.federation.checkpoints import read_checkpoint, sidecar_path
from fedmammo.federation.orchestrator import Orchestrator
from fedmammo.methods import load_scenario
from fedmammo.models import build_model

TINY = Path(__file__).resolve().parents[1] / "methods" / "fedavg" / "tiny.yaml"
SETS = {"strategy.params.arms": ["federated"]}
SPEC = {"name": "mammo_cnn", "options": {"width": 4, "depth": 3, "norm": "batch"}}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny FedAvg scenario's federated arm (2 rounds, FedBN) run in process, its folder
    as ``simulate`` leaves it: (data's parent, run folder)."""
    tmp = tmp_path_factory.mktemp("checkpoints")
    with pytest.MonkeyPatch.context() as monkeypatch:
        run_tiny_in_process(TINY, tmp, monkeypatch, "fedavg", SETS)
    scenario = load_scenario(TINY, sets={"data_dir": str(tmp / "data"), **SETS})
    write_resolved(tmp / "run", scenario, quick=False)  # as python -m fedmammo.simulate does
    return tmp, tmp / "run"


def _zero_largest_tensor(path: Path) -> None:
    """Zero the bytes of the checkpoint's largest tensor in place: the zip still opens and
    torch.load still reads it (the damage the auditor made with a hex editor)."""
    state = torch.load(path, weights_only=True)
    raw = max((v.numpy().tobytes() for v in state.values()), key=len)
    data = path.read_bytes()
    start = data.find(raw)
    assert start > 0 and any(raw)
    path.write_bytes(data[:start] + bytes(len(raw)) + data[start + len(raw) :])


def _orchestrator(run_dir: Path) -> Orchestrator:
    """An orchestrator with only what writing a checkpoint reads."""
    scenario = SimpleNamespace(
        image_size=(32, 24), name="tiny", recipe=SimpleNamespace(name="fedavg")
    )
    recorder = SimpleNamespace(meta={"git_commit": "abc123", "git_dirty": False, "versions": {}})
    return Orchestrator(
        grid=None, spec=SimpleNamespace(run_dir=str(run_dir)), scenario=scenario, recorder=recorder
    )


def test_every_checkpoint_has_a_sidecar_with_its_hash_and_what_it_is(tiny_run):
    # Prepare
    _, run = tiny_run
    meta = json.loads((run / "results.json").read_text())["meta"]
    # Execute
    files = sorted((run / "checkpoints" / "federated").iterdir())
    # Assert: a .pt and its .json per round, no temporary file left
    assert [p.name for p in files] == [
        "seed0_round001.json",
        "seed0_round001.pt",
        "seed0_round002.json",
        "seed0_round002.pt",
    ]
    for rnd in (1, 2):
        path = run / "checkpoints" / "federated" / f"seed0_round{rnd:03d}.pt"
        about = json.loads(sidecar_path(path).read_text())
        assert about == {
            "file": path.name,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "bytes": path.stat().st_size,
            "arm": "federated",
            "seed": 0,
            "round": rnd,
            "model": SPEC,
            "image_size": [32, 24],
            "scenario": "tiny",
            "strategy": "fedavg",
            "git_commit": meta["git_commit"],
            "git_dirty": meta["git_dirty"],
            "fedmammo_version": meta["versions"]["fedmammo"],
        }
        # the format is unchanged: a plain state dict, weights only
        state = torch.load(path, weights_only=True)
        assert set(state) == set(build_model(SPEC["name"], **SPEC["options"]).state_dict())


@pytest.mark.usefixtures("one_torch_thread")
def test_the_documented_recipe_reproduces_a_test_only_centres_auroc(tiny_run):
    # Prepare: docs/reuse.md, "Check it against the run": the final checkpoint and its sidecar
    _, run = tiny_run
    path = run / "checkpoints" / "federated" / "seed0_round002.pt"
    about = json.loads(path.with_suffix(".json").read_text())
    model = build_model(about["model"]["name"], **about["model"]["options"])
    model.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    height, width = about["image_size"]
    spec = json.loads((run / "runspec.json").read_text())
    scenario = load_scenario(run / "scenario.resolved.yaml", quick=spec["quick"])
    folder = centre_data_dir(scenario.data_dir, scenario.resolved_profiles["t"], scenario.data_seed)
    manifest = pd.read_csv(folder / f"cache_{height}x{width}" / "manifest.csv")
    test = manifest[(manifest["split"] == "test") & manifest["malignant"].notna()]
    # Execute: the DICOMs read as the cache reads them, then the model's score of class 1
    x = np.stack([load_mammogram(p, (height, width)) for p in test["path"]])
    x = np.rint(x * 65535).astype(np.uint16).astype(np.float32) / 65535
    with torch.no_grad():
        scores = torch.softmax(model(torch.from_numpy(x)[:, None]), dim=1)[:, 1].numpy()
    auroc = roc_auc_score(test["malignant"].astype(int), scores)
    # Assert: the test-only centre's recorded test AUROC (it uses the averaged BatchNorm)
    results = json.loads((run / "results.json").read_text())
    (recorded,) = [
        r["value"]
        for r in results["metrics"]
        if (r["arm"], r["centre"], r["split"], r["metric"]) == ("federated", "t", "test", "auc")
        and r["segment"] is None
    ]
    assert len(test) >= 10 and 0.0 < recorded < 1.0
    assert auroc == pytest.approx(recorded, abs=1e-12)


def test_resuming_from_a_damaged_checkpoint_is_one_error_and_keeps_the_results(
    tiny_run, tmp_path, monkeypatch
):
    # Prepare: the run as if killed after round 1, then round 1's checkpoint damaged on disk
    data_tmp, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    results = json.loads((copy / "results.json").read_text())
    results["progress"] = {"federated|0": {"round": 1}}
    results["metrics"] = [r for r in results["metrics"] if r["round"] == 1]
    (copy / "results.json").write_text(json.dumps(results))
    ckpt = copy / "checkpoints" / "federated" / "seed0_round001.pt"
    _zero_largest_tensor(ckpt)
    assert torch.load(ckpt, weights_only=True)  # PyTorch alone reads the damage silently
    # Execute: resumed as flwr run ... resume=true does (no --resume --check before it)
    with pytest.raises(DataError) as caught:
        run_tiny_in_process(TINY, data_tmp, monkeypatch, "fedavg", SETS, run_dir=copy, resume=True)
    # Assert: one line naming the file and what is wrong; the completed round kept as it was
    assert str(caught.value) == (
        f"checkpoint {ckpt}: damaged: its sha256 is not the one recorded in "
        "seed0_round001.json when it was written (the file changed on disk); the run cannot "
        "go on from it: restore it from a backup, or start a new run"
    )
    after = json.loads((copy / "results.json").read_text())
    assert after["progress"] == results["progress"]
    assert after["metrics"] == results["metrics"]


def test_a_truncated_checkpoint_is_one_line_naming_it(tiny_run, tmp_path):
    # Prepare: a checkpoint cut short, with and without its sidecar
    _, run = tiny_run
    path = tmp_path / "seed0_round002.pt"
    shutil.copy(run / "checkpoints" / "federated" / path.name, path)
    path.write_bytes(path.read_bytes()[:3000])
    # Execute
    with pytest.raises(DataError) as with_sidecar:
        shutil.copy(run / "checkpoints" / "federated" / "seed0_round002.json", tmp_path)
        read_checkpoint(path)
    sidecar_path(path).unlink()
    with pytest.raises(DataError) as without:
        read_checkpoint(path)
    # Assert: the hash says it when there is a sidecar; PyTorch's reason when there is none
    assert "damaged: its sha256 is not the one recorded in seed0_round002.json" in str(
        with_sidecar.value
    )
    assert str(without.value).startswith(
        f"checkpoint {path}: damaged, PyTorch cannot read it (PytorchStreamReader failed "
    )
    assert str(without.value).endswith(
        "the run cannot go on from it: restore it from a backup, or start a new run"
    )
    assert "\n" not in str(without.value)


def test_a_checkpoint_without_a_sidecar_loads_as_before(tiny_run, tmp_path):
    # Prepare: an older run's checkpoint: no sidecar
    _, run = tiny_run
    path = tmp_path / "seed0_round002.pt"
    shutil.copy(run / "checkpoints" / "federated" / path.name, path)
    # Execute
    state = read_checkpoint(path)
    # Assert
    expected = torch.load(path, weights_only=True)
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)


@pytest.mark.parametrize(
    ("sidecar", "problem"),
    [
        ("{not json", "its sidecar seed0_round001.json is damaged (Expecting property name"),
        ('{"arm": "federated"}', "its sidecar seed0_round001.json is damaged (no 'sha256'"),
    ],
    ids=["not-json", "no-hash"],
)
def test_a_damaged_sidecar_is_one_line_naming_it(tiny_run, tmp_path, sidecar, problem):
    _, run = tiny_run
    path = tmp_path / "seed0_round001.pt"
    shutil.copy(run / "checkpoints" / "federated" / path.name, path)
    sidecar_path(path).write_text(sidecar)
    with pytest.raises(DataError) as caught:
        read_checkpoint(path)
    assert str(caught.value).startswith(f"checkpoint {path}: {problem}")
    assert "without the sidecar the checkpoint would be read unchecked" in str(caught.value)


def test_a_missing_checkpoint_is_one_line_naming_it(tmp_path):
    path = tmp_path / "checkpoints" / "federated" / "seed0_round003.pt"
    with pytest.raises(DataError) as caught:
        read_checkpoint(path)
    assert str(caught.value) == (
        f"{path}: no such checkpoint (deleted or moved since the run wrote it); restore it "
        "from a backup, or start a new run"
    )


def test_a_spec_is_recorded_only_when_it_builds_the_weights_and_a_rewrite_is_rehashed(tmp_path):
    # Prepare: weights of SPEC; a caller that names another model (a task head on an encoder)
    orc = _orchestrator(tmp_path)
    torch.manual_seed(0)
    first = ArrayRecord(build_model(SPEC["name"], **SPEC["options"]).state_dict())
    wider = {"name": "mammo_cnn", "options": {**SPEC["options"], "width": 8}}
    # Execute: round 1 written with a spec that does not fit, then again (a retrained round)
    path = orc.checkpoint("federated", 0, 1, first, model=wider)
    wrong = json.loads(sidecar_path(path).read_text())
    second = ArrayRecord(build_model(SPEC["name"], **SPEC["options"]).state_dict())
    orc.checkpoint("federated", 0, 1, second, model=SPEC)
    right = json.loads(sidecar_path(path).read_text())
    # Assert: null rather than a spec that cannot rebuild it; the sidecar follows the new bytes
    assert wrong["model"] is None
    assert right["model"] == SPEC
    assert right["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() != wrong["sha256"]
    assert (right["scenario"], right["git_commit"], right["round"]) == ("tiny", "abc123", 1)
    loaded = read_checkpoint(path)
    assert all(torch.equal(loaded[k], v) for k, v in second.to_torch_state_dict().items())
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "seed0_round001.json",
        "seed0_round001.pt",
    ]


def test_a_checkpoint_copied_with_its_sidecar_over_another_round_is_refused(tmp_path):
    # Prepare: rounds 1 and 2 of one arm, then round 1's file and sidecar copied over round 2's
    orc = _orchestrator(tmp_path)
    for rnd in (1, 2):
        orc.checkpoint(
            "fed", 0, rnd, ArrayRecord(build_model(SPEC["name"], **SPEC["options"]).state_dict())
        )
    one, two = orc.checkpoint_path("fed", 0, 1), orc.checkpoint_path("fed", 0, 2)
    two.write_bytes(one.read_bytes())
    sidecar_path(two).write_text(sidecar_path(one).read_text())
    # Execute / Assert: its sha256 matches, but the sidecar names the other file
    with pytest.raises(DataError) as err:
        read_checkpoint(two)
    assert str(err.value) == (
        f"checkpoint {two}: its sidecar seed0_round002.json describes seed0_round001.pt, not this "
        "file; the run cannot go on from it: restore it from a backup, or start a new run"
    )
