"""One process per run folder: a run and its ``--resume`` hold ``RUN_DIR/.lock`` (an
exclusive, non-blocking ``flock``, removed when the run ends), so two processes never train one
folder at once (under DP they would spend the centres' budgets twice)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from fedmammo.errors import FedmammoError

__all__ = ["LOCK", "hold_run_folder"]

log = logging.getLogger("fedmammo")

#: The lock file of a run folder in use (hidden, removed when the run ends; nothing that
#: reads run folders looks at it).
LOCK = ".lock"


@contextlib.contextmanager
def hold_run_folder(run_dir: Path, *, probe: bool = False) -> Iterator[None]:
    """The run folder for this process alone, for the length of the block: an exclusive,
    non-blocking ``flock`` on ``RUN_DIR/.lock`` (which holds this process's id), released and
    the file removed on every way out. FedmammoError (one line naming the process) when
    another process holds it: two runs of one folder at once would both train, and under DP
    spend the centres' budgets twice. ``probe`` (``--check``): only look, nothing written.
    On a file system without locks a warning, and the run goes on."""
    path = run_dir / LOCK
    if probe:
        _probe(path, run_dir)
        yield
        return
    fd = _acquire(path, run_dir)
    try:
        yield
    finally:
        if fd is not None:
            _release(fd, path)


def _in_use(run_dir: Path, fd: int) -> FedmammoError:
    """The refusal, naming the holder as its lock file does (it may not have written it yet)."""
    try:
        words = os.pread(fd, 300, 0).decode(errors="replace").split()
    except OSError:
        words = []
    holder = "another process"
    if words and words[0].isdigit():
        holder = f"process {words[0]}"
        if len(words) > 1 and words[1] != socket.gethostname():
            holder += f" on {words[1]}"
    return FedmammoError(f"run folder {run_dir} is in use by {holder}; wait for it or stop it")


def _probe(path: Path, run_dir: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: no run holds the folder
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(run_dir, fd) from None
    except OSError:
        pass  # a file system without locks: nothing to learn
    finally:
        os.close(fd)  # (releases the lock, if it was taken)


def _acquire(path: Path, run_dir: Path) -> int | None:
    """The lock file's descriptor, locked; None where the file system has no locks."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            refusal = _in_use(run_dir, fd)
            os.close(fd)
            raise refusal from None
        except OSError as exc:
            os.close(fd)
            line = (
                f"run folder {run_dir}: its file system cannot lock files ({exc.strerror or exc}): "
                "nothing stops a second process from running this folder at the same time"
            )
            log.warning("%s", line)
            return None
        try:  # the holder before us removes the file as it leaves: lock the one there now
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    with contextlib.suppress(OSError):  # (a full disk: held all the same, holder unnamed)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd


def _release(fd: int, path: Path) -> None:
    with contextlib.suppress(OSError):  # removed while still held (see _acquire)
        path.unlink()
    with contextlib.suppress(OSError):  # (a forked worker may still hold the descriptor)
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
