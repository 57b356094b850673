"""Faults of the machine, not of the input: a run folder another process is running, a disk
that fills up or a folder made read-only during a run, a final report.html that cannot be
written, a unit whose every centre failed (out of memory, say) and its resume. Full disks are
injected (an OSError with errno ENOSPC where the library would raise it), never made."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bad_inputs.cli_cases import (
    Case,
    capture_console,
    make_run_folder,
    run_cli_in_process,
    write_tree,
)
from helpers.run_helpers import REPO, results

from fedmammo import run_lock, simulate
from fedmammo.errors import ConfigError
from fedmammo.evaluation.results import RunRecorder

TINY = "scenarios/fedavg_tiny.yaml"
FULL = os.strerror(errno.ENOSPC)  # "No space left on device"
HINT = "the run folder {run} keeps what was done; after the fix: "
HINT += "python -m fedmammo.simulate --resume {run}"


def _tiny(tmp_path: Path, *more: str) -> list[str]:
    """fedavg_tiny in process, its data and runs under ``tmp_path``."""
    out = ["--out", str(tmp_path / "out"), "--set", f"data_dir={tmp_path / 'data'}"]
    return [TINY, "--backend", "inprocess", *out, *more]


def _run_folder(tmp_path: Path) -> Path:
    (run,) = (tmp_path / "out" / "fedavg_tiny").iterdir()
    return run


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, FULL)


# ------------------------------------------------------------------ one process per folder
@pytest.fixture()
def run_folder(tmp_path):
    """A run folder killed after round 1 of its federated arm (the CLI suite's tree)."""
    return make_run_folder(
        write_tree(tmp_path, Case("lock", (), ())), progress={"federated|0": {"round": 1}}
    )


def test_a_run_folder_in_use_refuses_a_second_resume_naming_the_process(run_folder):
    # Prepare: this process holds the folder, as a run (or a --resume) of it does
    with run_lock.hold_run_folder(run_folder):
        assert (run_folder / run_lock.LOCK).read_text().split()[0] == str(os.getpid())
        # Execute: a second --resume of it, as a scheduler retrying a job still running
        proc = subprocess.run(
            [sys.executable, "-m", "fedmammo.simulate", "--resume", str(run_folder)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
    # Assert: exit code 2, one line naming the folder and the process; nothing run
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: run folder {run_folder} is in use by process {os.getpid()}; wait for it or stop it"
    ], text
    assert "Traceback" not in text and "keeps what was done" not in text
    assert "run directory:" not in text  # (execute never started)
    # released on leaving the block: the lock file is gone, the folder as it was
    assert not (run_folder / run_lock.LOCK).exists()


def test_resume_and_check_are_refused_while_held_and_run_once_released(run_folder, monkeypatch):
    started = []
    monkeypatch.setattr(simulate, "execute", lambda spec, base, args: started.append(1) or 0)
    with run_lock.hold_run_folder(run_folder):
        for check in ([], ["--check"]):
            out = run_cli_in_process(["--resume", str(run_folder), *check], monkeypatch)
            assert out.code == 2, out.text
            assert out.errors == [
                f"error: run folder {run_folder} is in use by process {os.getpid()}; wait for "
                "it or stop it"
            ]
    assert started == []
    # Execute: the holder left; the resume runs, holding the folder while it does
    held = []

    def execute(spec, base, args):
        with pytest.raises(Exception, match="is in use by process") as refused:
            with run_lock.hold_run_folder(run_folder):
                pass
        held.append(refused.value)
        return 0

    monkeypatch.setattr(simulate, "execute", execute)
    assert simulate.main(["--resume", str(run_folder)]) == 0
    assert len(held) == 1 and not (run_folder / run_lock.LOCK).exists()


@pytest.mark.parametrize("fails", [KeyboardInterrupt, OSError, "FedmammoError"])
def test_the_lock_is_released_on_every_way_out(run_folder, monkeypatch, fails):
    from fedmammo.errors import DataError

    def execute(spec, base, args):
        if fails == "FedmammoError":
            raise DataError("bad labels")
        raise fails()

    monkeypatch.setattr(simulate, "execute", execute)
    capture_console(monkeypatch)
    assert simulate.main(["--resume", str(run_folder)]) in (2, 130)
    assert not (run_folder / run_lock.LOCK).exists()
    with run_lock.hold_run_folder(run_folder):  # free again
        pass


def test_a_lock_file_left_by_a_killed_run_does_not_hold_the_folder(run_folder, monkeypatch):
    # a run killed with SIGKILL leaves .lock behind (its lock dies with it)
    (run_folder / run_lock.LOCK).write_text("999999 elsewhere\n")
    out = run_cli_in_process(["--resume", str(run_folder), "--check"], monkeypatch)
    assert out.code == 0 and "can be resumed" in out.text, out.text
    monkeypatch.setattr(simulate, "execute", lambda spec, base, args: 0)
    assert simulate.main(["--resume", str(run_folder)]) == 0
    assert not (run_folder / run_lock.LOCK).exists()


def test_a_new_run_holds_its_folder_from_the_start(tmp_path, monkeypatch):
    seen = []

    def execute(spec, base, args):
        run = Path(spec.run_dir)
        seen.append((run / run_lock.LOCK).read_text().split()[0])
        return 0

    monkeypatch.setattr(simulate, "execute", execute)
    capture_console(monkeypatch)
    assert simulate.main(_tiny(tmp_path)) == 0
    assert seen == [str(os.getpid())]
    assert not (_run_folder(tmp_path) / run_lock.LOCK).exists()


# ------------------------------------------------------------------ a full disk, a read-only folder
def test_a_full_disk_during_the_run_names_the_file_system_and_how_to_resume(tmp_path, monkeypatch):
    # Prepare: the disk fills while the data is prepared (pandas, PIL: no file name given)
    monkeypatch.setattr(simulate, "prepare_data", _enospc)
    buf = capture_console(monkeypatch)
    # Execute
    code = simulate.main(_tiny(tmp_path))
    # Assert: exit 2; the file systems where it ran out, with their free space; the resume line
    run, out = _run_folder(tmp_path), buf.getvalue()
    assert code == 2, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    prefix = f"error: {FULL} on the file system of the run folder {run} and data_dir "
    assert errors[0].startswith(prefix + f"{tmp_path / 'data'} ("), errors
    assert errors[0].endswith(" free); free some space there"), errors
    assert HINT.format(run=run) in out.splitlines()
    logged = (run / "run.log").read_text()
    assert f" ERROR fedmammo: {FULL} on the file system of the run folder {run}" in logged


def test_a_read_only_run_folder_names_the_file_not_its_hidden_temporary(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        tmp = tmp_path / "out" / "x" / f".results.json.{os.getpid()}.tmp"
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp))

    monkeypatch.setattr(simulate, "prepare_data", read_only)
    buf = capture_console(monkeypatch)
    assert simulate.main(_tiny(tmp_path)) == 2
    run, out = _run_folder(tmp_path), buf.getvalue()
    assert f"error: {tmp_path / 'out' / 'x' / 'results.json'}: Permission denied (" in out
    assert HINT.format(run=run) in out.splitlines()
    assert "Permission denied" in (run / "run.log").read_text()


def test_results_json_that_cannot_be_written_at_the_end_is_one_line_naming_the_folder(
    tmp_path, monkeypatch
):
    # Prepare: every write of results.json fails (from the first, after the centres connect)
    from fedmammo.evaluation import results as results_module

    monkeypatch.setattr(results_module, "replace_json", _enospc)
    buf = capture_console(monkeypatch)
    # Execute
    code = simulate.main(_tiny(tmp_path))
    # Assert: the error and the resume line; run.log says results.json was not written there
    run, out = _run_folder(tmp_path), buf.getvalue()
    assert code == 2, out
    assert f"error: {FULL} on the file system of the run folder {run}" in out
    assert HINT.format(run=run) in out.splitlines()
    line = f"results.json could not be written in the run folder {run} ({FULL}): "
    assert line + "the centre failures and notes shown above" in (run / "run.log").read_text()


# ------------------------------------------------------------------ the final report
def test_a_final_report_that_cannot_be_written_is_said_in_the_last_line(
    tmp_path, monkeypatch, caplog
):
    # Prepare: the disk fills once the arm is done: the report of round 1 stays, stale
    from fedmammo.evaluation import run_outputs

    write = run_outputs.write_report

    def write_until_done(run_dir):
        progress = json.loads((Path(run_dir) / "results.json").read_text())["progress"]
        if progress.get("federated|0", {}).get("done"):
            raise OSError(errno.ENOSPC, FULL)
        return write(run_dir)

    monkeypatch.setattr(run_outputs, "write_report", write_until_done)
    buf = capture_console(monkeypatch)
    # Execute
    with caplog.at_level(logging.ERROR):
        code = simulate.main(_tiny(tmp_path))
    # Assert: exit 0 (the results are all there), the last line says what is missing and how
    # to write it; one log line per failed report, no traceback
    run, out = _run_folder(tmp_path), buf.getvalue()
    assert code == 0, out
    assert out.splitlines()[-1] == (
        f"done, but report.html could not be written ({FULL}; the report.html there is an "
        f"older one); write it with: fedmammo report {run}"
    )
    failed = [r for r in caplog.records if "report.html could not be written" in r.getMessage()]
    assert failed and all(r.exc_info is None for r in failed)
    assert results(run)["progress"]["federated|0"]["done"]
    # Execute: the command the line names writes it
    monkeypatch.setattr(run_outputs, "write_report", write)
    from fedmammo.report import main as report

    assert report([str(run)]) == 0
    assert "incomplete" not in (run / "report.html").read_text()


def test_close_says_whether_the_final_report_was_written(tmp_path, monkeypatch):
    from fedmammo.evaluation import run_outputs

    recorder = RunRecorder(tmp_path)
    outputs = run_outputs.attach_run_outputs(recorder, {})
    monkeypatch.setattr(run_outputs, "write_report", _enospc)
    assert outputs.close() is False
    assert run_outputs.final_report_problem(tmp_path) == FULL
    monkeypatch.setattr(run_outputs, "write_report", lambda run_dir: None)
    assert outputs.close() is True
    assert run_outputs.final_report_problem(tmp_path) is None


# ------------------------------------------------------------------ an arm that stopped
def _centres_out_of_memory(monkeypatch):
    """Every FedAvg centre's training fails as oneDNN does out of memory; returns the undo."""
    from fedmammo.methods.fedavg import client

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("could not create a primitive")

    train = client.train_classifier
    monkeypatch.setattr(client, "train_classifier", out_of_memory)
    return lambda: monkeypatch.setattr(client, "train_classifier", train)


def test_an_arm_every_centre_failed_says_so_and_its_resume_clears_the_stop(tmp_path, monkeypatch):
    # Prepare: both training centres run out of memory in round 1 (oneDNN's words)
    restore = _centres_out_of_memory(monkeypatch)
    buf = capture_console(monkeypatch)
    # Execute
    code = simulate.main(_tiny(tmp_path))
    # Assert: exit 0, the last line names the unit and the resume; the reasons say memory
    run, out = _run_folder(tmp_path), buf.getvalue()
    assert code == 0, out
    assert out.splitlines()[-1] == (
        f"done, but 1 unit(s) ended early (arm federated seed 0; see {run / 'results.md'}); "
        f"--resume tries them again: python -m fedmammo.simulate --resume {run}"
    )
    stopped = results(run)
    assert stopped["progress"]["federated|0"]["stopped"].startswith(
        "arm federated seed 0: stopped at round 1: 0 of 2 centres sent an update"
    )
    reasons = {f["centre"]: f["reason"] for f in stopped["failures"]}
    assert set(reasons) == {"tiny_a", "tiny_b"}
    assert all(
        r.endswith("could not create a primitive (out of memory?)") for r in reasons.values()
    )
    # Execute: the memory is back; resume
    restore()
    buf = capture_console(monkeypatch)
    code = simulate.main(["--resume", str(run)])
    # Assert: done, and nothing says the arm ended early any more
    assert code == 0, buf.getvalue()
    assert buf.getvalue().splitlines()[-1] == f"done: results in {run}"
    res = results(run)
    assert res["progress"]["federated|0"] == {"round": 1, "done": True}
    assert not any(n.startswith("arm federated seed 0: stopped") for n in res["notes"])
    assert any(
        n.startswith(
            "arm federated seed 0: retried on resume, and round 1 completed (the earlier "
            "attempt stopped at round 1: 0 of 2 centres sent an update"
        )
        for n in res["notes"]
    ), res["notes"]
    summary = (run / "results.md").read_text()
    assert "\n- arm federated seed 0: stopped" not in summary
    assert "ended early" not in (run / "report.html").read_text()


def test_a_retried_stop_is_replaced_only_once_a_round_completes():
    recorder = RunRecorder.__new__(RunRecorder)  # (no folder: nothing flushed here)
    recorder.notes, recorder.progress, recorder._listeners = [], {}, []
    recorder.flush = lambda: None
    # too few centres: not done, tried again on resume
    line = "arm a seed 0: stopped at round 2: 0 of 2 centres sent an update; completed rounds kept"
    recorder.complete_round("a", 0, 1)
    recorder.stop_arm("a", 0, line)
    assert recorder.progress["a|0"]["stopped"] == line and recorder.notes == [line]
    recorder.complete_round("a", 0, 2)  # the resumed run's round 2
    assert "stopped" not in recorder.progress["a|0"]
    assert recorder.notes == [
        "arm a seed 0: retried on resume, and round 2 completed (the earlier attempt stopped "
        "at round 2: 0 of 2 centres sent an update)"
    ]
    # a privacy budget: the arm is done, its stop stays what the report says
    budget = "arm b seed 0: stopped before round 3: centre x refused it (privacy budget)"
    recorder.stop_arm("b", 0, budget)
    recorder.complete_arm("b", 0)
    assert recorder.progress["b|0"]["stopped"] == budget and budget in recorder.notes


# ------------------------------------------------------------------ a centre's failure reason
@pytest.mark.parametrize(
    ("exc", "ends"),
    [
        (MemoryError(), "error: MemoryError: (out of memory?)"),
        (RuntimeError("could not create a primitive"), "primitive (out of memory?)"),
        (
            RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory"),
            "can't allocate memory (out of memory?)",
        ),
        (
            RuntimeError("basic_ios::clear: iostream error"),
            "iostream error (a file could not be written: is the disk full, or the folder "
            "read-only?)",
        ),
        (ValueError("bad value"), "ValueError: bad value"),
    ],
)
def test_a_centres_failure_reason_says_what_its_words_do_not(exc, ends):
    from flwr.app import RecordDict
    from helpers.flower_messages import make_incoming

    from fedmammo.federation.egress import error_reply

    reply = error_reply(make_incoming(RecordDict(), "train.classifier"), exc)
    assert reply.error.reason.endswith(ends), reply.error.reason


def test_a_sweep_point_with_an_arm_that_ended_early_is_run_again_by_resume(tmp_path, monkeypatch):
    # Prepare: a one-point sweep of fedavg_tiny whose training centres fail in round 1
    restore = _centres_out_of_memory(monkeypatch)
    buf = capture_console(monkeypatch)
    # Execute
    code = simulate.main(_tiny(tmp_path, "--set", "sweep={seeds: [[0]]}"))
    # Assert: the point is not marked DONE, and the last line says a resume tries it again
    run, out = _run_folder(tmp_path), buf.getvalue()
    (point,) = (run / "points").iterdir()
    assert code == 0, out
    assert not (point / "DONE").exists()
    assert out.splitlines()[-1].endswith(
        f"see each point's results.md); --resume tries them again: python -m "
        f"fedmammo.simulate --resume {run}"
    )
    # Execute: resume with the memory back; Assert: the point runs again and is done
    restore()
    buf = capture_console(monkeypatch)
    assert simulate.main(["--resume", str(run)]) == 0, buf.getvalue()
    assert (point / "DONE").is_file()
    assert results(point)["progress"]["federated|0"] == {"round": 1, "done": True}


def test_a_set_value_the_locale_could_not_decode_says_so_not_that_it_is_bad_yaml():
    # Prepare: what Python makes of a non-ASCII argument under LC_ALL=C with UTF-8 mode off
    arg = "data_dir=/tmp/Ünïcødé".encode().decode("ascii", "surrogateescape")
    # Execute / Assert
    with pytest.raises(ConfigError) as err:
        simulate.parse_sets([arg])
    assert str(err.value) == (
        f"--set {ascii(arg)}: holds bytes that are not text in this locale "
        f"({sys.getfilesystemencoding()}); fix: run with a UTF-8 locale (LC_ALL=C.UTF-8) or "
        "PYTHONUTF8=1"
    )
    assert simulate.parse_sets(["data_dir=/tmp/Ünïcødé"]) == {"data_dir": "/tmp/Ünïcødé"}


def test_a_sweep_points_plan_error_names_the_point_once(tmp_path, monkeypatch):
    # Prepare: a DP sweep over a recipe whose model has BatchNorm (DP-SGD cannot train it)
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "centres:\n  - {profile: tiny, name: a}\n  - {profile: tiny, name: b}\n"
        "  - {profile: tiny, name: t, role: test}\n"
        "strategy: fedavg\nsweep: {privacy.target_epsilon: [1.0, 8.0]}\n"
    )
    # Execute
    out = run_cli_in_process([str(scenario), "--check"], monkeypatch)
    # Assert: one line per point and training centre, each naming its point once
    assert out.code == 2 and len(out.errors) == 4, out.text
    for line, eps in zip(out.errors, ("1.0", "1.0", "8.0", "8.0"), strict=True):
        assert line.startswith(f"error: {scenario} sweep point privacy.target_epsilon={eps}: ")
        assert line.count("sweep point") == 1 and "DP-SGD cannot train" in line
