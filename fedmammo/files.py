"""Writing a file whole: through a temporary file beside it, then one atomic replace."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

__all__ = ["replace_npz", "replace_whole"]


def replace_whole(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` by calling ``write`` on a temporary file beside it (the same folder, so
    the same file system), then replace ``path`` with it: a reader, or a run killed meanwhile,
    sees the old file or the new one, never half of one. Returns ``path``. ``write`` gets the
    temporary path and must write exactly there (see :func:`replace_npz`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def replace_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """``np.savez`` of ``arrays`` to ``path``, written whole (:func:`replace_whole`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file, not a name: savez would append ".npz"
            np.savez(f, **arrays)

    return replace_whole(path, write)
