"""Progress of long phases (GAN epochs, fine-tuning, bootstraps) where the user can see it.

``for epoch in progress(range(1, n + 1), "DCGAN epochs"): ...``

- On a terminal (``sys.stderr.isatty()``, the in-process console of a user) the phase gets a
  transient ``rich`` bar.
- Anywhere else (a centre inside a Ray actor, a SuperNode, a piped or captured console) a bar
  would print escape codes into someone's log, so the phase logs one line through the
  ``fedmammo.progress`` logger at most every ``every`` seconds
  (``centre B: DCGAN epochs 40/200 (20%), 12 s, ~48 s left``) and a closing line when it
  logged any; a phase shorter than ``every`` says nothing. Ray forwards an actor's stderr to
  the driver's console, so a centre's line reaches the user prefixed by its actor; in the
  driver the records also reach ``run.log``.

:func:`progress_label` names the centre (the message handler sets it), so training code need
not know where it runs. Updates cost one clock read per item.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeAlias, TypeVar

__all__ = ["EVERY_SECONDS", "progress", "progress_label"]

T = TypeVar("T")

#: Seconds between two log lines of one phase (non-terminal consoles).
EVERY_SECONDS = 15.0

logger = logging.getLogger("fedmammo.progress")
Label: TypeAlias = str | Callable[[], str]
_label: contextvars.ContextVar[Label] = contextvars.ContextVar("fedmammo_progress", default="")


@contextlib.contextmanager
def progress_label(label: Label) -> Iterator[None]:
    """Prefix the progress lines of the phases run inside the block with ``label`` (or what
    it returns: called only when a phase shows its progress, so setting it costs nothing)."""
    token = _label.set(label)
    try:
        yield
    finally:
        _label.reset(token)


def labelled(text: str) -> str:
    """``text`` prefixed with the label of the :func:`progress_label` block it runs in (at a
    centre: ``centre <name>: ...``), for log lines that would otherwise name no centre."""
    label = _label.get()
    label = label() if callable(label) else label
    return f"{label}: {text}" if label else text


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (Ray and test runners replace it)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _ensure_handler() -> None:
    """Lines must be seen in a process nobody configured logging for (a Ray actor)."""
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    root = logging.getLogger()
    # a root console handler at INFO already prints them (Opacus' basicConfig where fedmammo
    # did not quiet it); in the driver, root holds run.log, which gets them too
    console = any(
        type(h) is logging.StreamHandler and h.level <= logging.INFO for h in root.handlers
    )
    if not console and not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def _line(head: str, done: int, total: int | None, elapsed: float) -> str:
    if not total:
        return f"{head} {done}, {elapsed:.0f} s"
    left = elapsed / done * (total - done) if done else float("nan")
    eta = f", ~{left:.0f} s left" if 0 < done < total else ""
    return f"{head} {done}/{total} ({100 * done / total:.0f}%), {elapsed:.0f} s{eta}"


def _logged(
    items: Iterable[T],
    description: str,
    total: int | None,
    every: float,
    clock: Callable[[], float],
) -> Iterator[T]:
    start = last = clock()
    done, head = 0, ""
    for item in items:
        yield item
        done += 1
        now = clock()
        if now - last >= every:
            if not head:  # the first line of the phase
                _ensure_handler()
                head = labelled(description)
            logger.info(_line(head, done, total, now - start))
            last = now
    if head:
        logger.info(_line(head, done, total, clock() - start) + " done")


def progress(
    items: Iterable[T],
    description: str,
    *,
    total: int | None = None,
    every: float = EVERY_SECONDS,
    interactive: bool | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[T]:
    """Iterate ``items``, showing the phase's progress (module docstring says how).

    ``total`` defaults to ``len(items)`` where it has one; ``interactive`` forces the bar
    (True) or the log lines (False); ``clock`` is for tests.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if interactive is None:
        interactive = sys.stderr.isatty()
    if not interactive:
        return _logged(items, description, total, every, clock)
    from rich.progress import track

    return iter(track(items, total=total, description=labelled(description), transient=True))
