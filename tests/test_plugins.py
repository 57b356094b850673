"""FEDMAMMO_PLUGINS (fedmammo/plugins.py): a user's own model, registered by a module of their
own, in the command, in process and on Ray's centres; a module that cannot be imported; the
plugins recorded for --resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers.run_helpers import results, run_cli

from fedmammo.models import list_models, registry
from fedmammo.plugins import ENV_VAR, plugin_names
from fedmammo.simulate import main

PLUGIN = "fedmammo_test_plugin"
#: A plugin: one tiny classifier, each build noted (process id) in the file $PLUGIN_BUILDS.
PLUGIN_SOURCE = '''"""A user's own model for fedmammo."""
import os

from torch import nn

from fedmammo.models.registry import register_model


@register_model("plugin_tinynet")
def plugin_tinynet(*, width: int = 2) -> nn.Module:
    with open(os.environ["PLUGIN_BUILDS"], "a") as builds:
        builds.write(f"{os.getpid()}\\n")
    features = [nn.Conv2d(1, width, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*features, nn.Linear(width, 2))
'''
#: One round of FedAvg at one training centre, the plugin's model.
SCENARIO = """name: plugin_tiny
centres:
  - {profile: tiny, name: a, role: train}
  - {profile: tiny, name: t, role: test}
strategy: fedavg
strategy_overrides:
  params.rounds: 1
  params.arms: [federated]
  params.bootstrap: 0
  params.min_centres: 1
  params.model.name: plugin_tinynet
  params.model.options: {}
  params.train.steps_per_epoch: 1
image_size: [32, 24]
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The plugin module in its own folder (returned) and the tiny scenario using its model;
    the model registered in a copy of the registry and the module forgotten after the test."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"{PLUGIN}.py").write_text(PLUGIN_SOURCE)
    (tmp_path / "scenario.yaml").write_text(SCENARIO)
    monkeypatch.setenv("PLUGIN_BUILDS", str(tmp_path / "builds.txt"))
    list_models()  # the lazy families registered in the real registry first
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))
    monkeypatch.delitem(sys.modules, PLUGIN, raising=False)
    yield folder
    sys.modules.pop(PLUGIN, None)


def _argv(tmp_path: Path, *extra: str) -> list[str]:
    return [
        str(tmp_path / "scenario.yaml"),
        "--out",
        str(tmp_path / "out"),
        "--set",
        f"data_dir={tmp_path / 'data'}",
        *extra,
    ]


def _errors(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("error:")]


def test_plugin_names_are_the_variables_modules_in_order_once():
    assert plugin_names(" mymodels, mymethods,,mymodels ") == ["mymodels", "mymethods"]
    assert plugin_names("") == []


def test_without_the_plugin_its_model_is_unknown_at_check(tmp_path, plugin, monkeypatch, capsys):
    # Prepare: the module on the path, but not named in FEDMAMMO_PLUGINS
    monkeypatch.syspath_prepend(str(plugin))
    monkeypatch.delenv(ENV_VAR, raising=False)
    # Act
    code = main(_argv(tmp_path, "--check"))
    # Assert
    assert code == 2
    out = capsys.readouterr().out
    assert "unknown model 'plugin_tinynet'" in out
    assert "a model of your own: name its module in FEDMAMMO_PLUGINS" in out


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "no_such_plugin_module",
            "error: FEDMAMMO_PLUGINS=no_such_plugin_module: cannot import plugin module "
            "'no_such_plugin_module' (ModuleNotFoundError: No module named "
            "'no_such_plugin_module'); fix: put the folder holding it on PYTHONPATH (or pip "
            "install it)",
        ),
        (
            "plugins/mine.py",
            "error: FEDMAMMO_PLUGINS=plugins/mine.py: cannot import plugin module "
            "'plugins/mine.py' (ModuleNotFoundError: No module named 'plugins/mine'); fix: name "
            "the module (mine), with its folder on PYTHONPATH",
        ),
        (
            f"{PLUGIN},{PLUGIN}_twin",
            f"error: FEDMAMMO_PLUGINS={PLUGIN},{PLUGIN}_twin: cannot import plugin module "
            f"'{PLUGIN}_twin' (ValueError: model 'plugin_tinynet' registered twice)",
        ),
    ],
)
def test_a_plugin_that_cannot_be_imported_is_one_line_before_anything_is_made(
    tmp_path, plugin, monkeypatch, capsys, value, expected
):
    # Prepare: a twin of the plugin registering the same model name again
    (plugin / f"{PLUGIN}_twin.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(plugin))
    monkeypatch.setenv(ENV_VAR, value)
    monkeypatch.delitem(sys.modules, f"{PLUGIN}_twin", raising=False)
    for extra in (["--check"], []):
        # Act: at --check and at a run's start
        code = main(_argv(tmp_path, *extra))
        # Assert
        out = capsys.readouterr().out
        assert code == 2 and _errors(out) == [expected], out
        assert "Traceback" not in out
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


def test_a_plugin_model_runs_in_process_and_resume_asks_for_the_plugin(
    tmp_path, plugin, monkeypatch, capsys
):
    # Prepare
    monkeypatch.syspath_prepend(str(plugin))
    monkeypatch.setenv(ENV_VAR, PLUGIN)
    # Act: one round, every centre in this process
    code = main(_argv(tmp_path, "--backend", "inprocess"))
    # Assert: done with the plugin's model, which this process built; the plugin recorded
    assert code == 0, capsys.readouterr().out
    (run_dir,) = (tmp_path / "out").glob("*/*")
    res = results(run_dir)
    assert res["failures"] == []
    assert {r["arm"] for r in res["metrics"] if r["metric"] == "auc"} == {"federated"}
    assert "name: plugin_tinynet" in (run_dir / "scenario.resolved.yaml").read_text()
    assert (tmp_path / "builds.txt").read_text().split()  # built here (one process)
    assert json.loads((run_dir / "invocation.json").read_text())["plugins"] == [PLUGIN]
    capsys.readouterr()

    # Act: --resume without the plugin named
    monkeypatch.setenv(ENV_VAR, "")
    code = main(["--resume", str(run_dir), "--check"])
    # Assert: one line, with the command that resumes it
    out = capsys.readouterr().out
    assert code == 2
    assert _errors(out) == [
        f"error: --resume {run_dir}: the run started with FEDMAMMO_PLUGINS={PLUGIN}; this "
        f"process lacks {PLUGIN} (FEDMAMMO_PLUGINS=''); fix: FEDMAMMO_PLUGINS={PLUGIN} python "
        f"-m fedmammo.simulate --resume {run_dir}"
    ], out
    # ... and with it, the run can be resumed
    monkeypatch.setenv(ENV_VAR, PLUGIN)
    assert main(["--resume", str(run_dir), "--check"]) == 0, capsys.readouterr().out


@pytest.mark.slow
def test_ray_centres_import_the_plugins_of_the_variable(tmp_path, plugin):
    # Prepare: the command in its own process, the plugin's folder on its PYTHONPATH
    env = {"PYTHONPATH": str(plugin), ENV_VAR: PLUGIN}
    # Act: one round on a private Ray instance (the default backend)
    argv = [str(tmp_path / "scenario.yaml"), "--set", f"data_dir={tmp_path / 'data'}"]
    proc, run_dir = run_cli(argv, out=tmp_path / "out", env=env)
    # Assert: done, no centre failed, and processes other than the command built the model
    assert proc.returncode == 0 and run_dir is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = results(run_dir)
    assert res["failures"] == [], res["failures"]
    assert res["meta"]["backend"] == "ray"
    assert {r["centre"] for r in res["metrics"] if r["metric"] == "auc"} >= {"a", "t"}
    assert len(set((tmp_path / "builds.txt").read_text().split())) >= 2
