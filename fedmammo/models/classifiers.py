"""Binary image classifiers: a whole-mammogram CNN, the GAN-sharing paper patch CNN, Swin-T,
and torchvision's AlexNet and ResNet-50 (the CycleGAN-UDA paper's whole-image classifiers).

Every classifier maps (N, 1, H, W) images in [0, 1] to (N, 2) logits (or log-probabilities,
which cross-entropy treats the same way); the malignancy/lesion score is ``softmax[:, 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fedmammo.errors import ConfigError
from fedmammo.models.registry import register_model

__all__ = ["MammoCNN", "PatchCNN", "SwinPatchClassifier", "TorchvisionClassifier", "make_norm"]

Norm = Literal["batch", "group", "instance", "none"]


def make_norm(kind: Norm, channels: int) -> nn.Module:
    """A 2D normalisation layer; ``group``/``instance`` are the Opacus-compatible choices."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; valid: batch, group, instance, none")


class MammoCNN(nn.Module):
    """A small VGG-like CNN for whole (downsized) mammograms with global average pooling."""

    def __init__(
        self,
        *,
        in_channels: int = 1,
        width: int = 16,
        depth: int = 4,
        norm: Norm = "batch",
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(depth):
            c_out = width * 2 ** min(i, 3)
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none"),
                make_norm(norm, c_out),
                nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, padding=1, stride=2, bias=norm == "none"),
                make_norm(norm, c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_in * 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.head(self.dropout(pooled))


class PatchCNN(nn.Module):
    """The GAN-sharing paper CNN: 4 conv layers (BN after each), 2 FC (BN after the first), dropout,
    log-softmax. About 1.1M parameters at 128x128."""

    def __init__(
        self,
        *,
        patch_size: int = 128,
        in_channels: int = 1,
        width: int = 16,
        hidden: int = 128,
        dropout: float = 0.5,
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        chans = [width, width * 2, width * 4, width * 8]
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in chans:
            layers += [
                nn.Conv2d(c_in, c, 3, padding=1),
                make_norm(norm, c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = max(1, patch_size // 16)
        self.fc1 = nn.Linear(c_in * side * side, hidden)
        self.bn_fc = nn.BatchNorm1d(hidden) if norm == "batch" else nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, 2)
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.patch_size or x.shape[-2] != self.patch_size:
            x = F.interpolate(x, size=(self.patch_size, self.patch_size), mode="area")
        f = self.features(x).flatten(1)
        h = self.dropout(F.relu(self.bn_fc(self.fc1(f))))
        return F.log_softmax(self.fc2(h), dim=1)


class SwinPatchClassifier(nn.Module):
    """torchvision's Swin transformer on patches resized to ``input_size`` and stacked to three
    channels; by default Swin-T (embed_dim 96, depths 2-2-6-2, heads 3-6-12-24, window 7) at 224.

    ``embed_dim``, ``depths``, ``num_heads`` and ``window_size`` shrink it for CPU (same
    architecture, fewer channels and a smaller window for small inputs). Each resized patch is
    standardised (zero mean, unit variance over its pixels), as an ImageNet-normalised input
    would be roughly: on raw [0, 1] patches of low contrast the transformer did not even fit
    its training set (loss at chance for 8 epochs, where standardised input fell to 0.1). No
    pretrained weights can be downloaded here, so it starts from random initialisation.
    """

    def __init__(
        self,
        *,
        input_size: int = 224,
        dropout: float = 0.0,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
    ) -> None:
        super().__init__()
        from torchvision.models.swin_transformer import SwinTransformer

        if len(depths) != len(num_heads):
            raise ConfigError(
                f"model 'swin_t': depths {list(depths)} and num_heads {list(num_heads)} need "
                "one value per stage each"
            )
        self.net = SwinTransformer(
            patch_size=[4, 4],
            embed_dim=embed_dim,
            depths=list(depths),
            num_heads=list(num_heads),
            window_size=[window_size, window_size],
            stochastic_depth_prob=0.2,
            dropout=dropout,
            num_classes=2,
        )
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        std, mean = torch.std_mean(x, dim=(1, 2, 3), keepdim=True)
        return self.net(((x - mean) / (std + 1e-6)).expand(-1, 3, -1, -1))


class TorchvisionClassifier(nn.Module):
    """torchvision's AlexNet or ResNet-50 (random initialisation, 2 classes) on images resized
    to ``input_size`` squared and stacked to three channels, as :class:`SwinPatchClassifier`.

    ``hidden`` (AlexNet only) is the width of its two fully connected layers (torchvision: 4096;
    smaller for tests and CPU-scale runs).
    """

    def __init__(
        self,
        *,
        arch: Literal["alexnet", "resnet50"],
        input_size: int = 224,
        dropout: float = 0.5,
        hidden: int = 4096,
    ) -> None:
        super().__init__()
        from torchvision.models import alexnet, resnet50

        if arch == "alexnet":
            if input_size < 63:
                raise ConfigError(f"model 'alexnet': input_size must be >= 63, got {input_size}")
            self.net = alexnet(weights=None, num_classes=2, dropout=dropout)
            if hidden != 4096:
                head = self.net.classifier
                head[1], head[4], head[6] = (
                    nn.Linear(256 * 6 * 6, hidden),
                    nn.Linear(hidden, hidden),
                    nn.Linear(hidden, 2),
                )
        else:
            self.net = resnet50(weights=None, num_classes=2)
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        return self.net(x.expand(-1, 3, -1, -1))


@register_model("mammo_cnn")
def mammo_cnn(**options) -> MammoCNN:
    """Whole-mammogram CNN (options: width, depth, norm, dropout)."""
    return MammoCNN(**options)


@register_model("patch_cnn")
def patch_cnn(**options) -> PatchCNN:
    """GAN-sharing paper lesion-patch CNN (options: patch_size, width, hidden, dropout, norm)."""
    return PatchCNN(**options)


@register_model("swin_t")
def swin_patch(**options) -> SwinPatchClassifier:
    """torchvision Swin (Swin-T by default) for patches (options: input_size, dropout,
    embed_dim, depths, num_heads, window_size)."""
    return SwinPatchClassifier(**options)


@register_model("alexnet")
def alexnet(
    *, input_size: int = 224, dropout: float = 0.5, hidden: int = 4096
) -> TorchvisionClassifier:
    """torchvision AlexNet, 1-channel input (options: input_size, dropout, hidden)."""
    return TorchvisionClassifier(
        arch="alexnet", input_size=input_size, dropout=dropout, hidden=hidden
    )


@register_model("resnet50")
def resnet50(*, input_size: int = 224) -> TorchvisionClassifier:
    """torchvision ResNet-50, 1-channel input (options: input_size)."""
    return TorchvisionClassifier(arch="resnet50", input_size=input_size)
