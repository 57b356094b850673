"""Real sites, secured: TLS and SuperNode authentication with real Flower processes on loopback.

One SuperLink (TLS, ``--enable-supernode-auth``), two registered SuperNodes that run a tiny
FedAvg scenario to the end with ``flwr run``, and three SuperNodes that must not get in: an
unregistered key, a node trusting another CA, a plaintext node.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers import processes
from helpers.processes import BIN, free_port, prepare_sites, stop, supernode_program
from helpers.run_helpers import REPO, comparable_metrics, final_auc, results, run_cli

from fedmammo.config import load_scenario
from fedmammo.federation.deployment import node_config
from fedmammo.federation.pki import (
    PkiError,
    init_pki,
    make_node_key,
    register_node,
    superlink_tls_args,
    supernode_tls_args,
    write_connection,
)

pytestmark = pytest.mark.slow
CONNECTION = "secure"


def start(cmd: list[str], log: Path, env: dict):
    return processes.start(cmd, log, env, cwd=REPO)


def _two_centre_scenario(tmp: Path) -> Path:
    """scenarios/fedavg_tiny.yaml with its two training centres only (two SuperNodes)."""
    data = yaml.safe_load((REPO / "scenarios" / "fedavg_tiny.yaml").read_text())
    data["centres"] = [c for c in data["centres"] if c["role"] == "train"]
    path = tmp / "fedavg_tiny_two.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _register(key: Path, name: str, env: dict, deadline: float) -> int:
    while True:  # the SuperLink takes a few seconds to listen
        try:
            return register_node(key, CONNECTION, name=name, env=env)
        except PkiError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _supernode(link: int, extra: list[str], node_cfg: str | None = None) -> list[str]:
    cmd = [
        *supernode_program(),
        "--superlink",
        f"127.0.0.1:{link}",
        "--port",
        str(free_port()),
        *extra,
    ]
    return cmd + (["--node-config", node_cfg] if node_cfg else [])


def test_tls_with_registered_supernodes_runs_and_keeps_others_out(tmp_path):
    # Prepare: credentials, two sites' data, a TLS connection for the flwr CLI
    pki = init_pki(tmp_path / "pki")
    other_ca = init_pki(tmp_path / "other").ca_cert
    keys = {name: make_node_key(tmp_path / "pki", name) for name in ("tiny_a", "tiny_b", "rogue")}
    scenario_file = _two_centre_scenario(tmp_path)
    scenario = load_scenario(scenario_file)
    sites = {
        name: node_config(name, data_dir, role=role)
        for name, (data_dir, role) in prepare_sites(scenario, tmp_path / "sites").items()
    }
    link = free_port()
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr_home"),
        "PYTHONPATH": str(REPO),
        "FLWR_TELEMETRY_ENABLED": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    write_connection(
        tmp_path / "flwr_home", CONNECTION, address=f"127.0.0.1:{link}", ca_cert=pki.ca_cert
    )
    run_dir = tmp_path / "deployed_run"
    logs = {
        name: tmp_path / f"{name}.log"
        for name in ("superlink", "tiny_a", "tiny_b", "rogue", "other_ca", "plaintext")
    }
    procs = [
        start(
            [
                str(BIN / "flower-superlink"),
                "--host",
                "127.0.0.1",
                "--port",
                str(link),
                "--database",
                str(tmp_path / "state.db"),
                "--disable-runtime-dependency-installation",
                *superlink_tls_args(pki),
            ],
            logs["superlink"],
            env,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        node_ids = {n: _register(keys[n][1], n, env, deadline) for n in ("tiny_a", "tiny_b")}
        for name, cfg in sites.items():
            procs.append(
                start(
                    _supernode(link, supernode_tls_args(pki.ca_cert, keys[name][0]), cfg),
                    logs[name],
                    env,
                )
            )
        once = ["--max-retries", "1", "--max-wait-time", "10"]
        intruders = {
            "rogue": _supernode(link, [*supernode_tls_args(pki.ca_cert, keys["rogue"][0]), *once]),
            "other_ca": _supernode(link, [*supernode_tls_args(other_ca, keys["tiny_a"][0]), *once]),
            "plaintext": _supernode(link, ["--insecure", *once]),
        }
        bad = {name: start(cmd, logs[name], env) for name, cmd in intruders.items()}
        procs += list(bad.values())
        # Execute: the scenario over TLS, with only the registered nodes
        run = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(REPO),
                CONNECTION,
                "--stream",
                "-c",
                f'scenario="{scenario_file}" run-dir="{run_dir}"',
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        listed = subprocess.run(
            [str(BIN / "flwr"), "supernode", "list", CONNECTION, "--format", "json"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        codes = {name: p.wait(timeout=60) for name, p in bad.items()}
    finally:
        stop(procs)
    text = {name: path.read_text(errors="replace") for name, path in logs.items()}
    # Assert: the run completed over TLS with both authenticated centres
    assert (run_dir / "results.json").is_file(), run.stdout[-2000:] + run.stderr[-2000:]
    deployed = results(run_dir)
    assert deployed["meta"]["deployment"] is True and deployed["failures"] == []
    auc = final_auc(deployed, "federated")
    assert set(auc) == {"tiny_a", "tiny_b"}
    # ... and gave the same metric records (value and CI, to the bit) as the simulation of the
    # same scenario and seed through python -m fedmammo.simulate (in process: the Ray
    # backend gives the same numbers, tests/federation/test_inprocess.py)
    proc, sim_dir = run_cli([str(scenario_file), "--backend", "inprocess"], out=tmp_path / "sim")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    mine, theirs = comparable_metrics(deployed), comparable_metrics(results(sim_dir))
    assert mine.keys() == theirs.keys() and any(k[4] == "test" for k in mine)
    assert mine == theirs
    nodes = json.loads(listed.stdout)["nodes"]
    assert {int(n["node-id"]) for n in nodes} == set(node_ids.values())
    assert all(n["status"] == "online" for n in nodes)
    # an unregistered key is refused by the SuperLink
    assert codes["rogue"] != 0 and "Failed to activate SuperNode" in text["rogue"]
    assert "No SuperNode found with the given public key" in text["superlink"]
    # a node trusting another CA refuses the SuperLink's certificate
    assert codes["other_ca"] != 0 and "CERTIFICATE_VERIFY_FAILED" in text["other_ca"]
    # a plaintext node cannot talk to a TLS-only SuperLink
    assert codes["plaintext"] != 0 and "Failed to initialize the connection" in text["plaintext"]
    assert "SuperNode ID" not in text["plaintext"] + text["rogue"] + text["other_ca"]
