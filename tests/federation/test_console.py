"""Text from a centre never breaks or drives the server's console."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from rich.console import Console
from rich.errors import MarkupError
from rich.table import Table

from fedmammo.data.adapters._common import print_summary
from fedmammo.federation.console import safe
from fedmammo.federation.orchestrator import Orchestrator

HOSTILE = [
    "boom [/]",
    "[bold red]fake alarm[/bold red]",
    "[link=https://evil.example]click[/link]",
    "centre A\x1b[2J\x1b]0;owned\x07 done",
    "trailing backslash \\",
]


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, color_system=None, highlight=False), out


def test_unescaped_reason_crashes_rich():
    console, _ = _console()
    with pytest.raises(MarkupError):
        console.print(f"[yellow]centre A failed: {HOSTILE[0]}[/]")


@pytest.mark.parametrize("text", HOSTILE)
def test_escaped_text_prints_literally(text):
    # Prepare
    console, out = _console()
    # Execute
    console.print(f"[yellow]centre {safe('B')} failed: {safe(text)}[/]")
    console.rule(f"[bold]{safe(text)}[/]")
    table = Table(safe(text))
    table.add_row(safe(text))
    console.print(table)
    # Assert: markup shown as typed, no control characters reach the terminal
    printed = out.getvalue()
    visible = text.replace("\x1b[2J", "").replace("\x1b]0;owned\x07", "")
    assert visible in printed.replace("\n", "")
    assert "\x1b" not in printed and "\x07" not in printed


def test_a_centres_failure_reason_reaches_the_server_console_literally():
    # Prepare: the orchestrator's failure path with a reason a hostile centre chose
    console, out = _console()
    recorded = []
    orc = SimpleNamespace(
        console=console, recorder=SimpleNamespace(failure=lambda **kw: recorded.append(kw))
    )
    # Execute
    Orchestrator.record_failures(
        orc, {"B": HOSTILE[0] + " " + HOSTILE[1]}, arm="fed[/]", seed=0, rnd=2, phase="train"
    )
    # Assert: printed as sent (no MarkupError), and recorded unchanged in results.json
    printed = out.getvalue().replace("\n", "")
    assert "centre B failed in train (arm fed[/], round 2): boom [/] [bold red]fake" in printed
    assert recorded[0]["reason"] == "boom [/] [bold red]fake alarm[/bold red]"


def test_a_datasets_summary_prints_values_read_from_its_files_literally():
    # Prepare: label values and skip reasons as a dataset's CSV could hold them
    console, out = _console()
    summary = {
        "images": 2,
        "patients": 1,
        "skipped": 1,
        "skip_reasons": {"bad [/] file": 1},
        "unreadable_labels": {"[bold]BENIGN[/bold]": 1},
        "segments": {"S-[red]x[/red]": 2},
        "labels": {"malignancy": {"available": 1, "fraction": 0.5, "counts": {"[/]": 1}}},
    }
    # Execute
    print_summary(summary, title="set [/]", console=console)
    # Assert
    printed = out.getvalue()
    for text in ("set [/]", "bad [/] file", "[bold]BENIGN[/bold]", "S-[red]x[/red]", "[/]: 1"):
        assert text in printed
