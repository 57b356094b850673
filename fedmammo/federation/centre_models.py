"""The model a message carries, and a centre's local BatchNorm state (FedBN) per arm.

FedBN's BatchNorm state is the centre's own: it never leaves, and it lives in the centre's
state folder (:func:`~fedmammo.federation.site.state_dir`, ``fedbn/<arm>.pt``), so a
restarted node or a resumed run continues with it. An arm's first round starts from the
received model's BatchNorm state (a new seed, or a new run, never inherits another's).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context
from torch import nn

from fedmammo.federation.centre_runtime import identity_of
from fedmammo.federation.codec import arrays_to_state
from fedmammo.federation.messages import ModelConfig
from fedmammo.federation.site import state_dir
from fedmammo.models import build_model

__all__ = ["bn_keys", "local_bn_file", "model_from", "save_local_bn"]


def bn_keys(model: nn.Module) -> list[str]:
    """State-dict keys of every BatchNorm layer (kept local under FedBN)."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            keys += [f"{name}.{k}" for k in module.state_dict()]
    return keys


def local_bn_file(context: Context, arm: str) -> Path:
    """Where this centre keeps its BatchNorm state of ``arm`` (its own state folder)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", arm)[:60]
    digest = hashlib.sha256(arm.encode()).hexdigest()[:8]
    return state_dir(context, identity_of(context)) / "fedbn" / f"{name}-{digest}.pt"


def model_from(
    m: ModelConfig, arrays: ArrayRecord, context: Context, *, keep_local_bn: bool
) -> nn.Module:
    """Build the model the message names and load its weights ``arrays`` into it.

    With ``keep_local_bn`` the centre's own BatchNorm state for this arm (if it has one, and
    the message is not the arm's first round) replaces the received one (FedBN).
    """
    model = build_model(m.model["name"], **m.model.get("options", {}))
    like = model.state_dict()
    state = arrays_to_state(arrays, like=like)
    first_round = getattr(m, "server_round", None) == 1
    path = local_bn_file(context, m.arm) if keep_local_bn and not first_round else None
    if path is not None and path.is_file():
        own = torch.load(path, weights_only=True)
        state.update({k: v for k, v in own.items() if k in like})
    model.load_state_dict(state)
    return model


def save_local_bn(model: nn.Module, context: Context, arm: str) -> None:
    """Keep this centre's BatchNorm state for ``arm`` in its state folder (atomic write)."""
    state = model.state_dict()
    path = local_bn_file(context, arm)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({k: state[k].detach().cpu().clone() for k in bn_keys(model)}, tmp)
    tmp.replace(path)
