"""Starting and stopping real processes in the slow tests (SuperLink, SuperNodes, `flwr run`,
``python -m fedmammo.simulate``): one home for the port, start, stop and kill helpers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = [
    "BIN",
    "descendants",
    "free_port",
    "kill_tree",
    "listening",
    "local_superlinks",
    "loopback_superlink",
    "prepare_sites",
    "supernode",
    "start",
    "stop",
    "stop_tree",
    "wait_for",
]

#: The virtualenv's scripts (flower-superlink, flower-supernode, flwr).
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start(cmd: list[str], log: Path, env: dict, cwd: Path | None = None) -> subprocess.Popen:
    """``cmd`` in its own session (so :func:`stop` ends its children too), output to ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )


def simulate_process(args: list[str], log: Path) -> subprocess.Popen:
    """``python -m fedmammo.simulate ARGS`` from the repository, in its own session, one torch
    thread, output to ``log``."""
    from helpers.run_helpers import REPO

    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "OMP_NUM_THREADS": "1"}
    return start([sys.executable, "-m", "fedmammo.simulate", *args], log, env, cwd=REPO)


def prepare_sites(scenario, root: Path) -> dict[str, tuple[Path, str]]:
    """Each centre's data folder under ``root`` as its site prepares it (``prepare --scenario``:
    the scenario's profile, the centre's role, image size and data seed): centre -> (data dir,
    role)."""
    from fedmammo.federation.deployment import prepare_site

    sites = {}
    for entry in scenario.centres:
        data_dir = root / entry.name
        prepare_site(
            scenario.resolved_profiles[entry.name],
            data_dir,
            image_size=scenario.image_size,
            data_seed=scenario.data_seed,
            role=entry.role,
        )
        sites[entry.name] = (data_dir, entry.role)
    return sites


def loopback_superlink(tmp_path: Path) -> tuple[dict, int, list[str]]:
    """A plaintext SuperLink on 127.0.0.1: the environment (``FLWR_HOME`` with federation
    ``loopback``, telemetry off), its port and its command (state in ``tmp_path``)."""
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr_home"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    link = free_port()
    (tmp_path / "flwr_home").mkdir()
    (tmp_path / "flwr_home" / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
        f'address = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    cmd = [
        str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(link),
        "--database", str(tmp_path / "state.db"), "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    return env, link, cmd


def supernode_program(*, quick_heartbeat: bool = False) -> list[str]:
    """``flower-supernode`` that polls for messages every 0.2 s, not 3 s, when idle, and with
    ``quick_heartbeat`` declares a 10 s heartbeat, not 30 s (``quick_supernode.py``)."""
    program = [sys.executable, str(Path(__file__).with_name("quick_supernode.py"))]
    return program + (["--quick-heartbeat"] if quick_heartbeat else [])


def supernode(
    link: int, name: str, data_dir: Path, role: str, *, quick_heartbeat: bool = False
) -> list[str]:
    """A plaintext SuperNode of centre ``name`` dialling the loopback SuperLink at ``link``
    (:func:`supernode_program`)."""
    from fedmammo.federation.deployment import node_config

    return [
        *supernode_program(quick_heartbeat=quick_heartbeat), "--insecure",
        "--superlink", f"127.0.0.1:{link}",
        "--port", str(free_port()), "--node-config", node_config(name, data_dir, role=role),
    ]  # fmt: skip


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process group, SIGKILL what is left after 10 s."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def kill_tree(root: int) -> None:
    """SIGKILL ``root`` and everything below it, leaves first (a crash, not a shutdown)."""
    for pid in reversed(descendants(root)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop_tree(roots: list[int]) -> None:
    """SIGTERM then SIGKILL ``roots`` and their descendants, waiting up to 10 s each time."""
    pids = [p for r in roots for p in descendants(r)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)


def local_superlinks(flwr_home: Path) -> list[int]:
    """The local SuperLink(s) `flwr` started for this FLWR_HOME (their log file is in it)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"flower-superlink" in a for a in args) and any(
            str(flwr_home).encode() in a for a in args
        ):
            pids.append(int(cmdline.parent.name))
    return pids


def wait_for(done, timeout: float, what: str, logs: Path) -> None:
    """Poll ``done()`` every 0.2 s for up to ``timeout`` seconds; if it never holds, fail with
    ``what`` and the tail of every ``*.log`` under ``logs`` (a slow test's only evidence)."""
    import pytest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(0.2)
    tails = "\n".join(
        f"--- {log.relative_to(logs)}\n{log.read_text(errors='replace')[-2000:]}"
        for log in sorted(logs.rglob("*.log"))
    )
    pytest.fail(f"no {what} within {timeout:.0f} s\n{tails}")
