"""End to end through Flower's simulation engine: results, a centre failure, resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers.run_helpers import REPO, final_auc, results, run_cli

pytestmark = pytest.mark.slow

TINY = "scenarios/fedavg_tiny.yaml"


def test_tiny_run_survives_a_failing_centre_and_resumes(tmp_path):
    # Prepare: two rounds; tiny_b's handler raises in round 2 (min_centres 1 lets it go on).
    sets = [
        "--set",
        "strategy.params.rounds=2",
        "--set",
        "strategy.params.min_centres=1",
        "--set",
        "faults=[{centre: tiny_b, round: 2}]",
    ]
    # Execute
    proc, run_dir = run_cli([TINY, *sets], out=tmp_path)
    # Assert: the run finished, recorded the failure and carried on with tiny_a.
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = results(run_dir)
    fails = [f for f in res["failures"] if f["phase"] == "train"]
    assert [(f["centre"], f["round"]) for f in fails] == [("tiny_b", 2)]
    reason = "fault: InjectedFault: injected fault (scenario key faults), round 2"
    assert fails[0]["reason"] == reason
    assert any("aggregated without ['tiny_b']" in n for n in res["notes"])
    assert not any("never fired" in n for n in res["notes"])  # it did
    aucs = final_auc(res, "federated")
    assert set(aucs) == {"tiny_a", "tiny_b", "tiny_t"}
    assert all(v is None or 0.0 <= v <= 1.0 for v in aucs.values())
    val_rounds = {r["round"] for r in res["metrics"] if r["split"] == "val"}
    assert val_rounds == {1, 2}
    assert (run_dir / "checkpoints" / "federated" / "seed0_round002.pt").is_file()
    for name in ("scenario.resolved.yaml", "metrics.csv", "results.md", "run.log"):
        assert (run_dir / name).is_file(), name
    assert "Test AUROC" in proc.stdout
    # a quiet console and a useful log: no library deprecation chatter, fedmammo's own lines
    console = proc.stdout + proc.stderr
    assert "DEPRECATED" not in console and "FutureWarning" not in console
    log = (run_dir / "run.log").read_text()
    assert "alembic" not in log and "font_manager" not in log
    assert "fedmammo.data" in log
    assert "federated seed 0 round 2:" in log and "compute tiny_a" in log  # one line a round
    assert "Traceback" not in console  # the injected fault is one line, like a refusal
    # the report names the run's --set keys (invocation.json), not "scenario as written"
    report = (run_dir / "report.html").read_text()
    assert "strategy.params.rounds=2, strategy.params.min_centres=1, faults=" in report

    # Prepare: pretend the run was killed after round 1 (progress and checkpoint rolled back).
    rolled = dict(res)
    rolled["progress"] = {"federated|0": {"round": 1}}
    (run_dir / "results.json").write_text(json.dumps(rolled))
    for name in ("seed0_round002.pt", "seed0_round002.json"):  # the checkpoint and its sidecar
        (run_dir / "checkpoints" / "federated" / name).unlink()
    round1 = [r for r in res["metrics"] if r["round"] == 1]
    # Execute: resumed in process (one Ray start fewer; a Ray-to-Ray resume is
    # tests/bad_inputs/test_kill_resume.py).
    resume = [TINY, "--resume", str(run_dir), "--backend", "inprocess"]
    proc2 = subprocess.run(  # (run_cli adds --out, which --resume refuses)
        [sys.executable, "-m", "fedmammo.simulate", *resume],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # Assert: round 1 kept as it was, round 2 and the final evaluation redone.
    assert proc2.returncode == 0, proc2.stdout[-3000:] + proc2.stderr[-3000:]
    assert "backend inprocess" in proc2.stdout
    res2 = results(run_dir)
    assert [r for r in res2["metrics"] if r["round"] == 1] == round1
    assert {r["round"] for r in res2["metrics"] if r["split"] == "val"} == {1, 2}
    assert res2["progress"]["federated|0"] == {"round": 2, "done": True}
    assert set(final_auc(res2, "federated")) == {"tiny_a", "tiny_b", "tiny_t"}


def test_check_reports_bad_scenario_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("centres: [{profile: tiny}]\nstrategy: fedavg\nroundz: 2\n")
    proc, _ = run_cli([str(bad), "--check"], out=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "key 'roundz': unknown key" in proc.stdout


# ---------------------------------------------------------------- a Ray cluster's address
# In process, no Ray started: a wrong address fails in one line before any folder is made.
def _one_error(capsys) -> str:
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out, out
    return errors[0]


@pytest.mark.parametrize("check", [False, True], ids=["run", "check"])
def test_a_dead_ray_address_is_one_line_before_anything_is_made(tmp_path, capsys, check):
    from helpers.processes import free_port

    from fedmammo.simulate import main

    address = f"127.0.0.1:{free_port()}"
    argv = [TINY, "--ray-address", address, "--out", str(tmp_path / "out")]
    argv += ["--set", f"data_dir={tmp_path / 'data'}"] + (["--check"] if check else [])
    assert main(argv) == 2
    line = _one_error(capsys)
    assert line.startswith(f"error: --ray-address {address}: cannot attach to a Ray cluster")
    assert "Connection refused" in line and "ray start --head" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("where", "address", "expected"),
    [
        ("flag", "ray://10.0.0.1:10001", "Ray Client (ray://) addresses are not supported"),
        ("flag", "headnode", "expected HOST:PORT or auto"),
        ("scenario", "127.0.0.1:1", "simulation.ray_address 127.0.0.1:1: cannot attach"),
    ],
)
def test_a_bad_ray_address_from_the_flag_or_the_scenario_is_one_line(
    tmp_path, capsys, where, address, expected
):
    from fedmammo.simulate import main

    argv = [TINY, "--check", "--out", str(tmp_path / "out")]
    argv += ["--ray-address", address] if where == "flag" else []
    argv += ["--set", f"simulation.ray_address={address}"] if where == "scenario" else []
    assert main(argv) == 2
    assert expected in _one_error(capsys)


def test_a_port_where_no_ray_head_listens_fails_within_seconds(tmp_path, capsys):
    import socket
    import time

    from fedmammo.simulate import main

    with socket.socket() as listener:  # accepts TCP, speaks no gRPC (ray.init would hang)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        assert main([TINY, "--check", "--ray-address", address]) == 2
        took = time.monotonic() - start
    assert "no Ray head answers within 5 s" in _one_error(capsys)
    assert took < 20


def test_auto_without_a_recorded_cluster_is_one_line(capsys, monkeypatch):
    import ray._private.services

    from fedmammo.simulate import main

    monkeypatch.setattr(ray._private.services, "find_bootstrap_address", lambda _: None)
    assert main([TINY, "--check", "--ray-address", "auto"]) == 2
    assert "no Ray cluster was started on this machine" in _one_error(capsys)


def test_auto_is_the_recorded_cluster_even_with_ray_address_local(capsys, monkeypatch):
    # ray.init("auto") would read RAY_ADDRESS=local and quietly start a private instance
    import ray._private.services
    from helpers.processes import free_port

    from fedmammo.simulate import main

    recorded = f"127.0.0.1:{free_port()}"  # what `ray start` wrote; nothing listens now
    monkeypatch.setattr(ray._private.services, "find_bootstrap_address", lambda _: recorded)
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert main([TINY, "--check", "--ray-address", "auto"]) == 2
    line = _one_error(capsys)
    assert line.startswith("error: --ray-address auto: cannot attach to a Ray cluster there")


def test_client_resources_come_from_the_scenario_and_must_fit_a_node():
    from fedmammo.config import load_scenario
    from fedmammo.errors import ConfigError
    from fedmammo.federation.ray_cluster import check_fits, client_resources

    default = load_scenario(TINY)
    assert client_resources(default) == {"num_cpus": 1, "num_gpus": 0.0}  # the profiles'
    chosen = load_scenario(TINY, sets={"simulation.client_resources": {"num_cpus": 0.5}})
    resources = client_resources(chosen)
    assert resources == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert check_fits(resources, [{"CPU": 1.0}, {"CPU": 2.0}], "x") == 6
    with pytest.raises(ConfigError, match=r"^x: each centre asks for 3 CPU 0 GPU; no node"):
        check_fits({"num_cpus": 3, "num_gpus": 0}, [{"CPU": 2.0}, {"CPU": 2.0}], "x")
    with pytest.raises(ConfigError, match=r"1 GPU; no node has that many \(4 CPU\); fix"):
        check_fits({"num_cpus": 1, "num_gpus": 1}, [{"CPU": 4.0}], "x")


@pytest.mark.parametrize(
    ("resources", "cpus", "gpus", "workers"),
    [
        ({"num_cpus": 1}, 2, 0, 2),
        ({"num_cpus": 0.5}, 2, 0, 4),
        ({"num_cpus": 1, "num_gpus": 0.5}, 8, 1, 2),  # the GPU bounds it
        ({"num_cpus": 1, "num_gpus": 1}, 8, 0, 1),  # Ray finds no GPU: at least one
    ],
)
def test_a_private_ray_runs_cores_over_a_centres_cpus_at_once(
    monkeypatch, resources, cpus, gpus, workers
):
    # how many jobs the server keeps in flight (RunSpec.workers): what Flower's pool runs
    import torch

    from fedmammo.config import load_scenario
    from fedmammo.federation import ray_cluster

    scenario = load_scenario(TINY, sets={"simulation.client_resources": resources})
    monkeypatch.setattr(ray_cluster.os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert ray_cluster.fits_here(scenario) == workers


def test_client_resources_beyond_this_machine_fail_the_check(tmp_path, capsys):
    import os

    from fedmammo.simulate import main

    cpus = os.cpu_count()
    big = "simulation.client_resources={num_cpus: 64}"
    assert main([TINY, "--check", "--set", big, "--out", str(tmp_path / "out")]) == 2
    line = _one_error(capsys)
    assert line.startswith("error: this machine: each centre asks for 64 CPU 0 GPU; no node")
    assert f"({cpus} CPU)" in line and "simulation.client_resources" in line


def test_an_error_after_the_run_started_names_its_folder_and_resume_and_goes_to_run_log(
    tmp_path, capsys, monkeypatch
):
    # Prepare: data preparation fails (a bad labels CSV, say) once the run folder exists
    import fedmammo.simulate as simulate
    from fedmammo.errors import DataError

    def broken(*args, **kwargs):
        raise DataError("my_labels.csv line 5: column 'malignant' value 'yes' is not in 0..1")

    monkeypatch.setattr(simulate, "prepare_data", broken)
    argv = [TINY, "--backend", "inprocess", "--out", str(tmp_path / "out")]
    # Execute
    code = simulate.main(argv)
    out = capsys.readouterr().out
    # Assert: the error line, then the folder kept and how to resume; run.log has it too
    (run,) = (tmp_path / "out" / "fedavg_tiny").iterdir()
    assert code == 2
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors == ["error: my_labels.csv line 5: column 'malignant' value 'yes' is not in 0..1"]
    hint = f"the run folder {run} keeps what was done; after the fix: "
    assert f"{hint}python -m fedmammo.simulate --resume {run}" in out.splitlines()
    logged = (run / "run.log").read_text().splitlines()
    assert any(
        " ERROR fedmammo: my_labels.csv line 5: column 'malignant'" in line for line in logged
    )


def test_the_last_line_names_units_stopped_by_failures_and_by_a_privacy_budget(tmp_path):
    # Prepare: a run whose federated arm stopped at a budget (done: final) and whose local arm
    # stopped when its centre failed (not done: a resume tries it again)
    import json
    import types

    from fedmammo.simulate import _ended_early

    progress = {
        "federated|0": {
            "stopped": "arm federated seed 0: stopped ... (privacy budget)",
            "done": True,
        },
        "local-a|0": {"stopped": "arm local-a seed 0: stopped at round 1 ..."},
        "local-b|0": {"done": True},
    }
    (tmp_path / "results.json").write_text(json.dumps({"progress": progress}))
    # Execute
    lines = _ended_early(tmp_path, types.SimpleNamespace(sweep={}))
    # Assert: one line each, the budget's without a resume (a refusal is final)
    see = tmp_path / "results.md"
    assert lines == [
        f"[yellow]done, but 1 unit(s) ended early[/] (arm local-a seed 0; see {see}); --resume "
        f"tries them again: python -m fedmammo.simulate --resume {tmp_path}",
        f"[yellow]done, but 1 unit(s) stopped at a centre's privacy budget[/] (arm federated "
        f"seed 0; see {see}): their completed rounds are kept",
    ]
