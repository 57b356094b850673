"""The ``fedmammo`` command dispatches to each task and lists what is shipped."""

from __future__ import annotations

from fedmammo import cli


def test_help_lists_commands_scenarios_and_recipes(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("simulate", "check", "report", "reproduce", "deploy"):
        assert f"  {command}" in out
    assert "fedavg_quick" in out and "share_gans" in out  # scenarios
    assert "periodic_sampling" in out and "mtl_finetune" in out  # recipes


def test_unknown_command_is_one_line_and_exit_2(capsys):
    assert cli.main(["simulat"]) == 2
    assert "unknown command 'simulat'" in capsys.readouterr().err


def test_check_validates_a_shipped_scenario_without_running_it(capsys):
    assert cli.main(["check", "scenarios/fedavg_tiny.yaml"]) == 0
    assert "valid" in capsys.readouterr().out


def test_report_of_a_missing_folder_is_one_line(capsys, tmp_path):
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_reproduce_of_a_missing_folder_is_one_line(capsys, tmp_path):
    assert cli.main(["reproduce", str(tmp_path / "nope"), "--out", str(tmp_path / "r.md")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'}: no such file or folder\n"
