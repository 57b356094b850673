"""The multi-task paper multi-task network: a ResNet22-like encoder, multi-level fusion, heads,
decoder."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedmammo.errors import ConfigError, DataError
from fedmammo.models.registry import register_model

__all__ = ["DEFAULT_TASKS", "NORMS", "MultiTaskNet", "build_multitask_net"]

#: Task -> number of classes (multi-task paper, section 2.3).
DEFAULT_TASKS: dict[str, int] = {"malignancy": 2, "acr": 6, "density": 4, "view": 2}


#: Normalisation layers of :class:`MultiTaskNet` (option ``norm``).
NORMS = ("instance", "group", "batch")


def _norm(channels: int, kind: str = "instance") -> nn.Module:
    """One normalisation layer; ``instance`` and ``group`` are exact under DP-SGD (Opacus).

    ``instance``: InstanceNorm2d with affine weights and ``track_running_stats=False`` (always
    per-image statistics; the seed's choice). ``group``: GroupNorm of ``gcd(channels, 8)``
    groups. ``batch``: BatchNorm2d, for non-private ablations only: it mixes the images of a
    batch, so a DP centre refuses it (``fedmammo.privacy.engine.validate_for_dp`` names it).
    """
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ConfigError(f"MultiTaskNet: norm must be one of {NORMS}, got {kind!r}")


class _SeparableConv(nn.Sequential):
    """Depthwise 3x3 (optionally strided) followed by a pointwise 1x1 convolution."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
        )


class _ResBlock(nn.Module):
    """Two separable convolutions with normalisation (``norm``) and LeakyReLU, plus a shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, norm: str = "instance") -> None:
        super().__init__()
        self.conv1 = _SeparableConv(c_in, c_out, stride)
        self.norm1 = _norm(c_out, norm)
        self.act1 = nn.LeakyReLU(0.01)
        self.conv2 = _SeparableConv(c_out, c_out)
        self.norm2 = _norm(c_out, norm)
        self.shortcut: nn.Module = (
            nn.Identity()
            if c_in == c_out and stride == 1
            else nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _norm(c_out, norm)
            )
        )
        self.act2 = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(y + self.shortcut(x))


class _FeatureGenerator(nn.Module):
    """g_i: global average pooling, L2 normalisation, dropout."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(F.normalize(x.mean(dim=(2, 3)), p=2.0, dim=1))


