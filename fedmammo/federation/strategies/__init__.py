"""Server-side strategy runners, one module per strategy kind, registered by kind."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["RUNNERS", "get_runner", "register_runner"]

RUNNERS: dict[str, Callable] = {}


def register_runner(kind: str) -> Callable[[Callable], Callable]:
    """Decorator registering ``run(orchestrator)`` for a strategy kind."""

    def deco(fn: Callable) -> Callable:
        RUNNERS[kind] = fn
        return fn

    return deco


def get_runner(kind: str) -> Callable:
    """The runner of ``kind`` (ValueError listing valid kinds when unknown)."""
    _import_builtin()
    if kind not in RUNNERS:
        raise ValueError(f"no server runner for strategy kind {kind!r}; valid: {sorted(RUNNERS)}")
    return RUNNERS[kind]


def _import_builtin() -> None:
    from fedmammo.federation.strategies import (
        fedavg,  # noqa: F401
        mtl_finetune,  # noqa: F401
        periodic,  # noqa: F401
        share_gans,  # noqa: F401
    )
