"""Progress of long phases: throttled log lines off a terminal, the centre's name, totals."""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Context, Message, RecordDict
from helpers.flower_messages import make_incoming

import fedmammo.evaluation.bootstrap as bootstrap_mod
import fedmammo.training.gan as gan_mod
from fedmammo.evaluation.bootstrap import bootstrap_statistic
from fedmammo.federation.handlers import handler
from fedmammo.progress import progress, progress_label
from fedmammo.training.gan import train_dcgan


class FakeClock:
    """Advances ``step`` seconds each time it is read."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fedmammo.progress"]


def test_off_a_terminal_a_phase_logs_a_line_every_period_and_a_closing_line(caplog):
    # Prepare: 10 epochs, 4 s each (the clock is read once at the start and once per item)
    caplog.set_level(logging.INFO, logger="fedmammo.progress")
    clock = FakeClock(4.0)
    # Execute
    with progress_label("centre B"):
        seen = list(progress(range(10), "GAN epochs", every=10, interactive=False, clock=clock))
    # Assert: every item passes through; a line at 12 s, 24 s, 36 s and one closing line
    assert seen == list(range(10))
    assert _lines(caplog) == [
        "centre B: GAN epochs 3/10 (30%), 12 s, ~28 s left",
        "centre B: GAN epochs 6/10 (60%), 24 s, ~16 s left",
        "centre B: GAN epochs 9/10 (90%), 36 s, ~4 s left",
        "centre B: GAN epochs 10/10 (100%), 44 s done",
    ]


def test_a_phase_shorter_than_the_period_says_nothing(caplog):
    caplog.set_level(logging.INFO, logger="fedmammo.progress")
    # Execute: 5 items of 1 s, period 10 s
    list(progress(range(5), "epochs", every=10, interactive=False, clock=FakeClock(1.0)))
    # Assert
    assert _lines(caplog) == []


def test_an_iterable_without_a_length_counts_without_a_total(caplog):
    caplog.set_level(logging.INFO, logger="fedmammo.progress")
    items = (i for i in range(3))
    list(progress(items, "resamples", every=1, interactive=False, clock=FakeClock(1.0)))
    assert _lines(caplog)[0] == "resamples 1, 1 s"


def test_off_a_terminal_no_bar_escape_codes_reach_the_console(capsys, caplog):
    caplog.set_level(logging.INFO, logger="fedmammo.progress")
    # Execute: pytest's captured stderr is not a terminal, so the default is log lines
    list(progress(range(50), "epochs", every=0))
    out, err = capsys.readouterr()
    # Assert: plain text lines only (a rich bar would write ANSI escape sequences)
    assert "\x1b[" not in out + err
    assert _lines(caplog)[-1] == "epochs 50/50 (100%), 0 s done"


def test_a_label_is_resolved_once_and_only_when_a_phase_shows_its_progress(caplog):
    caplog.set_level(logging.INFO, logger="fedmammo.progress")
    calls: list[int] = []

    def label() -> str:
        calls.append(1)
        return "centre D"

    with progress_label(label):
        # Execute: a short phase (no line), then a long one (two lines and the closing one)
        list(progress(range(3), "short", every=10, interactive=False, clock=FakeClock(1.0)))
        short_calls = len(calls)
        list(progress(range(4), "long", every=2, interactive=False, clock=FakeClock(1.0)))
    # Assert
    assert short_calls == 0 and len(calls) == 1
    assert _lines(caplog) == [
        "centre D: long 2/4 (50%), 2 s, ~2 s left",
        "centre D: long 4/4 (100%), 4 s",
        "centre D: long 4/4 (100%), 5 s done",
    ]


def test_a_handler_names_its_centre_in_the_lines_of_its_phases(caplog):
    # Prepare: a handler running a phase, a deployed node whose config names centre C
    caplog.set_level(logging.INFO, logger="fedmammo.progress")

    @handler("train.progress_probe")
    def probe(msg, context):
        list(progress(range(2), "probe epochs", every=0, interactive=False))
        return Message(RecordDict({}), reply_to=msg)

    context = Context(
        run_id=1, node_id=1, node_config={"centre": "C"}, state=RecordDict(), run_config={}
    )
    msg = make_incoming(RecordDict({}), "train.progress_probe", dst=1)
    # Execute
    probe(msg, context)
    # Assert
    assert _lines(caplog)[-1].startswith("centre C: probe epochs 2/2")


def test_gan_training_reports_its_epochs_and_bootstraps_their_resamples(monkeypatch):
    # Prepare: record what each loop announces
    announced: list[tuple[str, int | None]] = []

    def recording(items, description, **kw):
        announced.append((description, kw["total"] if "total" in kw else len(items)))
        return progress(items, description, **kw)

    monkeypatch.setattr(gan_mod, "progress", recording)
    monkeypatch.setattr(bootstrap_mod, "progress", recording)
    patches = np.random.default_rng(0).uniform(0.2, 0.8, size=(16, 32, 32)).astype(np.float32)
    # Execute
    train_dcgan(patches, epochs=3, snapshot_every=None, width=4, batch_size=8)
    value, low, high = bootstrap_statistic(lambda idx: float(np.mean(idx)), 20, n_boot=40)
    # Assert: the totals are the loops' real lengths
    assert announced == [("dcgan epochs", 3), ("bootstrap resamples", 40)]
    assert value == 9.5 and low <= value <= high


def test_a_forced_bar_still_yields_every_item():
    assert list(progress(range(4), "epochs", interactive=True)) == [0, 1, 2, 3]
