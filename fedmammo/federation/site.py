"""Where a centre runs and writes: a real site or a simulated node, its plot folder, its data."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from flwr.app import Context

from fedmammo.data.prepare import CentreData
from fedmammo.errors import DataError
from fedmammo.federation.centre_runtime import CentreIdentity
from fedmammo.federation.runspec import load_runspec

__all__ = ["deployed", "output_dir", "plot_dir", "single_centre", "state_dir"]


def deployed(context: Context) -> bool:
    """True at a real site: its SuperNode names its centre (``--node-config centre=...``).

    A simulated node (``python -m fedmammo.simulate`` or ``flwr run`` on a simulation
    SuperLink) only has ``partition-id``: simulation-only arms may run there.
    """
    return "centre" in context.node_config


def output_dir(
    context: Context,
    ident: CentreIdentity,
    sub: str,
    server_dir: str | None,
    *,
    needed_by: str = "",
) -> Path | None:
    """Where this centre writes ``sub`` (plots, a method's store): its own
    ``<output-dir>/<sub>`` at a real site (the server's run folder is on another machine), else
    the server's ``server_dir`` (same machine in simulation). Without one: None, or a
    DataError naming ``needed_by`` when it needs one."""
    node = context.node_config
    if "centre" in node:
        local = node.get("output-dir") or Path(ident.data_dir or ".") / "outputs"
        return Path(str(local)) / sub
    if server_dir:
        return Path(server_dir)
    if needed_by:
        raise DataError(f"{needed_by}: the server sent no {sub} folder")
    return None


def state_name(label: str, key: str | None = None) -> str:
    """A file or folder name in a centre's state folder made from what a server sent:
    ``label`` with anything but letters, digits, ``_ . -`` replaced (60 characters at most),
    then 8 hex digits of the SHA-256 of ``key`` (default ``label``). Never a path the server
    chose, and two labels that sanitise alike stay apart."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:60]
    return f"{name}-{hashlib.sha256((label if key is None else key).encode()).hexdigest()[:8]}"


def state_dir(context: Context, ident: CentreIdentity) -> Path:
    """The centre's own state folder (its privacy ledger): ``--node-config state-dir=...``
    or ``<data-dir>/state`` at a real site, ``<run dir>/centres/<name>`` in simulation.

    Never a path from a message: the server does not choose where a centre keeps its
    guarantees. Simulation reads the run directory from its own run spec.
    """
    node = context.node_config
    if "centre" in node:
        local = node.get("state-dir") or Path(ident.data_dir or ".") / "state"
        return Path(str(local)).expanduser()
    return Path(load_runspec(context.run_config).run_dir) / "centres" / ident.name


def plot_dir(
    context: Context, ident: CentreIdentity, server_dir: str | None, *, needed_by: str = ""
) -> Path | None:
    """Where this centre draws its figures (see :func:`output_dir`)."""
    return output_dir(context, ident, "plots", server_dir, needed_by=needed_by)


def single_centre(data: object, what: str) -> CentreData:
    """``data`` as one centre's data: ``what`` refuses the pooled what-if node."""
    if not isinstance(data, CentreData):
        raise DataError(f"{what}: runs at single centres, not on pooled data")
    return data
