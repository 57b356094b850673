"""Ctrl-C (SIGINT) during a run: exit code 130, one line naming the run folder and the resume
command, no traceback, the results and report written; ``--resume`` of that folder ends with
the numbers of the run never interrupted, on the backend the run started with (a sweep's
too). A second Ctrl-C leaves at once; one lost in a destructor is raised again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from bad_inputs.cli_cases import capture_console
from helpers.processes import kill_tree, simulate_process
from helpers.run_helpers import comparable_metrics, results

from fedmammo import interrupt, simulate

TINY = "scenarios/fedavg_tiny.yaml"
HINT = (
    "interrupted: completed rounds are kept in {run}; resume with: "
    "python -m fedmammo.simulate --resume {run}"
)


def _interrupt_after_round_1(proc: subprocess.Popen, out: Path, timeout: float) -> Path:
    """SIGINT to ``proc`` once round 1 of the federated arm is recorded; the run folder."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for path in out.glob("*/*/results.json"):
            try:
                state = json.loads(path.read_text())["progress"].get("federated|0", {})
            except (OSError, ValueError, KeyError):
                continue
            if state.get("round", 0) >= 1 and not state.get("done"):
                proc.send_signal(signal.SIGINT)
                return path.parent
        time.sleep(0.1)
    kill_tree(proc.pid)
    pytest.fail("the run ended (or never recorded round 1) before it could be interrupted")


def _wait(proc: subprocess.Popen, log: Path, timeout: float) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.wait()
        pytest.fail(f"still running {timeout:.0f} s later:\n{log.read_text()[-3000:]}")
    return code, log.read_text()


@pytest.mark.slow
def test_ctrl_c_in_process_says_how_to_resume_and_the_resumed_run_equals_the_unbroken(tmp_path):
    sets = ["--set", "strategy.params.rounds=3", "--set", f"data_dir={tmp_path / 'data'}"]
    # Prepare: the unbroken run
    unbroken = tmp_path / "unbroken"
    proc = simulate_process(
        [TINY, *sets, "--backend", "inprocess", "--out", str(unbroken)], tmp_path / "u.log"
    )
    code, text = _wait(proc, tmp_path / "u.log", 600)
    assert code == 0, text[-3000:]
    # Execute: the same run, Ctrl-C once round 1 is recorded
    broken = tmp_path / "broken"
    proc = simulate_process(
        [TINY, *sets, "--backend", "inprocess", "--out", str(broken)], tmp_path / "b.log"
    )
    run_dir = _interrupt_after_round_1(proc, broken, 600)
    code, text = _wait(proc, tmp_path / "b.log", 120)
    # Assert: 130, the one line, no traceback; the rounds done and the report are there
    assert code == 130, text[-3000:]
    assert HINT.format(run=run_dir) in text.splitlines(), text[-3000:]
    assert "Traceback" not in text and "Exception ignored" not in text, text[-3000:]
    assert "done: results in" not in text  # it did not go on
    stopped = results(run_dir)
    assert 1 <= stopped["progress"]["federated|0"]["round"] < 3
    assert not stopped["progress"]["federated|0"].get("done") and not stopped["failures"]
    assert (run_dir / "results.md").is_file() and (run_dir / "report.html").is_file()
    # Execute: resume it, saying nothing of the backend
    proc = simulate_process(["--resume", str(run_dir)], tmp_path / "r.log")
    code, text = _wait(proc, tmp_path / "r.log", 600)
    # Assert: in process again, every number of the unbroken run
    assert code == 0, text[-3000:]
    assert "backend inprocess, as the run started" in text
    (reference,) = unbroken.glob("*/*/results.json")
    assert comparable_metrics(results(run_dir)) == comparable_metrics(results(reference.parent))