class MultiTaskNet(nn.Module):
    """Encoder with multi-level feature fusion, one dense head per task and an optional decoder.

    The encoder has ``len(widths)`` levels of ``blocks_per_level`` residual blocks built from
    depthwise-separable convolutions, instance normalisation and LeakyReLU; the first block of
    every level after the first halves the resolution. After each level a feature generator
    (GAP, L2 normalisation, dropout) yields ``widths[i]`` values; with ``fusion`` the latent
    ``z`` is their concatenation (496 values at the default widths), without it only the last
    level's (256): the seed's single-task baseline. Each task gets one ``Linear(z, classes)``.

    The decoder (one residual block per level, nearest-neighbour upsampling, no skip
    connections) reconstructs the input from the bottleneck. Any input size works: the
    reconstruction is interpolated back to the input's H x W when downsampling rounded it
    (e.g. 70 x 50). The seed instead pads the width to a multiple of the total stride.
    ``stem_stride`` is the stride of the first (plain) convolution; ``stem_stride=4`` gives
    the seed's H/64 bottleneck for full-size mammograms, the default 1 suits small images.
    The bottleneck must keep more than one pixel (instance norm needs it): a too-small input
    raises :class:`~fedmammo.errors.DataError`.

    ``norm`` picks the normalisation: ``instance`` (default, the seed's), ``group`` (GroupNorm;
    both train exactly under DP-SGD, whose per-example gradients forbid mixing the images of a
    batch) or ``batch`` (BatchNorm, non-private runs only: a DP centre refuses it).

    ``forward(x)`` returns ``{"logits": {task: (N, C)}, "z": (N, D), "reconstruction":
    (N, C_in, H, W) or None}``.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        blocks_per_level: int = 2,
        tasks: Mapping[str, int] | None = None,
        decoder: bool = True,
        fusion: bool = True,
        dropout: float = 0.5,
        stem_stride: int = 1,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        tasks = dict(DEFAULT_TASKS if tasks is None else tasks)
        _check_options(in_channels, widths, blocks_per_level, tasks, dropout, stem_stride)
        if norm not in NORMS:
            raise ConfigError(f"MultiTaskNet: norm must be one of {NORMS}, got {norm!r}")
        self.widths = widths
        self.tasks = tasks
        self.fusion = fusion
        self.stem_stride = stem_stride
        self.norm = norm
        self.latent_dim = sum(widths) if fusion else widths[-1]

        k = 2 * stem_stride + 1
        self.stem = nn.Sequential(
            nn.Conv2d(
                in_channels, widths[0], k, stride=stem_stride, padding=stem_stride, bias=False
            ),
            _norm(widths[0], norm),
            nn.LeakyReLU(0.01),
        )
        levels = []
        c_in = widths[0]
        for i, w in enumerate(widths):
            blocks = [_ResBlock(c_in, w, stride=1 if i == 0 else 2, norm=norm)]
            blocks += [_ResBlock(w, w, norm=norm) for _ in range(blocks_per_level - 1)]
            levels.append(nn.Sequential(*blocks))
            c_in = w
        self.levels = nn.ModuleList(levels)
        n_gen = len(widths) if fusion else 1
        self.generators = nn.ModuleList(_FeatureGenerator(dropout) for _ in range(n_gen))
        self.heads = nn.ModuleDict({t: nn.Linear(self.latent_dim, c) for t, c in tasks.items()})
        self.decoder: nn.Module | None = (
            _build_decoder(widths, in_channels, stem_stride, norm) if decoder else None
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # Xavier initialisation, as in the seed (section 2.4).
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def bottleneck_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the last encoder level for an ``height x width`` input."""
        h = (height - 1) // self.stem_stride + 1
        w = (width - 1) // self.stem_stride + 1
        for _ in range(len(self.widths) - 1):
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        return h, w

    def forward(self, x: torch.Tensor) -> dict:
        """Logits per task, the latent z and the reconstruction (None without decoder)."""
        if x.dim() != 4:
            raise DataError(f"MultiTaskNet expects (N, C, H, W) images, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise DataError("MultiTaskNet: empty batch (instance norm needs at least one image)")
        bh, bw = self.bottleneck_size(x.shape[-2], x.shape[-1])
        if bh * bw < 2:
            raise DataError(
                f"MultiTaskNet: input {x.shape[-2]}x{x.shape[-1]} shrinks to a {bh}x{bw} "
                f"bottleneck ({len(self.widths)} levels, stem_stride={self.stem_stride}); "
                "instance norm needs more than one pixel: use larger images, fewer widths "
                "or a smaller stem_stride"
            )
        h = self.stem(x)
        feats = []
        for level in self.levels:
            h = level(h)
            feats.append(h)
        if self.fusion:
            z = torch.cat([g(f) for g, f in zip(self.generators, feats, strict=True)], dim=1)
        else:
            z = self.generators[0](feats[-1])
        logits = {t: head(z) for t, head in self.heads.items()}
        rec = None
        if self.decoder is not None:
            rec = self.decoder(h)
            if rec.shape[-2:] != x.shape[-2:]:
                rec = F.interpolate(rec, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits, "z": z, "reconstruction": rec}


def _build_decoder(
    widths: tuple[int, ...], out_channels: int, stem_stride: int, norm: str = "instance"
) -> nn.Sequential:
    layers: list[nn.Module] = [_ResBlock(widths[-1], widths[-1], norm=norm)]
    for i in range(len(widths) - 2, -1, -1):
        layers += [
            nn.Upsample(scale_factor=2, mode="nearest"),
            _ResBlock(widths[i + 1], widths[i], norm=norm),
        ]
    if stem_stride > 1:
        layers.append(nn.Upsample(scale_factor=stem_stride, mode="nearest"))
    layers.append(nn.Conv2d(widths[0], out_channels, 3, padding=1))
    return nn.Sequential(*layers)


def _check_options(
    in_channels: int,
    widths: tuple[int, ...],
    blocks_per_level: int,
    tasks: dict[str, int],
    dropout: float,
    stem_stride: int,
) -> None:
    where = "MultiTaskNet"
    if in_channels < 1:
        raise ConfigError(f"{where}: in_channels must be >= 1, got {in_channels}")
    if not widths or min(widths) < 1:
        raise ConfigError(f"{where}: widths must be positive integers, got {widths}")
    if blocks_per_level < 1:
        raise ConfigError(f"{where}: blocks_per_level must be >= 1, got {blocks_per_level}")
    for task, classes in tasks.items():
        if int(classes) < 2:
            raise ConfigError(f"{where}: task {task!r} needs >= 2 classes, got {classes}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"{where}: dropout must be in [0, 1), got {dropout}")
    if stem_stride not in (1, 2, 4):
        raise ConfigError(f"{where}: stem_stride must be 1, 2 or 4, got {stem_stride}")


@register_model("multitask")
def build_multitask_net(**options: object) -> MultiTaskNet:
    """Build a :class:`MultiTaskNet` from keyword options (registry name ``multitask``)."""
    return MultiTaskNet(**options)  # type: ignore[arg-type]
