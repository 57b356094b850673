"""Dotted-key overrides (``--set a.b.c=value``) applied to nested mappings.

A mapping value merges into the mapping it lands on, key by key and recursively, so that the
nested form of an override equals its dotted form (``data: {synthetic: {lesion_contrast: 2}}``
is ``data.synthetic.lesion_contrast: 2``). A list, a scalar or an empty mapping (``{}``, which
clears: ``privacy: {}``) replaces the value.
"""

from __future__ import annotations

import copy
from typing import Any

from fedmammo.errors import ConfigError

__all__ = ["apply_dotted", "merged", "split_dotted"]


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


def merged(old: Any, new: Any) -> Any:
    """``new`` given for a key that holds ``old``: a non-empty mapping merges into a mapping,
    key by key and recursively; anything else (a list, a scalar, ``{}``) replaces ``old``.

    Returns a new value; neither argument is changed (nor shared with the result).
    """
    if not (isinstance(new, dict) and new and isinstance(old, dict)):
        return copy.deepcopy(new)
    out = copy.deepcopy(old)
    for key, value in new.items():
        out[key] = merged(out[key], value) if key in out else copy.deepcopy(value)
    return out


def apply_dotted(data: dict[str, Any], dotted: str, value: Any, *, merge: bool = True) -> None:
    """Set ``data[a][b][c] = value`` for ``dotted = "a.b.c"`` (list indices allowed); a
    mapping ``value`` merges into a mapping there (:func:`merged`) unless ``merge`` is False.

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
        key: int | str = _index(node, last, dotted)
        old = node[key]
    else:
        key = last
        old = node.get(last)
    node[key] = merged(old, value) if merge else copy.deepcopy(value)