@pytest.mark.slow
def test_ctrl_c_on_ray_stops_the_servers_thread_and_ray_within_seconds(tmp_path):
    # The ServerApp's thread used to wait on for replies (up to the 2 h message timeout) and
    # kept the process from exiting until a second Ctrl-C.
    sets = ["--set", "strategy.params.rounds=4", "--set", f"data_dir={tmp_path / 'data'}"]
    out = tmp_path / "out"
    proc = simulate_process(
        [TINY, *sets, "--backend", "ray", "--out", str(out)], tmp_path / "ray.log"
    )
    run_dir = _interrupt_after_round_1(proc, out, 600)
    sent = time.monotonic()
    code, text = _wait(proc, tmp_path / "ray.log", 120)
    assert code == 130, text[-3000:]
    assert time.monotonic() - sent < 60
    assert HINT.format(run=run_dir) in text.splitlines(), text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    stopped = results(run_dir)  # no centre failure recorded for the stopped engine
    assert not stopped["failures"] and not stopped["progress"]["federated|0"].get("done")
    assert (run_dir / "report.html").is_file()
    spec = json.loads((run_dir / "runspec.json").read_text())
    assert spec["backend"] == "ray" and spec["ray_address"] is None


# ------------------------------------------------------------------ a sweep, in process
@pytest.mark.parametrize("at", ["write_resolved", "execute"])
def test_ctrl_c_before_the_run_starts_says_so_and_what_is_left(tmp_path, monkeypatch, at):
    # Prepare: Ctrl-C while the run folder is written, or as the run opens it
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    argv = [TINY, "--backend", "inprocess", "--out", str(out)]
    monkeypatch.setattr(simulate, "write_resolved" if at == "write_resolved" else "run_log", ctrl_c)
    buf = capture_console(monkeypatch)
    # Execute
    code = simulate.main(argv)
    # Assert: a half-written folder is removed ("no run was started" is then true); a
    # written one is named with its resume command
    folders = list((out / "fedavg_tiny").iterdir()) if (out / "fedavg_tiny").exists() else []
    assert code == 130
    if at == "write_resolved":
        assert folders == []
        assert "interrupted: no run was started" in buf.getvalue().splitlines()
    else:
        [run] = folders
        assert (run / "runspec.json").is_file()
        assert HINT.format(run=run) in buf.getvalue().splitlines(), buf.getvalue()


def test_a_sweep_interrupted_in_process_resumes_in_process(tmp_path, monkeypatch):
    # Prepare: a two-point sweep in process; Ctrl-C while the second point prepares its data
    argv = [TINY, "--backend", "inprocess", "--out", str(tmp_path / "out")]
    argv += ["--set", f"data_dir={tmp_path / 'data'}", "--set", "sweep={seed: [0, 1]}"]
    prepare, calls = simulate.prepare_data, []

    def prepare_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return prepare(*args, **kwargs)

    monkeypatch.setattr(simulate, "prepare_data", prepare_once)
    buf = capture_console(monkeypatch)
    # Execute
    code = simulate.main(argv)
    # Assert: 130 and the line naming the sweep's folder; its spec records the backend
    (root,) = (tmp_path / "out" / "fedavg_tiny").iterdir()
    assert code == 130
    assert HINT.format(run=root) in buf.getvalue().splitlines(), buf.getvalue()
    assert json.loads((root / "runspec.json").read_text())["backend"] == "inprocess"
    assert (root / "points" / "seed=0" / "DONE").is_file()
    assert not (root / "points" / "seed=1" / "DONE").is_file()

    # Execute: resume without --backend; starting Ray would fail the test
    def no_ray(*args, **kwargs):
        raise AssertionError("--resume started Ray for a sweep started in process")

    monkeypatch.setattr(simulate, "prepare_data", prepare)
    monkeypatch.setattr(simulate, "private_ray", no_ray)
    monkeypatch.setattr(simulate, "attach_ray", no_ray)
    buf = capture_console(monkeypatch)
    code = simulate.main(["--resume", str(root)])
    # Assert: both points in process, the second one run now
    assert code == 0, buf.getvalue()[-3000:]
    assert "backend inprocess, as the run started" in buf.getvalue()
    for point in ("seed=0", "seed=1"):
        assert results(root / "points" / point)["meta"]["backend"] == "inprocess"
    assert (root / "sweep.csv").is_file()
    # each point has a run.log of its own records (its report's warnings), the sweep all
    logs = {p: (root / "points" / p / "run.log").read_text() for p in ("seed=0", "seed=1")}
    assert "federated seed 1" in logs["seed=1"] and "federated seed 1" not in logs["seed=0"]
    assert "federated seed 1" in (root / "run.log").read_text()


