"""Text from centres and files, made safe for the server's rich console.

A failure reason, a centre name or a file path may contain rich markup (``[/]`` raises
``MarkupError``, ``[link=...]`` makes a link) or terminal control sequences. :func:`safe` escapes
the markup and drops control characters; wrap every such value before interpolating it into a
string that ``console.print`` / ``console.rule`` / a rich ``Table`` cell renders as markup.
"""

from __future__ import annotations

import re

from rich.markup import escape

__all__ = ["safe"]

_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)


def safe(text: object) -> str:
    """``text`` with rich markup escaped and terminal control characters removed."""
    return escape(_CONTROL.sub("", str(text)))
