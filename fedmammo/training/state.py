"""Model state as the training loops hand it on: a detached CPU copy of a state dict."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["StateDict", "cpu_state"]

StateDict = dict[str, torch.Tensor]


def cpu_state(module: nn.Module) -> StateDict:
    """A detached CPU copy of ``module``'s state dict (safe to keep while training goes on)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