def test_a_sweep_folder_from_before_its_spec_named_the_backend_resumes_as_its_points_ran(
    tmp_path, monkeypatch
):
    # A sweep's runspec.json used to say "ray" whatever its points ran on (no ray_address key)
    from bad_inputs.cli_cases import (
        SCENARIO,
        Case,
        make_run_folder,
        run_cli_in_process,
        write_tree,
    )

    case = Case("sweep", (), (), scenario=SCENARIO + "sweep: {seed: [3, 4]}\n")
    run = make_run_folder(write_tree(tmp_path, case))
    old = json.loads((run / "runspec.json").read_text())
    old.pop("ray_address")
    (run / "runspec.json").write_text(json.dumps(old))
    point = json.loads((run / "runspec.json").read_text())
    (run / "points" / "seed=3" / "runspec.json").write_text(
        json.dumps({**point, "backend": "inprocess"})
    )
    out = run_cli_in_process(["--resume", str(run), "--check"], monkeypatch)
    assert out.code == 0, out.text
    assert "backend inprocess, as the run started" in out.text


# ------------------------------------------------------------------ the handler itself
class _Left(BaseException):
    """What _leave_now raises here instead of ending pytest."""


def test_a_ctrl_c_lost_in_a_destructor_is_raised_again_and_a_second_one_leaves(
    tmp_path, monkeypatch
):
    class SwallowsIt:
        def __del__(self):  # Ctrl-C while a destructor runs: Python only prints it
            signal.raise_signal(signal.SIGINT)

    def leave():
        raise _Left

    monkeypatch.setattr(interrupt, "_leave_now", leave)
    buf = capture_console(monkeypatch)
    before = signal.getsignal(signal.SIGINT), sys.unraisablehook
    # Execute: the first Ctrl-C is lost in a destructor
    with pytest.raises(interrupt.Interrupted) as caught, interrupt.CtrlC(tmp_path):
        obj = SwallowsIt()
        del obj
        for _ in range(200):  # the run goes on
            time.sleep(0.005)
        pytest.fail("the lost Ctrl-C was not raised again")
    # Assert: raised again, as the run's Interrupted; handler and hook restored
    assert caught.value.run_dir == tmp_path
    assert (signal.getsignal(signal.SIGINT), sys.unraisablehook) == before
    # Execute: Ctrl-C twice (the second while the first unwinds)
    with pytest.raises(_Left), interrupt.CtrlC(tmp_path):
        try:
            signal.raise_signal(signal.SIGINT)
        finally:  # the run's results and report being written
            signal.raise_signal(signal.SIGINT)
    assert HINT.format(run=tmp_path) in buf.getvalue().splitlines()


def test_the_ray_servers_thread_stops_at_its_next_pull_and_writes_its_results():
    # Flower runs the ServerApp in a thread of its own, which Ctrl-C never reaches
    from flwr.app import Context, RecordDict
    from flwr.serverapp import ServerApp

    app, wrote = ServerApp(), []

    @app.main()
    def main(grid, context):
        try:
            while True:  # waiting for replies
                grid.pull_messages([])
                time.sleep(0.01)
        finally:
            wrote.append("results.json")

    class Grid:  # Flower's InMemoryGrid, as far as the ServerApp uses it here
        def push_messages(self, messages):
            return []

        def pull_messages(self, message_ids):
            return []

    stop, threads = threading.Event(), []
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    errors = []
    thread = threading.Thread(
        target=lambda: _call(interrupt.stoppable(app, stop, threads), Grid(), context, errors)
    )
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive() and threads == [thread]
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and wrote == ["results.json"] and errors == []


def _call(app, grid, context, errors: list) -> None:
    try:
        app(grid=grid, context=context)
    except BaseException as exc:  # noqa: BLE001 - the test reports it
        errors.append(exc)


@pytest.mark.parametrize(("code", "survives"), [(0, True), (2, False)])
def test_a_ctrl_c_after_a_finished_run_does_not_turn_it_into_a_failure(code, survives):
    # Prepare: a process that finished with `code`, then gets SIGINT while it leaves (with
    # Python's own SIGINT handler, as from a terminal: a background job inherits SIGINT ignored)
    script = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from fedmammo.interrupt import exit_code\n"
        f"code = exit_code({code})\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.5)\n"
        "print('left with', code)\n"
        "raise SystemExit(code)\n"
    )
    # Execute
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    # Assert: after a finished run the interrupt is ignored; after a failed one it is not
    if survives:
        assert (proc.returncode, proc.stdout) == (0, "left with 0\n")
    else:
        assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr
