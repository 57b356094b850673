"""``--resume`` refuses a run folder whose resolved scenario was edited after the run wrote it:
its finished rounds used the settings as written (the same rule as refusing ``--set``)."""

from __future__ import annotations

from bad_inputs.cli_cases import SCENARIO, Case, make_run_folder, run_cli_in_process, write_tree

from fedmammo.config.loading import RESOLVED, edited_resolved


def test_a_resume_refuses_a_resolved_scenario_edited_after_the_start(tmp_path, monkeypatch):
    # Prepare: a run killed after round 1, then its resolved copy edited (the learning rate)
    scen = write_tree(tmp_path, Case("edited", (), ()))
    run = make_run_folder(scen, progress={"federated|0": {"round": 1}})
    resolved = run / RESOLVED
    assert not edited_resolved(resolved)
    text = resolved.read_text()
    assert "lr: " in text
    resolved.write_text(text.replace("lr: ", "lr: 5", 1))
    # Execute
    out = run_cli_in_process(["--resume", str(run)], monkeypatch)
    # Assert: one line naming the file; a copy written before the seal existed is accepted
    assert out.code == 2 and edited_resolved(resolved)
    assert out.errors == [
        f"error: --resume {run}: {RESOLVED} was edited after the run wrote it; a resumed run "
        "must go on with the settings its finished rounds used (restore the file, or start a "
        "new run with the changed scenario)"
    ]
    resolved.write_text(text.partition("\n")[2])  # no seal line: an older run folder
    assert not edited_resolved(resolved)


def test_an_edited_sweep_points_copy_is_refused_too(tmp_path, monkeypatch):
    scen = write_tree(
        tmp_path, Case("sweep", (), (), scenario=SCENARIO + "sweep: {seed: [3, 4]}\n")
    )
    run = make_run_folder(scen)
    point = run / "points" / "seed=4" / RESOLVED
    point.write_text(point.read_text().replace("seeds:\n- 4", "seeds:\n- 5"))
    out = run_cli_in_process(["--resume", str(run)], monkeypatch)
    assert out.code == 2 and f"points/seed=4/{RESOLVED} was edited" in out.errors[0]
