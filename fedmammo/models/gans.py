"""DCGAN and WGAN-GP generators and discriminators for 1-channel square lesion patches.

Architecture after GAN-sharing paper (section 2.2): the generator maps a latent vector (size 100)
to a
patch through transposed convolutions (kernel 4, stride 2) with batch norm and ReLU, ending in
tanh (outputs in [-1, 1]; training maps patches from [0, 1]). The discriminator uses kernel 6,
stride 2, padding 2 (which halves the size exactly) instead of DCGAN's 4, LeakyReLU(0.2) and a
final 4x4 convolution to one logit. Channel widths double at each resolution, capped at
``8 * width``.

The discriminator's normalisation is configurable: ``"batch"`` (DCGAN's default), ``"group"``
(GroupNorm, for Opacus / DP training) or ``"none"`` (the WGAN-GP critic's default: the gradient
penalty is per sample, so batch statistics must not couple samples). No sigmoid is applied:
the DCGAN loss uses logits, the WGAN-GP critic outputs a score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmammo.errors import ConfigError, DataError

__all__ = [
    "D_NORMS",
    "GAN_KINDS",
    "Discriminator",
    "Generator",
    "GeneratorDescription",
    "build_discriminator",
    "build_gan",
    "build_generator",
    "describe",
    "load_generator",
    "sample_generator",
    "sample_patches",
]

#: GAN kind -> default discriminator normalisation.
GAN_KINDS: dict[str, str] = {"dcgan": "batch", "wgan_gp": "none"}
D_NORMS: tuple[str, ...] = ("batch", "group", "none")


@dataclass
class GeneratorDescription:
    """What a shared generator is: enough to rebuild it and to judge what it was trained on."""

    kind: str
    patch_size: int
    latent_dim: int = 100
    width: int = 64
    d_norm: str = "batch"
    lesion_types: list[str] = field(default_factory=list)
    n_training_patches: int = 0
    epochs: int = 0
    snapshot_epochs: list[int] = field(default_factory=list)
    centre: str | None = None
    output_range: tuple[float, float] = (0.0, 1.0)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        out = asdict(self)
        out["output_range"] = list(self.output_range)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorDescription:
        """Rebuild a description from :meth:`to_dict` output (unknown keys are an error)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"generator description: unknown keys {unknown}; valid keys are {sorted(known)}"
            )
        values = dict(data)
        if "output_range" in values:
            values["output_range"] = tuple(values["output_range"])
        desc = cls(**values)
        _check_kind(desc.kind)
        _check_size(desc.patch_size)
        return desc


def _check_kind(kind: str) -> None:
    if kind not in GAN_KINDS:
        raise ConfigError(f"unknown GAN kind {kind!r}; valid kinds: {sorted(GAN_KINDS)}")


def _check_size(patch_size: int) -> int:
    n_up = math.log2(patch_size / 4) if patch_size >= 8 else -1
    if n_up < 1 or n_up != int(n_up):
        raise ConfigError(
            f"GAN patch_size must be a power of two >= 8 (e.g. 32, 64, 128), got {patch_size}"
        )
    return int(n_up)


def _channels(patch_size: int, width: int) -> list[int]:
    """Channels at resolutions 4, 8, ..., patch_size / 2 (generator order)."""
    n_up = _check_size(patch_size)
    return [min(width * 2 ** (n_up - 1 - i), 8 * width) for i in range(n_up)]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown discriminator norm {kind!r}; valid norms: {list(D_NORMS)}")


