"""Your own models and methods: the modules ``FEDMAMMO_PLUGINS`` names, imported in every process.

A plugin is an importable module (on ``PYTHONPATH``) that registers models
(:func:`fedmammo.models.registry.register_model`) or methods
(:func:`fedmammo.methods.registry.register`) when imported. ``FEDMAMMO_PLUGINS`` lists them,
comma-separated; every process that builds fedmammo's apps imports them once: the
``simulate`` / ``fedmammo`` command (before it checks a scenario), the ClientApp and the
ServerApp (:mod:`fedmammo.apps`, :mod:`fedmammo.federation.client_app`: Ray's workers and
``flwr-clientapp`` processes import those). Each process reads its own environment: Ray's
workers inherit the command's, and a deployed site's SuperNode its own (the site decides
what code it runs; the server never names modules to a centre).

The run folder's ``invocation.json`` records the plugins a run started with, and
``--resume`` refuses, in one line, to go on without one of them (:func:`require_plugins_of`).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from fedmammo.errors import ConfigError

__all__ = ["ENV_VAR", "load_plugins", "plugin_names", "require_plugins_of"]

ENV_VAR = "FEDMAMMO_PLUGINS"


def plugin_names(value: str | None = None) -> list[str]:
    """The module names of ``value`` (default: the ``FEDMAMMO_PLUGINS`` of this process),
    in order, without blanks or repeats."""
    text = os.environ.get(ENV_VAR, "") if value is None else value
    return list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))


def load_plugins() -> list[str]:
    """Import every module ``FEDMAMMO_PLUGINS`` names (a module imported already is not
    imported again) and return their names; ConfigError, one line naming the variable, the
    module and the error, for one that cannot be imported."""
    names = plugin_names()
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a plugin's own error too: one line
            reason = (str(exc).strip().splitlines() or [""])[0]
            raise ConfigError(
                f"{ENV_VAR}={os.environ.get(ENV_VAR, '')}: cannot import plugin module "
                f"{name!r} ({type(exc).__name__}: {reason}){_hint(name, exc)}"
            ) from None
    return names


def _hint(name: str, exc: Exception) -> str:
    """The fix for a module that is not found: a file path given for a module name, or a
    folder missing from PYTHONPATH."""
    if not isinstance(exc, ModuleNotFoundError) or exc.name not in (name, name.split(".")[0]):
        return ""
    if name.endswith(".py") or "/" in name or os.sep in name:
        stem = Path(name).stem
        return f"; fix: name the module ({stem}), with its folder on PYTHONPATH"
    return "; fix: put the folder holding it on PYTHONPATH (or pip install it)"


def require_plugins_of(run_dir: Path, invocation: str = "invocation.json") -> None:
    """ConfigError (one line, with the command that resumes it) when the run in ``run_dir``
    started with plugin modules this process's ``FEDMAMMO_PLUGINS`` does not name. Nothing
    for a run folder from before plugins were recorded, or a damaged one (``--resume`` says
    what is wrong with it)."""
    try:
        started = json.loads((Path(run_dir) / invocation).read_text()).get("plugins") or []
    except (OSError, ValueError, AttributeError):
        return
    if not isinstance(started, list):
        return
    missing = [name for name in started if name not in plugin_names()]
    if not missing:
        return
    raise ConfigError(
        f"--resume {run_dir}: the run started with {ENV_VAR}={','.join(started)}; this "
        f"process lacks {', '.join(missing)} ({ENV_VAR}={os.environ.get(ENV_VAR, '')!r}); fix: "
        f"{ENV_VAR}={','.join(started)} python -m fedmammo.simulate --resume {run_dir}"
    )
