"""Ctrl-C (SIGINT) during a run of ``python -m fedmammo.simulate``.

It stops a run as a failure would: the rounds completed are kept, the run's results and report
are written, Ray is shut down, and one line says how to resume; the exit code is 130. A second
Ctrl-C leaves at once (results.json is always replaced whole, so the folder can be resumed as
after a kill).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from fedmammo.federation.console import safe

__all__ = [
    "INTERRUPTED",
    "STOP",
    "CtrlC",
    "Interrupted",
    "exit_code",
    "interrupted",
    "stoppable",
]

console = Console()

#: The exit code of a run stopped by Ctrl-C (SIGINT): what a shell reports, 128 + 2.
INTERRUPTED = 130
#: Seconds the run's threads get, after a Ctrl-C, to write its results and report (Ray: the
#: ServerApp's thread) and Ray to shut down, before the process leaves without them.
STOP_SECONDS = 60.0


#: Set by the first Ctrl-C of a run (:class:`CtrlC`): the ServerApp's thread stops.
STOP = threading.Event()


def stoppable(app, stop: threading.Event, threads: list[threading.Thread]):
    """``app`` as a ServerApp that stops once ``stop`` is set: its grid's next push or pull
    raises KeyboardInterrupt in the ServerApp's thread, so the run's ``finally`` blocks write
    its results and report, and the thread ends quietly (appended to ``threads``).

    Flower runs the ServerApp in a thread of its own, which Ctrl-C (raised in the main thread
    only) never reached: after the main thread had stopped Flower's engine, that thread went on
    waiting for replies nobody would send, up to the message timeout (2 h for training), and
    the process could not exit (threading._shutdown joins it) until a second Ctrl-C.
    """
    from flwr.serverapp import ServerApp

    def unless_stopped(call: Callable) -> Callable:
        @functools.wraps(call)
        def checked(*args, **kwargs):
            if stop.is_set():
                raise KeyboardInterrupt
            return call(*args, **kwargs)

        return checked

    wrapper = ServerApp()

    @wrapper.main()
    def main(grid, context) -> None:
        threads.append(threading.current_thread())
        for name in ("push_messages", "pull_messages"):  # (send_and_receive calls both)
            setattr(grid, name, unless_stopped(getattr(grid, name)))
        try:
            app(grid=grid, context=context)
        except KeyboardInterrupt:
            if not stop.is_set():
                raise

    return wrapper


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during the run in ``run_dir``."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir


class CtrlC:
    """Ctrl-C (SIGINT) during a run, from the main thread: the first raises KeyboardInterrupt
    (the run's ``finally`` blocks write its results and report) and stops the Ray backend's
    ServerApp thread (:data:`STOP`); one lost in a destructor or weakref callback ("Exception
    ignored in: <WeakSet ...> KeyboardInterrupt", the run went on) is raised again; a second
    Ctrl-C leaves at once (os._exit: results.json is replaced whole, so the folder can be
    resumed as after a kill). A KeyboardInterrupt leaving the block is :class:`Interrupted`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.saved: tuple | None = None
        self._lost = False

    def __enter__(self) -> CtrlC:
        STOP.clear()
        if threading.current_thread() is threading.main_thread():
            self.saved = (signal.signal(signal.SIGINT, self._handler), sys.unraisablehook)
            sys.unraisablehook = self._unraisable
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if self.saved is not None:
            signal.signal(signal.SIGINT, self.saved[0])
            sys.unraisablehook = self.saved[1]
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            raise Interrupted(self.run_dir) from None

    def _handler(self, signum: int, frame) -> None:
        if self._lost:  # raised again (see _unraisable)
            self._lost = False
            raise KeyboardInterrupt
        if STOP.is_set():  # the second Ctrl-C
            _say_interrupted(self.run_dir)
            _leave_now()
        STOP.set()
        raise KeyboardInterrupt

    def _unraisable(self, unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            import _thread

            # the handler raises it again, soon: from here it would be lost once more
            self._lost = True
            again = threading.Timer(0.05, _thread.interrupt_main, (signal.SIGINT,))
            again.daemon = True
            again.start()
            return
        assert self.saved is not None
        self.saved[1](unraisable)


def _say_interrupted(run_dir: Path | None) -> None:
    if run_dir is None:
        line = "interrupted: no run was started"
    else:
        line = (
            f"interrupted: completed rounds are kept in {run_dir}; resume with: "
            f"python -m fedmammo.simulate --resume {run_dir}"
        )
    console.print(safe(line), highlight=False, soft_wrap=True, markup=False)


def _leave_now() -> None:
    """End the process now with exit code 130, its output and run.log flushed."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(INTERRUPTED)


_exit_bounded = False  # _bounded_exit registered


def _bounded_exit() -> None:
    """At the interpreter's exit, before it joins the threads still running (a run's thread
    stuck in a Ray call, say): leave after STOP_SECONDS at the latest, or at once on Ctrl-C."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda signum, frame: _leave_now())

    def leave_later() -> None:
        time.sleep(STOP_SECONDS)
        _leave_now()

    threading.Thread(target=leave_later, name="fedmammo-exit", daemon=True).start()


def interrupted(exc: KeyboardInterrupt) -> int:
    """After Ctrl-C: Ray shut down (the private instance this process started, or its
    connection to a cluster), then one line saying how to resume; exit code 130. Ray gets
    STOP_SECONDS to shut down, and so does the interpreter's exit (:func:`_bounded_exit`); a
    second Ctrl-C leaves at once."""
    global _exit_bounded
    run_dir = exc.run_dir if isinstance(exc, Interrupted) else None
    try:
        if not _exit_bounded:
            with contextlib.suppress(AttributeError, RuntimeError):  # (a private helper)
                threading._register_atexit(_bounded_exit)  # type: ignore[attr-defined]
                _exit_bounded = True
        if "ray" in sys.modules:
            import ray

            if ray.is_initialized():
                stopping = threading.Thread(target=ray.shutdown, daemon=True)
                stopping.start()
                stopping.join(STOP_SECONDS)
    except KeyboardInterrupt:  # Ctrl-C again while Ray shuts down
        _say_interrupted(run_dir)
        _leave_now()
    _say_interrupted(run_dir)
    return INTERRUPTED


def exit_code(code: int) -> int:
    """A command-line process's exit code; after a finished run (0) a Ctrl-C in the seconds
    the interpreter takes to leave (Ray's and the threads' shutdown) is ignored, so it cannot
    turn a complete run into exit code 130. For ``if __name__ == "__main__"`` only: it changes
    the process's SIGINT handler."""
    if code == 0:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code
