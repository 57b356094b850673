"""Dotted-key overrides (``--set a.b.c=value``) applied to nested mappings."""

from __future__ import annotations

from typing import Any

from fedmammo.errors import ConfigError

__all__ = ["apply_dotted"]


def apply_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``dotted = "a.b.c"`` (list indices allowed)."""
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[int(part)]
            continue
        if part not in node or node[part] is None:
            node[part] = {}
        if not isinstance(node[part], dict | list):
            raise ConfigError(f"--set {dotted}: '{'.'.join(parts[: i + 1])}' is not a mapping")
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
