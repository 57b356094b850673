"""``--resume RUN_DIR`` reads only the run folder: the scenario as resolved at the start, what
is done (results.json progress), the ledgers (privacy.json); it states what it restores, and
a new run writes all of that before any data is made."""

from __future__ import annotations

import contextlib
import json

import pytest
import yaml
from bad_inputs.cli_cases import SCENARIO, Case, make_run_folder, run_cli_in_process, write_tree

from fedmammo import simulate
from fedmammo.config.loading import RESOLVED


@pytest.fixture()
def scen(tmp_path):
    return write_tree(tmp_path, Case("resume", (), ()))


def test_resume_uses_the_folders_copy_not_the_edited_files(scen, tmp_path, monkeypatch):
    # Prepare: a run killed after round 1 of the federated arm; then its files are edited
    run = make_run_folder(scen, progress={"federated|0": {"round": 1}})
    recipe = tmp_path / "strategies" / "fa.yaml"
    recipe.write_text(recipe.read_text().replace("rounds: 2", "rounds: 7"))
    (tmp_path / "centres" / "site.yaml").write_text("broken: [\n")
    started = {}
    monkeypatch.setattr(
        simulate, "execute", lambda spec, base, args: started.update(spec=spec) or 0
    )
    # Execute
    check = run_cli_in_process(["--resume", str(run), "--check"], monkeypatch)
    monkeypatch.setattr(
        simulate, "execute", lambda spec, base, args: started.update(spec=spec) or 0
    )
    code = simulate.main([str(scen), "--resume", str(run)])  # same scenario argument: accepted
    # Assert: the plan and the restore table come from the resolved copy (2 rounds)
    assert check.code == 0, check.text
    assert "rounds 1..1 kept, resumes at 2 of 2" in check.text
    assert "not started" in check.text  # the local arms
    assert "units: 0 done (kept), 1 part done" in check.text
    assert "can be resumed" in check.text
    assert code == 0
    spec = started["spec"]
    assert spec.resume and spec.sets == {} and spec.scenario_file == str(run / RESOLVED)
    assert json.loads((run / "runspec.json").read_text())["resume"] is True


def test_resume_with_out_is_one_line_and_leaves_the_folder_as_it_was(scen, tmp_path, monkeypatch):
    # --out used to be ignored silently: the run went on in its own folder
    from bad_inputs.cli_cases import folder_digest

    run = make_run_folder(scen, progress={"federated|0": {"round": 1}})
    before = folder_digest(run)
    out = run_cli_in_process(["--resume", str(run), "--out", str(tmp_path / "x")], monkeypatch)
    assert out.code == 2 and len(out.errors) == 1 and "Traceback" not in out.text, out.text
    assert out.errors[0] == (
        f"error: --resume {run}: --out would not move the run (it goes on in its own folder); "
        "drop --out, or start a new run there"
    )
    assert folder_digest(run) == before and not (tmp_path / "x").exists()


def test_resume_keeps_where_the_run_started_unless_told(scen, monkeypatch):
    # a run started in process (a sweep's spec too) or on a cluster resumes there
    run = make_run_folder(scen, progress={"federated|0": {"round": 1}})
    spec = json.loads((run / "runspec.json").read_text())
    (run / "runspec.json").write_text(json.dumps({**spec, "backend": "inprocess"}))
    started = {}
    monkeypatch.setattr(
        simulate, "execute", lambda spec, base, args: started.update(args=args) or 0
    )
    assert simulate.main(["--resume", str(run)]) == 0
    assert (started["args"].backend, started["args"].ray_address) == ("inprocess", None)
    assert simulate.main(["--resume", str(run), "--backend", "ray"]) == 0
    assert json.loads((run / "runspec.json").read_text())["backend"] == "ray"  # said: kept
    # a cluster's address is kept as given (checked first: here nothing answers)
    (run / "runspec.json").write_text(json.dumps({**spec, "ray_address": "127.0.0.1:1"}))
    out = run_cli_in_process(["--resume", str(run), "--check"], monkeypatch)
    assert "backend ray on the Ray cluster at 127.0.0.1:1, as the run started" in out.text
    assert out.code == 2 and "--ray-address 127.0.0.1:1: cannot attach" in out.errors[0]


