"""The ``fedmammo`` command dispatches to each task and lists what is shipped."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from fedmammo import cli


def test_help_lists_commands_scenarios_and_recipes(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("simulate", "check", "report", "reproduce", "deploy"):
        assert f"  {command}" in out
    assert "fedavg_quick" in out and "share_gans" in out  # scenarios
    assert "periodic_sampling" in out and "mtl_finetune" in out  # recipes


def test_help_from_a_users_folder_lists_the_shipped_files_and_the_users_own(
    capsys, tmp_path, monkeypatch
):
    # Prepare: a study folder with its own scenario and recipe (no centres/ of its own)
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "my_study.yaml").write_text("{}")
    (tmp_path / "strategies").mkdir()
    (tmp_path / "strategies" / "my_recipe.yaml").write_text("{}")
    monkeypatch.chdir(tmp_path)
    shipped = Path(cli.__file__).resolve().parents[1]
    # Execute
    assert cli.main(["--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # Assert: the shipped ones by their path (it listed the user's folder instead before),
    # then the user's; the example command runs from here
    at = lines.index(f"shipped scenarios ({shipped / 'scenarios'}/):")
    assert "fedavg_quick" in lines[at + 1] and "my_study" not in lines[at + 1]
    assert lines[at + 2 : at + 4] == ["your scenarios (./scenarios/):", "  my_study"]
    at = lines.index(f"shipped strategy recipes ({shipped / 'strategies'}/):")
    assert "fedavg" in lines[at + 1] and "my_recipe" not in lines[at + 1]
    assert lines[at + 2 : at + 4] == [
        "your strategy recipes (./strategies/, looked up first by name):",
        "  my_recipe",
    ]
    assert lines[-1] == f"e.g. fedmammo simulate {shipped}/scenarios/fedavg_quick.yaml --quick"


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


def test_check_on_a_narrow_console_folds_its_lines_and_loses_no_text(monkeypatch):
    import io
    from pathlib import Path

    import yaml
    from rich.console import Console

    from fedmammo import simulate

    # Prepare: a 60-column console (a narrow terminal, or a log file's default 80)
    out = io.StringIO()
    monkeypatch.setattr(simulate, "console", Console(file=out, width=60))
    # Execute
    assert cli.main(["check", "scenarios/fedavg_quick.yaml"]) == 0
    # Assert: nothing wider than the console, the recipe's description whole (it was
    # cropped at the edge before), one message kind per line in the plan's "sends" column
    text = out.getvalue()
    assert max(map(len, text.splitlines())) <= 60
    description = yaml.safe_load(Path("strategies/fedavg.yaml").read_text())["description"]
    assert " ".join(description.split()) in " ".join(text.split())
    rows = [line.split("│") for line in text.splitlines() if line.startswith("│")]
    sends = [row[5].strip() for row in rows]  # │ arm │ seed │ centres │ rounds │ sends │
    assert rows and not any("," in cell for cell in sends)


def test_help_texts_say_what_check_is_and_give_every_default(capsys):
    # check --help: simulate's help, said to be simulate --check
    with pytest.raises(SystemExit):
        cli.main(["check", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("fedmammo check SCENARIO.yaml [OPTIONS] is fedmammo simulate")
    assert "--check is implied" in out and "usage: fedmammo check " in out
    # each command's usage names it as typed (it said python -m fedmammo.simulate)
    for command in ("simulate", "report", "reproduce", "deploy"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert capsys.readouterr().out.startswith(f"usage: fedmammo {command} ")
    assert cli.main(["check", "--bogus"]) == 2
    assert "unrecognized arguments: --bogus (see fedmammo check --help)" in capsys.readouterr().out
    # report --help: --out's defaults, not "see above"
    with pytest.raises(SystemExit):
        cli.main(["report", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "RUN_DIR/report.html for one run" in out and "./comparison.html for several" in out
    # deploy prepare --help: every option explained, the image size's default and its rule
    with pytest.raises(SystemExit):
        cli.main(["deploy", "prepare", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 256 192, or the scenario's); must match the scenario's image_size" in out
    for option in ("profile", "--scenario", "--data-dir", "--centre", "--role", "--data-seed"):
        assert f"{option} " in out


@pytest.mark.parametrize(("code", "ignored"), [(0, True), (2, False)])
def test_the_console_script_ignores_a_ctrl_c_only_after_a_finished_run(monkeypatch, code, ignored):
    # the installed `fedmammo` script is cli.run, which applies interrupt.exit_code
    from importlib.metadata import entry_points

    import fedmammo.interrupt

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "fedmammo"]
    assert script.value == "fedmammo.cli:run"
    handlers = []
    monkeypatch.setattr(fedmammo.interrupt.signal, "signal", lambda *a: handlers.append(a))
    monkeypatch.setattr(cli, "main", lambda: code)
    assert cli.run() == code
    assert handlers == ([(signal.SIGINT, signal.SIG_IGN)] if ignored else [])
