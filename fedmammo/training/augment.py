"""Per-sample flips drawn from a caller's generator (torchvision's ``RandomHorizontalFlip``
flips a whole batch with the global RNG, so training runs could not be replayed from a seed)."""

from __future__ import annotations

import torch

__all__ = ["random_flips", "vertical_flips"]


def random_flips(x: torch.Tensor, generator: torch.Generator, *, p: float = 0.5) -> torch.Tensor:
    """Flip each sample of ``(B, C, H, W)`` horizontally and, independently, vertically with p."""
    flip = torch.rand(2, x.shape[0], generator=generator) < p
    x = torch.where(flip[0].view(-1, 1, 1, 1), x.flip(-1), x)
    return torch.where(flip[1].view(-1, 1, 1, 1), x.flip(-2), x)


def vertical_flips(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each sample of ``(B, C, H, W)`` upside down with probability 1/2 (no horizontal
    flip: a mammogram's chest wall stays on its side)."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-2), x)
