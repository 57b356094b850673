"""What ``--resume RUN_DIR --check`` says must be what the resumed run would do: a unit cut
after its last round, the checkpoints kept, and ``--set`` on a run that is finished."""

from __future__ import annotations

import json

import pytest
from bad_inputs.cli_cases import Case, make_run_folder, run_cli_in_process, write_tree

from fedmammo.methods.registry import PlanRow
from fedmammo.resume import _state

ALL_DONE = {
    "federated|0": {"round": 2, "done": True},
    "local-a|0": {"round": 2, "done": True},
    "local-b|0": {"round": 2, "done": True},
}


@pytest.fixture()
def scen(tmp_path):
    return write_tree(tmp_path, Case("resume", (), ()))


def test_a_unit_cut_in_its_test_evaluation_resumes_there(scen, monkeypatch):
    # Prepare: the federated arm trained both its rounds; killed before its test evaluation
    run = make_run_folder(scen, progress={**ALL_DONE, "federated|0": {"round": 2}})
    # Execute
    out = run_cli_in_process(["--resume", str(run), "--check"], monkeypatch)
    # Assert: not "resumes at 3 of 2"
    assert out.code == 0, out.text
    assert "training done (2 of 2 rounds); resumes at its test evaluation" in out.text
    assert "resumes at 3" not in out.text
    assert "units: 2 done (kept), 1 part done (resume where they stopped), 0 not started" in (
        out.text
    )


def test_the_checkpoint_count_says_what_it_counts(scen, monkeypatch):
    # Prepare: killed in round 3 of the federated arm; a checkpoint per completed round
    run = make_run_folder(scen, progress={"federated|0": {"round": 2}, "local-a|0": {"round": 1}})
    for arm, rounds in (("federated", 2), ("local-a", 1)):
        (run / "checkpoints" / arm).mkdir(parents=True)
        for rnd in range(1, rounds + 1):
            (run / "checkpoints" / arm / f"seed0_round{rnd:03d}.pt").write_bytes(b"x")
    # Execute
    out = run_cli_in_process(["--resume", str(run), "--check"], monkeypatch)
    # Assert: 3 files, for every completed round (not one per arm)
    assert out.code == 0, out.text
    assert "checkpoints: 3 model files (every completed round of each arm and seed)\n" in out.text


def test_set_on_a_finished_run_says_to_start_a_new_run(scen, monkeypatch):
    # Prepare: a finished run that started with --quick and a --set of its own
    run = make_run_folder(scen, quick=True, progress=ALL_DONE)
    invocation = json.loads((run / "invocation.json").read_text())
    invocation["sets"] = {"strategy.params.arms": ["federated", "local"]}
    (run / "invocation.json").write_text(json.dumps(invocation))
    # Execute
    out = run_cli_in_process(
        ["--resume", str(run), "--set", "strategy.params.rounds=3", "--check"], monkeypatch
    )
    # Assert: one line; the command of the new run keeps the run's own settings
    assert out.code == 2 and len(out.errors) == 1, out.text
    assert out.errors[0] == (
        f"error: --resume {run}: that run is finished (every unit done), so --set cannot "
        "change it; to change a setting, start a new run (without --resume): python -m "
        f"fedmammo.simulate {scen.resolve()} --quick --set "
        '\'strategy.params.arms=["federated", "local"]\' --set strategy.params.rounds=3'
    )


def test_set_on_a_run_half_done_is_still_refused_as_half_done(scen, monkeypatch):
    run = make_run_folder(scen, progress={**ALL_DONE, "federated|0": {"round": 2}})
    out = run_cli_in_process(["--resume", str(run), "--set", "seeds=[1]"], monkeypatch)
    assert out.code == 2 and out.errors == [
        f"error: --resume {run}: --set would change a run half done; resume it as it started, "
        "or start a new run with the change"
    ], out.text


@pytest.mark.parametrize(
    ("entry", "state"),
    [
        ({"round": 10}, "resumes at round 11 of 11..14"),  # the mtl model it starts from done
        ({"round": 12}, "rounds 11..12 kept, resumes at 13 of 14"),
        ({"round": 14}, "training done (4 of 4 rounds); resumes at its test evaluation"),
    ],
)
def test_a_fine_tuning_unit_counts_its_rounds_after_the_pre_training(entry, state):
    # mtl_finetune's fine-tuning continues the numbering: 4 rounds after 10 (it said "resumes
    # at 13 of 4" before, and "training done" after one round)
    row = PlanRow(arm="finetune_u1_0.5", seed=0, centres=("vtb",), rounds=4, first_round=11)
    assert _state(entry, row) == (str(entry["round"]), state)
