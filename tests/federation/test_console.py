"""Text from a centre never breaks or drives the server's console."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.errors import MarkupError
from rich.table import Table

from fedmammo.federation.console import safe

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