def _init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), norm scales N(1, 0.02), biases 0."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """Latent vector ``(B, latent_dim)`` -> patch ``(B, 1, S, S)`` in [-1, 1]."""

    def __init__(self, *, patch_size: int, latent_dim: int = 100, width: int = 64) -> None:
        super().__init__()
        chans = _channels(patch_size, width)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, chans[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(chans[0]),
            nn.ReLU(inplace=True),
        ]
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ConvTranspose2d(chans[-1], 1, 4, 2, 1, bias=False), nn.Tanh()]
        self.latent_dim = latent_dim
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.latent_dim, 1, 1))


class Discriminator(nn.Module):
    """Patch ``(B, 1, S, S)`` in [-1, 1] -> one logit / critic score per sample ``(B,)``."""

    def __init__(self, *, patch_size: int, width: int = 64, norm: str = "batch") -> None:
        super().__init__()
        chans = list(reversed(_channels(patch_size, width)))  # S/2, S/4, ..., 4
        layers: list[nn.Module] = [
            nn.Conv2d(1, chans[0], 6, 2, 2, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, 6, 2, 2, bias=norm == "none"),
                _norm(norm, c_out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(chans[-1], 1, 4, 1, 0, bias=True))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


def build_generator(*, patch_size: int = 128, latent_dim: int = 100, width: int = 64) -> Generator:
    """Return a DCGAN-style generator (shared by both GAN kinds), DCGAN-initialised."""
    gen = Generator(patch_size=patch_size, latent_dim=latent_dim, width=width)
    gen.apply(_init_weights)
    return gen


def build_discriminator(
    kind: str, *, patch_size: int = 128, width: int = 64, norm: str | None = None
) -> Discriminator:
    """Return the discriminator (``dcgan``) or critic (``wgan_gp``), DCGAN-initialised."""
    _check_kind(kind)
    norm = GAN_KINDS[kind] if norm is None else norm
    if norm not in D_NORMS:
        raise ConfigError(f"unknown discriminator norm {norm!r}; valid norms: {list(D_NORMS)}")
    if kind == "wgan_gp" and norm == "batch":
        raise ConfigError(
            "wgan_gp critic cannot use norm='batch': the gradient penalty is per sample; "
            "use norm='none' (default) or 'group'"
        )
    disc = Discriminator(patch_size=patch_size, width=width, norm=norm)
    disc.apply(_init_weights)
    return disc


def build_gan(
    kind: str,
    *,
    patch_size: int = 128,
    latent_dim: int = 100,
    width: int = 64,
    norm: str | None = None,
) -> tuple[Generator, Discriminator]:
    """Return ``(generator, discriminator)`` for ``kind`` in ``GAN_KINDS``.

    ``norm`` is the discriminator's normalisation (default per kind: ``"batch"`` for dcgan,
    ``"none"`` for wgan_gp); any value but ``"batch"`` gives an Opacus-compatible module.
    """
    _check_kind(kind)
    disc = build_discriminator(kind, patch_size=patch_size, width=width, norm=norm)
    return build_generator(patch_size=patch_size, latent_dim=latent_dim, width=width), disc


def describe(
    kind: str,
    *,
    patch_size: int,
    latent_dim: int = 100,
    width: int = 64,
    norm: str | None = None,
    lesion_types: Sequence[str] = (),
    **kwargs: Any,
) -> GeneratorDescription:
    """Return a :class:`GeneratorDescription` for a GAN built with these arguments."""
    _check_kind(kind)
    return GeneratorDescription(
        kind=kind,
        patch_size=patch_size,
        latent_dim=latent_dim,
        width=width,
        d_norm=GAN_KINDS[kind] if norm is None else norm,
        lesion_types=list(lesion_types),
        **kwargs,
    )


def load_generator(
    description: GeneratorDescription,
    state_dict: Mapping[str, torch.Tensor],
    *,
    device: str | torch.device = "cpu",
) -> Generator:
    """Rebuild a generator from its description and weights, in eval mode."""
    gen = build_generator(
        patch_size=description.patch_size,
        latent_dim=description.latent_dim,
        width=description.width,
    )
    gen.load_state_dict(dict(state_dict))
    return gen.to(device).eval()


def _split(n: int, k: int) -> list[int]:
    """Split ``n`` into ``k`` counts differing by at most one (the larger ones first)."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def sample_generator(
    description: GeneratorDescription,
    states: Sequence[Mapping[str, torch.Tensor]],
    n: int,
    *,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Return ``n`` patches ``(n, S, S)`` in [0, 1], spread evenly over the generator ``states``.

    Several states are the snapshots of one training run (the GAN-sharing paper's answer to mode
    collapse).
    """
    if not states:
        raise DataError("sample_generator: no generator states given")
    rng = torch.Generator().manual_seed(seed)
    size = description.patch_size
    out: list[np.ndarray] = [np.zeros((0, size, size), np.float32)]
    for state, count in zip(states, _split(n, len(states)), strict=True):
        if count == 0:
            continue
        gen = load_generator(description, state, device=device)
        with torch.no_grad():
            for chunk in _split(count, -(-count // batch_size)):
                z = torch.randn(chunk, description.latent_dim, generator=rng).to(device)
                out.append(((gen(z)[:, 0] + 1.0) / 2.0).clamp(0.0, 1.0).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def sample_patches(
    generators: Sequence[tuple[GeneratorDescription, Sequence[Mapping[str, torch.Tensor]]]],
    n: int,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Return ``n`` patches from several generators, split as evenly as possible between them.

    Each entry is ``(description, states)``; the result is ordered generator by generator.
    """
    if not generators:
        raise DataError("sample_patches: no generators given")
    sizes = {desc.patch_size for desc, _ in generators}
    if len(sizes) > 1:
        raise DataError(f"sample_patches: generators have different patch sizes {sorted(sizes)}")
    counts = _split(n, len(generators))
    parts = [
        sample_generator(desc, states, count, seed=seed + 1000 * i, device=device)
        for i, ((desc, states), count) in enumerate(zip(generators, counts, strict=True))
    ]
    return np.concatenate(parts)
