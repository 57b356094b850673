"""ClientApp handlers, one module per method, registered by message type.

A handler is ``fn(msg, context) -> Message``; it unpacks the message, calls ``training/``,
and packs the reply with :func:`fedmammo.federation.handlers.common.reply`.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["DP_AWARE", "HANDLERS", "handler", "load_builtin_handlers"]

#: (category, action) -> handler, e.g. ("train", "classifier").
HANDLERS: dict[tuple[str, str], Callable] = {}
#: Message types whose handlers train with DP when the centre's profile asks for it; a DP
#: centre refuses every other ``train.*`` message (``privacy_state.dp_guard_mod``).
DP_AWARE: set[str] = set()


def handler(category: str, action: str, *, dp: bool = False) -> Callable[[Callable], Callable]:
    """Register a handler for message type ``<category>.<action>``.

    ``dp=True`` declares that the handler trains with DP (through
    ``privacy_state.open_dp_session``) at a centre whose profile sets ``privacy``.
    """
    if category not in ("train", "evaluate", "query"):
        raise ValueError(f"unknown message category {category!r}")

    def deco(fn: Callable) -> Callable:
        if (category, action) in HANDLERS:
            raise ValueError(f"handler {category}.{action} registered twice")
        HANDLERS[(category, action)] = fn
        if dp:
            DP_AWARE.add(f"{category}.{action}")
        return fn

    return deco


def load_builtin_handlers() -> None:
    """Import every handler module so that they register themselves."""
    from fedmammo.federation.handlers import (
        audit,  # noqa: F401
        classifier,  # noqa: F401
        gan,  # noqa: F401
        mtl,  # noqa: F401
        patch_classifier,  # noqa: F401
        periodic,  # noqa: F401
    )
