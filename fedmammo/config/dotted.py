"""Dotted-key overrides (``--set a.b.c=value``) applied to nested mappings."""

from __future__ import annotations

from typing import Any

from fedmammo.errors import ConfigError

__all__ = ["apply_dotted", "split_dotted"]


def split_dotted(dotted: str) -> list[str]:
    """The parts of ``a.b.c``; ConfigError for an empty key or an empty part (``a..b``)."""
    parts = dotted.split(".")
    if not dotted or any(not p.strip() for p in parts):
        raise ConfigError(
            f"key path {dotted!r} has an empty part; write dotted keys like "
            "'strategy.params.rounds' or 'centres.0.role'"
        )
    return [p.strip() for p in parts]


def _index(node: list, part: str, where: str) -> int:
    try:
        i = int(part)
    except ValueError:
        raise ConfigError(
            f"key path {where!r}: {part!r} indexes a list; use a number 0..{len(node) - 1}"
        ) from None
    if not -len(node) <= i < len(node):
        span = f"0..{len(node) - 1}" if node else "none: the list is empty"
        raise ConfigError(f"key path {where!r}: index {i} is out of range (valid: {span})")
    return i


def apply_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``dotted = "a.b.c"`` (list indices allowed).

    Missing mappings on the way are created (validation then names an unknown key); a path
    through a value that is not a mapping or list, or a bad list index, is a ConfigError.
    """
    parts = split_dotted(dotted)
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = node[_index(node, part, where)]
        else:
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        if not isinstance(node, dict | list):
            raise ConfigError(
                f"key path {dotted!r}: '{where}' is a {type(node).__name__}, not a mapping"
            )
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, dotted)] = value
    else:
        node[last] = value