def test_resume_states_the_ledgers_it_restores(scen, monkeypatch):
    run = make_run_folder(scen, progress={"federated|0": {"round": 2, "done": True}})
    record = {
        "centre": "a",
        "arm": "federated",
        "seed": 0,
        "ledger": "federated|0",
        "ledger_epsilon": 1.25,
    }
    (run / "privacy.json").write_text(json.dumps({"records": [record]}))
    (run / "checkpoints" / "federated").mkdir(parents=True)
    (run / "checkpoints" / "federated" / "seed0_round002.pt").write_bytes(b"x")
    out = run_cli_in_process(["--resume", str(run), "--check"], monkeypatch)
    assert out.code == 0, out.text
    assert (
        "each centre restores its own from its state folder and reports a disagreement): "
        "a federated|0: eps 1.25" in out.text
    )
    assert "checkpoints: 1 model files" in out.text
    assert "done: kept" in out.text


def test_resume_of_a_sweep_reads_each_points_copy(tmp_path, monkeypatch):
    case = Case("sweep", (), (), scenario=SCENARIO + "sweep: {seed: [3, 4]}\n")
    run = make_run_folder(write_tree(tmp_path, case))
    (run / "points" / "seed=3" / "DONE").write_text("ok\n")
    (run / "points" / "seed=3" / "results.json").write_text(
        json.dumps({"metrics": [], "progress": {}})
    )
    out = run_cli_in_process(["--resume", str(run), "--check"], monkeypatch)
    assert out.code == 0, out.text
    assert "point done: kept" in out.text
    assert "seed=4" in out.text and "not started" in out.text
    # a point's copy that is gone cannot be guessed from the (maybe edited) original
    (run / "points" / "seed=4" / RESOLVED).unlink()
    out = run_cli_in_process(["--resume", str(run), "--check"], monkeypatch)
    assert out.code == 2 and "sweep point seed=4 has no scenario.resolved.yaml" in out.errors[0]


def test_a_new_run_writes_its_folder_only_after_the_plan_and_before_any_data(
    scen, tmp_path, monkeypatch
):
    # Prepare: stop where the run would start
    started = {}
    monkeypatch.setattr(
        simulate, "execute", lambda spec, base, args: started.update(spec=spec) or 0
    )
    # Execute
    code = simulate.main([str(scen), "--set", "strategy.params.rounds=3"])
    # Assert: resolved copy (overrides applied, self-contained), invocation, runspec
    assert code == 0
    spec = started["spec"]
    run = tmp_path / "runs" / "scen"
    (folder,) = run.iterdir()
    assert spec.run_dir == str(folder) and spec.scenario_file == str(folder / RESOLVED)
    resolved = yaml.safe_load((folder / RESOLVED).read_text())
    assert resolved["strategy"]["params"]["rounds"] == 3
    assert resolved["strategy_overrides"] == {} and set(resolved["resolved_profiles"]) == {
        "a",
        "b",
        "t",
    }
    invocation = json.loads((folder / "invocation.json").read_text())
    assert invocation["sets"] == {"strategy.params.rounds": 3}
    assert json.loads((folder / "runspec.json").read_text())["scenario_file"] == str(
        folder / RESOLVED
    )
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_a_run_killed_while_preparing_data_can_be_resumed(scen, monkeypatch):
    # Prepare: a new run folder; the process dies while the centres' data is prepared
    run = make_run_folder(scen)

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(simulate, "prepare_data", killed)
    monkeypatch.setattr(simulate, "run_log", lambda run_dir: contextlib.nullcontext())
    # Execute
    code = simulate.main(["--resume", str(run)])
    out = run_cli_in_process(["--resume", str(run), "--check"], monkeypatch)
    # Assert: the run spec was saved before the data, so the folder is resumable
    assert code == 130  # interrupted (fedmammo.interrupt.INTERRUPTED)
    assert json.loads((run / "runspec.json").read_text())["resume"] is True
    assert out.code == 0, out.text
    assert "units: 0 done (kept), 0 part done (resume where they stopped), 3 not started" in (
        out.text
    )


def test_run_saves_its_spec_before_preparing_data(scen, tmp_path, monkeypatch):
    # A sweep point killed while its data is prepared leaves a resumable point folder.
    from fedmammo.federation.runspec import RunSpec

    point = tmp_path / "point"
    point.mkdir()

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(simulate, "prepare_data", killed)
    spec = RunSpec(scenario_file=str(scen), run_dir=str(point))
    with pytest.raises(KeyboardInterrupt):
        simulate.run(spec, simulate.load_scenario(scen))
    assert json.loads((point / "runspec.json").read_text())["scenario_file"] == str(scen)


def test_two_runs_in_the_same_second_get_two_folders(tmp_path):
    first = simulate._new_run_dir(tmp_path, "s")
    second = simulate._new_run_dir(tmp_path, "s")
    assert first != second and first.is_dir() and second.is_dir()
