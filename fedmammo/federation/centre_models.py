"""The model a message carries, and a centre's local BatchNorm state (FedBN) per arm."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context
from torch import nn

from fedmammo.federation.codec import arrays_to_state
from fedmammo.federation.messages import ModelConfig
from fedmammo.models import build_model

__all__ = ["bn_keys", "model_from", "save_local_bn"]


def bn_keys(model: nn.Module) -> list[str]:
    """State-dict keys of every BatchNorm layer (kept local under FedBN)."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            keys += [f"{name}.{k}" for k in module.state_dict()]
    return keys


def model_from(
    m: ModelConfig, arrays: ArrayRecord, context: Context, *, keep_local_bn: bool
) -> nn.Module:
    """Build the model the message names and load its weights ``arrays`` into it.

    With ``keep_local_bn`` the centre's own BatchNorm state for this arm (if it has one)
    replaces the received one (FedBN).
    """
    model = build_model(m.model["name"], **m.model.get("options", {}))
    like = model.state_dict()
    state = arrays_to_state(arrays, like=like)
    local_key = f"bn.{m.arm}"
    if keep_local_bn and local_key in context.state:
        state.update(arrays_to_state(context.state[local_key], like=like))
    model.load_state_dict(state)
    return model


def save_local_bn(model: nn.Module, context: Context, arm: str) -> None:
    """Keep this centre's BatchNorm state for ``arm`` in the node state."""
    state = model.state_dict()
    context.state[f"bn.{arm}"] = ArrayRecord({k: state[k].detach().cpu() for k in bn_keys(model)})
