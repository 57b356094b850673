"""Contrastive encoders (Li et al.): a ResNet backbone, a SimCLR projection head and the losses.

The backbone is torchvision's ResNet-50 (the paper's choice, the default for full runs),
ResNet-18, or a width- and depth-reduced ResNet built from torchvision's ``BasicBlock`` for
CPU-scale runs. All take 1-channel images in [0, 1] (the first convolution has one input
channel) and are built with ``weights=None``: no pretrained weights can be downloaded here, so
the paper's ImageNet and ImageNet -> Mammo rows cannot be reproduced and every encoder starts
from random initialisation.

The losses live in :mod:`fedmammo.models.contrastive_losses` (no torchvision: a centre that
trains with them need not import it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

import torch
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from fedmammo.errors import ConfigError
from fedmammo.models.classifiers import make_norm
from fedmammo.models.registry import register_model

__all__ = [
    "ARCHS",
    "ContrastiveEncoder",
    "SlimResNet",
    "build_contrastive_encoder",
    "stage_channels",
]

#: Backbone architectures of :func:`build_contrastive_encoder`.
ARCHS = ("resnet50", "resnet18", "resnet_slim")

Norm = Literal["batch", "group"]


class _BasicBlock(BasicBlock):
    """torchvision's BasicBlock with the shortcut added out of place (Opacus' backward hooks
    refuse torchvision's in-place ``out += identity`` on a hooked layer's output)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class _Bottleneck(Bottleneck):
    """torchvision's Bottleneck with the shortcut added out of place (see _BasicBlock)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _out_of_place_shortcuts(backbone: nn.Module) -> None:
    """Swap torchvision's residual blocks for the out-of-place ones (same weights and keys)."""
    for module in backbone.modules():
        if type(module) is BasicBlock:
            module.__class__ = _BasicBlock
        elif type(module) is Bottleneck:
            module.__class__ = _Bottleneck


class SlimResNet(ResNet):
    """A torchvision ResNet of ``BasicBlock`` stages with chosen widths and depths (CPU scale).

    Same attribute names and forward as torchvision's ResNet (``conv1`` ... ``layer4``,
    ``avgpool``, ``fc``), so detection and FPN utilities treat it like ``resnet18``.
    """

    def __init__(
        self,
        *,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (1, 1, 1, 1),
        in_channels: int = 1,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        nn.Module.__init__(self)
        if len(widths) != 4 or len(blocks) != 4 or min(*widths, *blocks) < 1:
            raise ConfigError(
                f"SlimResNet: need 4 positive widths and blocks, got {widths} {blocks}"
            )
        self._norm_layer = norm_layer or nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = widths[0], 1, 1, 64
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(_BasicBlock, widths[0], blocks[0])
        self.layer2 = self._make_layer(_BasicBlock, widths[1], blocks[1], stride=2)
        self.layer3 = self._make_layer(_BasicBlock, widths[2], blocks[2], stride=2)
        self.layer4 = self._make_layer(_BasicBlock, widths[3], blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _norm_layer(norm: Norm) -> Callable[[int], nn.Module]:
    if norm not in ("batch", "group"):
        raise ConfigError(f"contrastive encoder: norm must be 'batch' or 'group', got {norm!r}")
    return partial(make_norm, norm)


def stage_channels(backbone: ResNet) -> list[int]:
    """Output channels of ``layer1`` ... ``layer4`` of a torchvision-style ResNet."""
    out = []
    for name in ("layer1", "layer2", "layer3", "layer4"):
        last = getattr(backbone, name)[-1]
        conv = last.conv3 if hasattr(last, "conv3") else last.conv2
        out.append(int(conv.out_channels))
    return out


class ContrastiveEncoder(nn.Module):
    """ResNet backbone -> pooled features (``features``) -> projection head (``forward``).

    ``features(x)`` gives the (N, feature_dim) representation the downstream tasks start
    from; ``forward(x)`` gives the (N, projection_dim) projections the NT-Xent loss compares
    (SimCLR's 2-layer MLP head; the head is dropped downstream).
    """

    def __init__(
        self,
        backbone: ResNet,
        *,
        arch: str,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.arch = arch
        self.feature_dim = stage_channels(backbone)[-1]
        hidden = hidden_dim or self.feature_dim
        self.head = nn.Sequential(
            nn.Linear(self.feature_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, projection_dim),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, feature_dim) of images (N, C, H, W)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _backbone(arch: str, *, in_channels: int, norm: Norm, width: int, blocks: Sequence[int]):
    norm_layer = _norm_layer(norm)
    if arch == "resnet_slim":
        widths = [width * 2**i for i in range(4)]
        return SlimResNet(
            widths=widths, blocks=blocks, in_channels=in_channels, norm_layer=norm_layer
        )
    if arch not in ("resnet50", "resnet18"):
        raise ConfigError(f"unknown contrastive backbone {arch!r}; valid: {', '.join(ARCHS)}")
    builder = resnet50 if arch == "resnet50" else resnet18
    net = builder(weights=None, norm_layer=norm_layer)  # nothing can be downloaded here
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    _out_of_place_shortcuts(net)
    return net


def build_contrastive_encoder(
    *,
    arch: str = "resnet50",
    in_channels: int = 1,
    norm: Norm = "batch",
    projection_dim: int = 128,
    hidden_dim: int | None = None,
    width: int = 16,
    blocks: Sequence[int] = (1, 1, 1, 1),
) -> ContrastiveEncoder:
    """Return a randomly initialised contrastive encoder (``width``/``blocks``: slim only).

    ``norm="group"`` (GroupNorm) makes the backbone Opacus-compatible for DP fine-tuning;
    ``batch`` is the paper's BatchNorm.
    """
    backbone = _backbone(arch, in_channels=in_channels, norm=norm, width=width, blocks=blocks)
    return ContrastiveEncoder(
        backbone, arch=arch, projection_dim=projection_dim, hidden_dim=hidden_dim
    )


@register_model("contrastive_resnet50")
def contrastive_resnet50(**options) -> ContrastiveEncoder:
    """Paper's encoder: ResNet-50 + projection head (options: norm, projection_dim, ...)."""
    return build_contrastive_encoder(arch="resnet50", **options)


@register_model("contrastive_resnet18")
def contrastive_resnet18(**options) -> ContrastiveEncoder:
    """ResNet-18 + projection head (options: norm, projection_dim, hidden_dim, in_channels)."""
    return build_contrastive_encoder(arch="resnet18", **options)


@register_model("contrastive_resnet_slim")
def contrastive_resnet_slim(**options) -> ContrastiveEncoder:
    """CPU-scale ResNet (options: width, blocks, norm, projection_dim, ...) + projection head."""
    return build_contrastive_encoder(arch="resnet_slim", **options)
