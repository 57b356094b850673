"""What a run tells its user: each Flower warning once, without colour codes off a terminal;
faults that never fired; a run without test images, said before it trains."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path


def test_a_flower_warning_prints_once_and_plainly_when_stderr_is_no_terminal() -> None:
    # Prepare: a process as simulate sets its logging up (Opacus' root console handler made
    # by quiet_libraries), its stderr a pipe
    code = (
        "import logging\n"
        "from flwr.common.logger import log\n"
        "from fedmammo.federation.run_log import quiet_libraries\n"
        "quiet_libraries()\n"
        "log(logging.WARNING, 'a fault never fired')\n"
        "logging.getLogger('somelib').warning('another library warns')\n"
    )
    # Execute
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Assert: Flower's line once (its own handler, not the root's too), no escape codes; other
    # libraries' warnings still reach the console through the root handler
    flower = [line for line in done.stderr.splitlines() if "a fault never fired" in line]
    assert len(flower) == 1, done.stderr
    assert flower[0].startswith("WARNING") and "\x1b[" not in flower[0]
    assert sum("another library warns" in line for line in done.stderr.splitlines()) == 1


def test_a_line_the_console_prints_itself_is_not_printed_again_by_the_root_handler(
    tmp_path,
) -> None:
    # Prepare: a process set up as simulate's, with a run log; fedmammo warns twice, once
    # marked as a line its console prints itself
    code = (
        "import logging, pathlib\n"
        "from fedmammo.federation.run_log import SHOWN, add_run_log, quiet_libraries\n"
        "quiet_libraries()\n"
        f"add_run_log(pathlib.Path({str(tmp_path)!r}))\n"
        "log = logging.getLogger('fedmammo.federation.orchestrator')\n"
        "log.warning('centre b failed in train', extra=SHOWN)\n"
        "log.warning('a warning of its own')\n"
    )
    # Execute
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Assert: the marked line is not on stderr (the console shows it), but it is in run.log
    assert "centre b failed in train" not in done.stderr
    assert "a warning of its own" in done.stderr
    text = (tmp_path / "run.log").read_text()
    assert "centre b failed in train" in text and "a warning of its own" in text


def test_a_fault_no_round_fired_is_a_warning_and_a_note(caplog) -> None:
    # Prepare: a run whose faults were planned (`flwr run` plans nothing): one fired, one
    # did not
    from types import SimpleNamespace

    from fedmammo.config.scenario import FaultSpec
    from fedmammo.federation.server_app import _note_faults_that_never_fired

    notes: list[str] = []
    fired = {"centre": "a", "round": 1, "arm": "federated", "reason": "InjectedFault: injected"}
    orc = SimpleNamespace(
        scenario=SimpleNamespace(
            faults=[FaultSpec(centre="a", round=1), FaultSpec(centre="b", round=2)]
        ),
        recorder=SimpleNamespace(failures=[fired], note=notes.append),
    )
    # Execute
    with caplog.at_level(logging.WARNING, logger="flwr"):
        _note_faults_that_never_fired(orc)
    # Assert
    assert notes == [
        "fault {centre: b, round: 2, arm: federated} never fired: no round 2 of an arm named "
        "'federated' trained at b (faults are injected in the rounds of fedavg, mtl_finetune, "
        "contrastive_dg and periodic_sampling; arm defaults to 'federated')"
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == notes


def test_a_run_whose_centres_hold_no_test_image_says_so_before_training(caplog) -> None:
    from types import SimpleNamespace

    from fedmammo.federation.server_app import _warn_without_test_images

    def orc(counts):
        notes: list[str] = []
        return SimpleNamespace(
            counts=counts, recorder=SimpleNamespace(notes=notes, note=notes.append)
        )

    without = orc(
        {
            "a": {"n-images": 8, "n|train|T-Ma|1": 6, "n|val|T-Ma|0": 2},
            "b": {"n-images": 4, "n|train|T-Ma|0": 4},
            "pooled": {"n-images": 12},
        }
    )
    with caplog.at_level(logging.WARNING, logger="flwr"):
        _warn_without_test_images(without)
    assert without.recorder.notes == [
        "no centre has test images (a, b): the run trains but tests nothing, so it reports no "
        "test metric; fix: give a centre role test, or a split with test > 0"
    ]
    # a centre with test images, or one that reported no counts (it may hold some): silence
    for counts in (
        {"a": {"n|train|T-Ma|1": 6}, "t": {"n|test|T-Ma|0": 3}},
        {"a": {"n|train|T-Ma|1": 6}, "b": {}},
    ):
        quiet = orc(counts)
        _warn_without_test_images(quiet)
        assert quiet.recorder.notes == []


def test_deployed_sites_with_another_torch_thread_count_get_a_note() -> None:
    # Prepare: fedavg_tiny's simulation gives each centre floor(num_cpus) = 1 torch thread
    from types import SimpleNamespace

    from fedmammo.config import load_scenario
    from fedmammo.federation.ray_cluster import centre_threads, client_resources
    from fedmammo.federation.server_app import _note_other_thread_counts

    scenario = load_scenario(Path(__file__).parents[2] / "scenarios" / "fedavg_tiny.yaml")
    assert centre_threads(client_resources(scenario)["num_cpus"]) == 1

    def orc(threads):
        notes: list[str] = []
        recorder = SimpleNamespace(notes=notes, note=notes.append)
        return SimpleNamespace(scenario=scenario, threads=threads, recorder=recorder)

    # Execute: two sites started without OMP_NUM_THREADS (torch's default, the cores)
    differ = orc({"tiny_a": 2, "tiny_b": 1, "tiny_t": 4})
    _note_other_thread_counts(differ)
    # Assert: the note names each such site with its count, and the fix
    assert differ.recorder.notes == [
        "torch threads per centre: tiny_a 2, tiny_t 4, where the simulation of this scenario "
        "gives each centre 1: their float sums run in another order, so training and every "
        "metric can differ from the simulation's, not only in the last digits; for the "
        "simulation's numbers, start those SuperNodes with OMP_NUM_THREADS=1"
    ]
    same = orc({"tiny_a": 1, "tiny_b": 1, "tiny_t": None})  # None: a site that did not say
    _note_other_thread_counts(same)
    assert same.recorder.notes == []
