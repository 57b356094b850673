"""Writing a file whole: through a temporary file beside it, then one atomic replace."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["replace_json", "replace_npz", "replace_whole"]


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


def replace_json(
    path: str | Path, payload: Any, *, default: Callable[[Any], Any] | None = None
) -> Path:
    """``payload`` as indented JSON in ``path``, written whole; NaN and infinities (a CI that
    could not be computed) as null, so the file is strict JSON that every parser reads.
    ``default`` converts what JSON has no type for (as in :func:`json.dumps`)."""
    text = json.dumps(_finite(payload), indent=1, allow_nan=False, default=default)
    return replace_whole(path, lambda tmp: tmp.write_text(text))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
