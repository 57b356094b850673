"""report.html and the trackers follow a run as the recorder records it."""

from __future__ import annotations

import pytest

from fedmammo.evaluation.results import RunRecorder
from fedmammo.evaluation.run_outputs import attach_run_outputs

SCENARIO = {"name": "tiny", "centres": [], "strategy": {"kind": "fedavg"}}


def _round(recorder: RunRecorder, rnd: int) -> None:
    recorder.add(
        [{"metric": "auc", "value": 0.5 + rnd / 10}],
        arm="federated",
        seed=0,
        centre="a",
        split="val",
        round=rnd,
    )
    recorder.complete_round("federated", 0, rnd)


def test_the_report_is_rewritten_after_progress_and_at_close(tmp_path):
    # Prepare: a recorder with outputs that may rewrite the report at every event
    recorder = RunRecorder(tmp_path, meta={"scenario": "tiny"})
    outputs = attach_run_outputs(recorder, SCENARIO, report_every=0.0)
    # Execute: one completed round
    _round(recorder, 1)
    # Assert: the interrupted run already has its report, with the round's value
    first = (tmp_path / "report.html").read_text()
    assert "tiny" in first
    _round(recorder, 2)
    outputs.close()
    assert (tmp_path / "report.html").stat().st_size > 0


def test_per_round_records_reach_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Prepare: tracking on in the (resolved) scenario
    recorder = RunRecorder(tmp_path / "run")
    outputs = attach_run_outputs(
        recorder, {**SCENARIO, "tracking": {"tensorboard": True}}, report_every=1e9
    )
    # Execute: two rounds, then the end of the run
    for rnd in (1, 2):
        _round(recorder, rnd)
    outputs.close()
    # Assert: the values per round, read back from the event files
    files = sorted((tmp_path / "run" / "tensorboard").rglob("events.*"))
    assert files
    values = {}
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            values.update({(tag, e.step): e.value for e in acc.Scalars(tag)})
    rounds = {step: v for (tag, step), v in values.items() if "val/auc" in tag}
    assert rounds == pytest.approx({1: 0.6, 2: 0.7})


def test_a_slow_report_is_rewritten_less_often(tmp_path, monkeypatch):
    """A page that takes d seconds to write waits 9 d before the next (REPORT_SHARE = 0.1),
    and at least report_every: the live report never takes more than a tenth of the run."""
    from fedmammo.evaluation import run_outputs

    clock = {"now": 1000.0}
    writes = []

    def slow_write(run_dir):
        writes.append(clock["now"])
        clock["now"] += 25.0  # the page took 25 s (100 centres)

    monkeypatch.setattr(run_outputs.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(run_outputs, "write_report", slow_write)
    recorder = RunRecorder(tmp_path, meta={"scenario": "tiny"})
    attach_run_outputs(recorder, SCENARIO, report_every=30.0)
    for rnd in range(1, 40):
        _round(recorder, rnd)
        clock["now"] += 10.0  # a round every 10 s
    gaps = [b - a - 25.0 for a, b in zip(writes, writes[1:])]
    assert writes and all(g >= 9 * 25.0 for g in gaps), gaps
    # the run lasts 440 s: pages at 0 s and after 250 s, where report_every alone gives ~12
    assert len(writes) == 2
