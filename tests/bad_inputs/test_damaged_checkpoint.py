"""``--resume RUN_DIR`` (``--check`` too) checks every checkpoint against the sha256 its
sidecar recorded: a damaged one is one line naming it, and the run is not resumed from it;
intact ones, and an older run's checkpoints without sidecars, resume as before."""

from __future__ import annotations

import pytest
import torch
from bad_inputs.cli_cases import (
    Case,
    folder_digest,
    make_run_folder,
    run_cli_in_process,
    write_tree,
)
from flwr.app import ArrayRecord

from fedmammo.config.loading import RESOLVED
from fedmammo.evaluation.results import RunRecorder
from fedmammo.federation.orchestrator import Orchestrator
from fedmammo.methods import load_scenario
from fedmammo.models import build_model
from fedmammo.resume import read_runspec

#: Killed in round 2 of local-a: federated trained both its rounds, local-a one.
PROGRESS = {"federated|0": {"round": 2}, "local-a|0": {"round": 1}}
FIX = "the run cannot be resumed as is: restore it from a backup, or start a new run"


@pytest.fixture()
def run(tmp_path):
    """A run folder killed after round 2 of the federated arm and round 1 of local-a, its
    checkpoints written by the server's own ``Orchestrator.checkpoint`` (with sidecars)."""
    run = make_run_folder(write_tree(tmp_path, Case("ckpt", (), ())), progress=PROGRESS)
    orc = Orchestrator(
        grid=None,
        spec=read_runspec(run),
        scenario=load_scenario(run / RESOLVED),
        recorder=RunRecorder(run, resume=True),
    )
    spec = {"name": "mammo_cnn", "options": {"width": 4, "depth": 3, "norm": "batch"}}
    for arm, rnd in (("federated", 1), ("federated", 2), ("local-a", 1)):
        arrays = ArrayRecord(build_model(spec["name"], **spec["options"]).state_dict())
        orc.checkpoint(arm, 0, rnd, arrays, model=spec)
    return run


def _zero_tensor_bytes(path) -> None:
    """Zero one tensor's bytes in place (the zip and torch.load do not notice)."""
    state = torch.load(path, weights_only=True)
    raw = max((v.numpy().tobytes() for v in state.values()), key=len)
    data = path.read_bytes()
    start = data.find(raw)
    path.write_bytes(data[:start] + bytes(len(raw)) + data[start + len(raw) :])


def test_check_names_each_damaged_checkpoint_and_says_the_run_cannot_be_resumed(run, monkeypatch):
    # Prepare: one checkpoint's bytes zeroed, another cut short, a third deleted
    ckpts = run / "checkpoints"
    _zero_tensor_bytes(ckpts / "federated" / "seed0_round002.pt")
    truncated = ckpts / "local-a" / "seed0_round001.pt"
    truncated.write_bytes(truncated.read_bytes()[:3000])
    (ckpts / "federated" / "seed0_round001.pt").unlink()
    before = folder_digest(run)
    # Execute
    out = run_cli_in_process(["--resume", str(run), "--check"], monkeypatch)
    # Assert: one line per damaged file, no "can be resumed", the folder as it was
    assert out.code == 2 and "Traceback" not in out.text, out.text
    assert out.errors == [
        f"error: --resume {run}: checkpoint checkpoints/federated/seed0_round001.pt: missing "
        f"(its sidecar seed0_round001.json is there); {FIX}",
        f"error: --resume {run}: checkpoint checkpoints/federated/seed0_round002.pt: damaged: "
        "its sha256 is not the one recorded in seed0_round002.json when it was written (the "
        f"file changed on disk); {FIX}",
        f"error: --resume {run}: checkpoint checkpoints/local-a/seed0_round001.pt: damaged: "
        "its sha256 is not the one recorded in seed0_round001.json when it was written (the "
        f"file changed on disk); {FIX}",
    ]
    assert (
        "checkpoints: 2 model files (every completed round of each arm and seed); 0 of 2 with "
        "a sidecar match the sha256 it recorded\n" in out.text
    )
    assert "can be resumed" not in out.text
    assert folder_digest(run) == before


def test_resume_of_a_damaged_run_is_refused_before_anything_runs(run, monkeypatch):
    # Prepare
    _zero_tensor_bytes(run / "checkpoints" / "federated" / "seed0_round002.pt")
    before = folder_digest(run)
    # Execute: without --check (run_cli_in_process fails the test if the run starts)
    out = run_cli_in_process(["--resume", str(run)], monkeypatch)
    # Assert
    assert out.code == 2 and len(out.errors) == 1, out.text
    assert out.errors[0].startswith(
        f"error: --resume {run}: checkpoint checkpoints/federated/seed0_round002.pt: damaged: "
    )
    assert folder_digest(run) == before


def test_intact_checkpoints_are_counted_as_checked_and_the_run_can_be_resumed(run, monkeypatch):
    # Prepare: an older run's checkpoint too (no sidecar: not checked, resumed as before)
    (run / "checkpoints" / "local-b").mkdir()
    (run / "checkpoints" / "local-b" / "seed0_round001.pt").write_bytes(b"x")
    # Execute
    out = run_cli_in_process(["--resume", str(run), "--check"], monkeypatch)
    # Assert
    assert out.code == 0 and out.errors == [], out.text
    assert (
        "checkpoints: 4 model files (every completed round of each arm and seed); 3 of 3 with "
        "a sidecar match the sha256 it recorded\n" in out.text
    )
    assert "can be resumed" in out.text
