"""Read the images of a cache build in worker processes, bounded by cores and memory.

The work function and its arguments are module-level and picklable, so the pool works with
every start method ("spawn" included). The default on Linux is "fork" when this process runs
a single thread (a worker starts in milliseconds instead of re-importing numpy, pydicom and
scipy), else "forkserver" or "spawn": forking a multi-threaded process (one that has run torch
operations, a Ray actor) can deadlock the child. Workers need neither torch nor pandas.
A worker process that dies (a crash in a native decoder, the out-of-memory killer) costs only
the file it was reading: that file is skipped and named, the others are read again.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fedmammo.data.reader_spec import MAX_PIXELS, Geometry
from fedmammo.errors import DataError

__all__ = [
    "SCALE",
    "START_METHOD",
    "Loaded",
    "available_memory",
    "cores",
    "plan_workers",
    "pool_context",
    "read_all",
    "read_one",
    "start_method",
]

#: Process start method of the workers; None: "fork" in a single-threaded process on Linux,
#: else "forkserver", else "spawn".
START_METHOD: str | None = None
#: Fewer images (or file bytes, by start method) than this per worker are read in this
#: process: a pool would not pay off (forking a process that has imported torch takes
#: ~50 ms per pool, reading ~6 ms per MB of uncompressed DICOM; a spawned worker ~1 s).
MIN_IMAGES_PER_WORKER = 8
MIN_BYTES_PER_WORKER = {"fork": 32 * 2**20, "forkserver": 128 * 2**20, "spawn": 128 * 2**20}
#: Peak working memory of a worker per image pixel (measured: ~15 bytes on a 13-megapixel
#: RLE film), and pixels per file byte assumed (lossless compression up to ~3:1 on 16 bits).
_BYTES_PER_PIXEL, _PIXELS_PER_FILE_BYTE = 16, 1.5
#: Cached value / SCALE = display intensity in [0, 1].
SCALE = 65535.0

#: One image read for the cache: (uint16 pixels, geometry) or the reason it was skipped.
Loaded = tuple[np.ndarray, Geometry] | str


def read_one(path: str, size: tuple[int, int], loader: Callable[..., Any]) -> Loaded:
    """Read one image with ``loader`` (load_mammogram) as uint16, or the reason it is unusable."""
    try:
        img, geometry = loader(path, size, return_geometry=True)
    except DataError as exc:
        return str(exc)
    except Exception as exc:  # not ours to swallow; say which file it came from
        exc.add_note(f"while reading {path} for the image cache")
        raise
    return np.rint(img * SCALE).astype(np.uint16), geometry


def cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def available_memory() -> int | None:
    """Bytes of memory this process may still use (cgroup limit or MemAvailable); None if
    unknown."""
    limits = []
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit.isdigit():
            limits.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return min(limits) if limits else None


def plan_workers(paths: Sequence[str], requested: int | None) -> int:
    """How many worker processes to read ``paths`` with (1: read them in this process).

    ``requested`` None means one per available core. Either way no more workers than the
    files give work for (MIN_IMAGES_PER_WORKER images and MIN_BYTES_PER_WORKER file bytes
    each), and
    no more than half the available memory holds, each worker needing about
    _BYTES_PER_PIXEL per pixel of the largest file.
    """
    workers = cores() if requested is None else max(1, int(requested))
    workers = min(workers, max(1, len(paths) // MIN_IMAGES_PER_WORKER))
    if workers > 1:
        sizes = [os.stat(p).st_size for p in paths if os.path.isfile(p)]
        per_start = MIN_BYTES_PER_WORKER.get(start_method(), MIN_BYTES_PER_WORKER["spawn"])
        workers = min(workers, max(1, sum(sizes) // per_start))
        pixels = min(MAX_PIXELS, _PIXELS_PER_FILE_BYTE * max(sizes, default=0))
        per_worker = _BYTES_PER_PIXEL * pixels + 64 * 2**20
        available = available_memory()
        if available is not None:
            workers = min(workers, max(1, int(available // 2 // per_worker)))
    return workers


def _single_threaded() -> bool:
    """True if this process runs one OS thread (native threads included, where visible)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return threading.active_count() == 1


def start_method() -> str:
    """The start method the workers use (START_METHOD, or the safe fast default)."""
    if START_METHOD is not None:
        return START_METHOD
    methods = multiprocessing.get_all_start_methods()
    if sys.platform.startswith("linux") and "fork" in methods and _single_threaded():
        return "fork"  # not on macOS, whose system libraries do not survive a fork
    return "forkserver" if "forkserver" in methods else "spawn"


def pool_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context of worker pools (:func:`start_method`)."""
    return multiprocessing.get_context(start_method())


def read_all(
    paths: Sequence[str],
    size: tuple[int, int],
    *,
    workers: int,
    loader: Callable[..., Any],
) -> Iterator[Loaded]:
    """Yield read_one for every path, in order, using ``workers`` processes (1: this one)."""
    work = partial(read_one, size=size, loader=loader)
    if workers <= 1:
        yield from map(work, paths)
        return
    done, pool_size = 0, workers
    while done < len(paths):
        try:
            for result in _pool_map(work, paths[done:], pool_size):
                yield result
                done += 1
        except BrokenProcessPool:
            if pool_size > 1:  # find the file: read on one by one from the first unfinished
                pool_size = 1
                continue
            yield (
                f"{paths[done]}: the worker process died while reading this file (a crash in "
                "a native decoder, or out of memory)"
            )
            done, pool_size = done + 1, workers


def _pool_map(
    work: Callable[[str], Loaded], paths: Sequence[str], workers: int
) -> Iterator[Loaded]:
    """Results of ``work`` over ``paths`` in order from a pool of ``workers`` processes."""
    chunk = 1 if workers == 1 else max(1, min(16, len(paths) // (4 * workers)))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=pool_context())
    try:
        yield from pool.map(work, paths, chunksize=chunk)
    finally:  # idle workers exit on their own; waiting for them would only add latency
        pool.shutdown(wait=False, cancel_futures=True)
