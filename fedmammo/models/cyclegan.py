"""CycleGAN networks for 1-channel patches: ResNet-style generators and PatchGAN critics.

After Zhu et al. (2017), scaled down for patches: the generator is a 7x7 stem, two stride-2
down-sampling convolutions, ``n_blocks`` residual blocks and two transposed up-sampling
convolutions, with instance norm (no running statistics, so Opacus-compatible) and a tanh
output in [-1, 1]; the discriminator is a PatchGAN (4x4 convolutions, LeakyReLU(0.2), instance
norm from the second layer) giving one real/fake score per overlapping receptive field.
Patch sides must be multiples of 4.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from fedmammo.errors import ConfigError

__all__ = [
    "CycleGanDescription",
    "PatchDiscriminator",
    "ResnetGenerator",
    "build_cyclegan",
    "build_translator",
]


def _inorm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)


@dataclass
class CycleGanDescription:
    """Architecture of a CycleGAN's generators and critics (JSON-serialisable)."""

    patch_size: int
    width: int = 32
    n_blocks: int = 3
    d_width: int = 32
    d_layers: int = 3

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _inorm(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _inorm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Patch ``(B, 1, S, S)`` in [-1, 1] -> translated patch of the same shape in [-1, 1]."""

    def __init__(self, *, width: int = 32, n_blocks: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(1, width, 7),
            _inorm(width),
            nn.ReLU(inplace=True),
        ]
        for mult in (1, 2):
            layers += [
                nn.Conv2d(width * mult, width * mult * 2, 3, stride=2, padding=1),
                _inorm(width * mult * 2),
                nn.ReLU(inplace=True),
            ]
        layers += [_ResidualBlock(width * 4) for _ in range(n_blocks)]
        for mult in (4, 2):
            layers += [
                nn.ConvTranspose2d(width * mult, width * mult // 2, 3, 2, 1, output_padding=1),
                _inorm(width * mult // 2),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, 1, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """Patch ``(B, 1, S, S)`` -> a map of real/fake scores ``(B, 1, h, w)`` (no sigmoid)."""

    def __init__(self, *, width: int = 32, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        channels = width
        for i in range(1, n_layers + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [
                nn.Conv2d(channels, out, 4, stride, 1),
                _inorm(out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        nn.init.zeros_(module.bias)


def _check(description: CycleGanDescription) -> None:
    size = description.patch_size
    if size < 8 or size % 4:
        raise ConfigError(f"CycleGAN patch_size must be a multiple of 4 and >= 8, got {size}")
    if size // 2**description.d_layers < 4:
        raise ConfigError(
            f"CycleGAN d_layers={description.d_layers} is too deep for {size}px patches; "
            f"use at most {(size // 4).bit_length() - 1}"
        )


def build_translator(description: CycleGanDescription) -> ResnetGenerator:
    """Return one CycleGAN generator for ``description`` (normal(0, 0.02) initialisation)."""
    _check(description)
    gen = ResnetGenerator(width=description.width, n_blocks=description.n_blocks)
    gen.apply(_init)
    return gen


def build_cyclegan(
    description: CycleGanDescription,
) -> tuple[ResnetGenerator, ResnetGenerator, PatchDiscriminator, PatchDiscriminator]:
    """Return ``(G_ab, G_ba, D_a, D_b)``: G_ab maps domain A to B, D_a judges domain A."""
    _check(description)
    g_ab, g_ba = build_translator(description), build_translator(description)
    d_a, d_b = (
        PatchDiscriminator(width=description.d_width, n_layers=description.d_layers)
        for _ in range(2)
    )
    d_a.apply(_init)
    d_b.apply(_init)
    return g_ab, g_ba, d_a, d_b
