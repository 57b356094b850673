"""Model checkpoints of a run (``RUN_DIR/checkpoints/<arm>/seed<S>_round<RRR>.pt``): each a plain
state dict written whole, beside a sidecar JSON (same stem) holding the sha256 of its bytes and
what the model is (arm, seed, round, model spec, scenario, code), so that a resume never
continues from bytes other than the ones written and a model file found later can be traced
and rebuilt (docs/reuse.md)."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fedmammo.errors import DataError, FedmammoError
from fedmammo.files import replace_json, replace_whole
from fedmammo.models.registry import build_model, has_model

__all__ = ["checkpoint_problem", "read_checkpoint", "sidecar_path", "write_checkpoint"]

log = logging.getLogger(__name__)

#: What a damaged checkpoint's error line ends with (the run's completed rounds are kept).
_RESTORE = "restore it from a backup, or start a new run"


def sidecar_path(checkpoint: Path) -> Path:
    """The sidecar of ``checkpoint`` (``seed0_round002.pt`` -> ``seed0_round002.json``): the
    sha256 of its bytes, and what the model is (arm, seed, round, model spec, scenario, code)."""
    return checkpoint.with_suffix(".json")


def checkpoint_problem(path: Path, data: bytes | None = None) -> str | None:
    """What is wrong with checkpoint ``path`` (its bytes ``data``, read when not given) by its
    sidecar, a phrase; None when its sha256 is the one recorded, or when it has no sidecar
    (written before fedmammo recorded one: nothing to compare with)."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        about = json.loads(sidecar.read_text())
        recorded = about["sha256"]
        if not isinstance(recorded, str):
            raise TypeError(f"'sha256' is {type(recorded).__name__}, not a string")
        if about.get("file", path.name) != path.name:  # (a copy over another round or seed)
            return f"its sidecar {sidecar.name} describes {about['file']}, not this file"
    except (ValueError, KeyError, TypeError) as exc:
        why = f"no {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        return (
            f"its sidecar {sidecar.name} is damaged ({why}; without the sidecar the checkpoint "
            "would be read unchecked)"
        )
    if data is None:
        if not path.is_file():
            return f"missing (its sidecar {sidecar.name} is there)"
        data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != recorded:
        return (
            f"damaged: its sha256 is not the one recorded in {sidecar.name} when it was "
            "written (the file changed on disk)"
        )
    return None


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in checkpoint ``path``, its bytes checked against its sidecar's sha256
    (:func:`checkpoint_problem`). DataError, one line naming the file, when it is missing,
    damaged or not a checkpoint PyTorch can read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"{path}: no such checkpoint (deleted or moved since the run wrote it); {_RESTORE}"
        ) from None
    if problem := checkpoint_problem(path, data):
        raise DataError(f"checkpoint {path}: {problem}; the run cannot go on from it: {_RESTORE}")
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # any reason of torch's (zip, pickle, EOF): the file is damaged
        lines = (str(exc) or type(exc).__name__).strip().splitlines() or [type(exc).__name__]
        reason = " ".join(lines[-1].split()).split(". ")[0][:200]
        raise DataError(
            f"checkpoint {path}: damaged, PyTorch cannot read it ({reason}); the run cannot go "
            f"on from it: {_RESTORE}"
        ) from None


@functools.cache
def _shapes(spec: str) -> dict[str, tuple[int, ...]] | None:
    """The state-dict keys and shapes of the model JSON ``spec`` builds (on the ``meta``
    device: nothing allocated or drawn), or None when it builds none."""
    model = json.loads(spec)
    try:
        has_model(model["name"])  # its family imported off the meta device
        with torch.device("meta"):
            net = build_model(model["name"], **model.get("options", {}))
    except (FedmammoError, KeyError, TypeError, ValueError, RuntimeError, NotImplementedError):
        return None
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _fitting_spec(
    model: Mapping[str, Any] | None, state: Mapping[str, torch.Tensor]
) -> dict | None:
    """``model`` as JSON data when it builds a model with exactly ``state``'s keys and shapes
    (what ``build_model(name, **options).load_state_dict(state)`` needs), else None."""
    if not model:
        return None
    spec = json.loads(json.dumps(dict(model), default=str))
    shapes = _shapes(json.dumps(spec, sort_keys=True))
    if shapes != {k: tuple(v.shape) for k, v in state.items()}:
        log.debug("checkpoint: model %s does not fit the state saved; not recorded", spec)
        return None
    return spec


def write_checkpoint(path: Path, state: Mapping[str, torch.Tensor], about: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` whole, a plain state dict (``torch.load(path,
    weights_only=True)``), and its sidecar (:func:`sidecar_path`): the file's name, sha256 and
    size, then ``about`` (its ``model`` spec, ``{"name", "options"}``, kept only when it builds a
    model with exactly these keys and shapes, else null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    data = buffer.getvalue()
    sidecar = sidecar_path(path)
    # first away: killed between the two writes, a checkpoint is left without a sidecar (read
    # unchecked, as an older run's), never with one that describes other bytes
    sidecar.unlink(missing_ok=True)
    replace_whole(path, lambda tmp: tmp.write_bytes(data))
    head = {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    replace_json(sidecar, {**head, **about, "model": _fitting_spec(about.get("model"), state)})
    return path
