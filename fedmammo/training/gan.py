"""Local GAN training on a centre's own lesion patches: DCGAN and WGAN-GP (no Flower here).

DCGAN (GAN-sharing paper, 2.2.1): BCE on logits with one-sided label smoothing (real targets drawn
uniformly in [0.8, 1.1], fake targets 0), random horizontal and vertical flips (p = 0.5), batch
16, Adam(2e-4, betas (0.5, 0.999)); generator snapshots every ``snapshot_every`` epochs from
epoch ``warmup`` on, and sampling spread evenly across them against mode collapse.

Real targets above 1 are well defined with ``binary_cross_entropy_with_logits`` (torch does not
check the target range, unlike ``binary_cross_entropy`` on probabilities, which refuses them):
the loss ``softplus(x) - y * x`` stays finite for finite logits x but for y > 1 it has no
minimum (d/dx = sigmoid(x) - y < 0), so the discriminator keeps a small push of at most
``y - 1 <= 0.1`` towards larger real logits instead of saturating; this is the intended
regularisation of the smoothing and it is bounded.

WGAN-GP (2.2.2, Gulrajani et al. 2017): critic loss ``D(fake) - D(real) + lambda * (||grad
D(x_hat)|| - 1)^2`` with ``x_hat`` uniform on segments between real and fake samples, lambda 10,
5 critic steps per generator step, Adam(1e-4, betas (0, 0.9)), no batch norm in the critic. An
epoch is one pass of the critic over the data; the 5:1 schedule runs across epoch boundaries.

Inference helpers (``load_generator``, ``sample_generator``, ``sample_patches``) live in
``fedmammo.models.gans``.

Differential privacy (``privacy=``, a :class:`fedmammo.privacy.engine.DPSession`): only the
discriminator (critic) reads real patches, so only it is trained with DP-SGD; the generator
learns from its outputs and inherits the guarantee by post-processing. The session makes the
discriminator private and replaces the shuffled batches by Poisson sampling (rate ``1 /
steps_per_epoch``, as many steps per epoch), which the accountant assumes. Steps then come from
:mod:`fedmammo.privacy.dp_gan`: DCGAN follows Opacus' DP-GAN example (real and
``fake.detach()`` in one backward pass of the private discriminator), WGAN-GP takes per-sample
gradients of the penalised critic loss with ``torch.func`` (``grad_sample_mode="no_op"``), and
the generator step runs through the discriminator with its Opacus hooks off. Under DP the
DCGAN discriminator defaults to GroupNorm (``d_norm="group"``); BatchNorm is refused with an
error naming the layer. Without DP a fake batch has the real batch's size. Under DP it must
not depend on the private data: every discriminator step draws the same number of fakes, the
expected Poisson batch size ``max(1, round(sample_rate * n))``, from latents of a stream of
their own (seeded from ``seed``, not advanced by the real batches), and the DCGAN generator
step reuses those latents. Adding or removing one real patch then changes the clipped
gradient sum by that patch's own term (norm at most the clipping norm ``C``), the
sensitivity that the noise and the accountant assume. Were the fakes ``len(real)``, one
patch more would also bring one fake more (a second clipped term: up to ``2 C``), and the
generator's update would follow the un-noised batch size. The WGAN-GP critic clips each
(real, fake) pair as one example: each real is paired with a fake picked at random from the
fixed fake batch. An empty Poisson batch is a step like any other (the fakes' terms and
noise): skipping it would reveal that it was empty. Fakes come from at least 2 latent
vectors (the generator's BatchNorm needs 2).

``runtime`` (a :class:`fedmammo.training.runtime.Runtime`) overrides ``device`` and adds
channels_last, pinned memory and bf16 autocast for the generator and the DCGAN
discriminator; the WGAN-GP critic step stays in float32 (its penalty differentiates a
gradient). Without it the loops are the plain float32 ones.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmammo.errors import ConfigError, DataError
from fedmammo.models.gans import (
    GeneratorDescription,
    build_gan,
    describe,
)
from fedmammo.progress import progress
from fedmammo.training.augment import random_flips
from fedmammo.training.runtime import Runtime, keep_freed_memory
from fedmammo.training.state import StateDict, cpu_state

__all__ = [
    "hyperparameters",
    "GanResult",
    "critic_step",
    "discriminator_step",
    "generator_step",
    "gradient_penalty",
    "random_flips",
    "smoothed_real_labels",
    "snapshot_schedule",
    "train_dcgan",
    "train_wgan_gp",
]

logger = logging.getLogger(__name__)


@dataclass
class GanResult:
    """A trained GAN: last generator/discriminator states, snapshots, history and counters."""

    description: GeneratorDescription
    generator_state: StateDict
    discriminator_state: StateDict
    snapshots: list[tuple[int, StateDict]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)  # epoch, d_loss, g_loss
    critic_steps: int = 0
    generator_steps: int = 0
    epsilon: float | None = None  # composed epsilon of the DP session, None without DP

    def sampling_states(self) -> list[StateDict]:
        """Return the states to sample from: the snapshots, or the last generator if none."""
        return [state for _, state in self.snapshots] or [self.generator_state]


def smoothed_real_labels(
    n: int, generator: torch.Generator, *, low: float = 0.8, high: float = 1.1
) -> torch.Tensor:
    """Return ``n`` real-class targets drawn uniformly in ``[low, high]`` (one-sided smoothing)."""
    return low + (high - low) * torch.rand(n, generator=generator)


def snapshot_schedule(epochs: int, *, warmup: int, every: int | None) -> list[int]:
    """Return the epochs (1-based) whose generator is kept: ``warmup + j * every`` <= epochs."""
    if not every:
        return []
    return [e for e in range(warmup, epochs + 1, every) if e >= 1]


def gradient_penalty(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    lambda_gp: float = 10.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return ``lambda_gp * mean((||grad critic(x_hat)||_2 - 1)^2)`` on random interpolates."""
    eps = torch.rand(real.shape[0], 1, 1, 1, generator=generator).to(real.device, real.dtype)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grads,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norms = grads.flatten(1).norm(2, dim=1)
    return lambda_gp * ((norms - 1.0) ** 2).mean()


def discriminator_step(
    disc: nn.Module,
    opt: torch.optim.Optimizer,
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    real_labels: torch.Tensor,
) -> float:
    """One DCGAN discriminator update (BCE on logits, real targets ``real_labels``, fake 0)."""
    opt.zero_grad(set_to_none=True)
    real_logits = disc(real)
    fake_logits = disc(fake.detach())
    loss = F.binary_cross_entropy_with_logits(
        real_logits, real_labels.to(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    loss.backward()
    opt.step()
    return float(loss.detach())


def critic_step(
    critic: nn.Module,
    opt: torch.optim.Optimizer,
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    lambda_gp: float = 10.0,
    generator: torch.Generator | None = None,
) -> float:
    """One WGAN-GP critic update: ``D(fake) - D(real) + gradient penalty``."""
    opt.zero_grad(set_to_none=True)
    fake = fake.detach()
    loss = critic(fake).mean() - critic(real).mean()
    loss = loss + gradient_penalty(critic, real, fake, lambda_gp=lambda_gp, generator=generator)
    loss.backward()
    opt.step()
    return float(loss.detach())


def generator_step(
    disc: nn.Module, opt: torch.optim.Optimizer, fake: torch.Tensor, *, kind: str
) -> float:
    """One generator update from ``fake = G(z)`` (non-saturating BCE for dcgan, else -D)."""
    opt.zero_grad(set_to_none=True)
    scores = disc(fake)
    if kind == "dcgan":
        loss = F.binary_cross_entropy_with_logits(scores, torch.ones_like(scores))
    else:
        loss = -scores.mean()
    loss.backward()
    opt.step()
    disc.zero_grad(set_to_none=True)
    return float(loss.detach())


def _as_tensor(patches: np.ndarray, batch_size: int) -> torch.Tensor:
    arr = np.asarray(patches)
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise DataError(f"GAN training expects patches shaped (N, S, S), got {arr.shape}")
    if arr.shape[0] < 2:
        raise DataError(f"GAN training needs at least 2 patches, got {arr.shape[0]}")
    if arr.size and (float(arr.min()) < 0.0 or float(arr.max()) > 1.0):
        raise DataError("GAN training expects patches in [0, 1]; rescale them first")
    if batch_size < 2:
        raise DataError(f"GAN batch_size must be >= 2, got {batch_size}")
    return torch.from_numpy(arr.astype(np.float32)).unsqueeze(1) * 2.0 - 1.0


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    batches = list(torch.randperm(n, generator=generator).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:  # batch norm cannot train on one sample
        batches.pop()
    return batches


def _dp() -> Any:
    """:mod:`fedmammo.privacy.dp_gan`, imported only for DP training (it loads Opacus)."""
    from fedmammo.privacy import dp_gan

    return dp_gan


class _Steps:
    """One GAN's discriminator and generator updates, plain or with a DP session."""

    def __init__(
        self, kind: str, gen: nn.Module, disc: nn.Module, o: dict[str, Any], privacy, run: Runtime
    ):
        self.kind, self.gen, self.o, self.privacy, self.run = kind, gen, o, privacy, run
        self.opt_g = torch.optim.Adam(gen.parameters(), lr=o["lr"], betas=o["betas"])
        self.opt_d: Any = torch.optim.Adam(disc.parameters(), lr=o["lr"], betas=o["betas"])
        self.disc = disc
        # under DP (set by batches): fakes per discriminator step and their latent stream
        self.n_fake: int | None = None
        self.latent_rng: torch.Generator | None = None

    def batches(self, data: torch.Tensor, rng: torch.Generator):
        """Per-epoch batch iterator factory: shuffled batches, or Poisson ones under DP."""
        if self.privacy is None:
            return lambda: (data[idx] for idx in _batches(len(data), self.o["batch_size"], rng))
        if self.kind == "wgan_gp":
            self.privacy.grad_sample_mode = "no_op"  # the penalty's grad-of-grad: torch.func
        loader = DataLoader(TensorDataset(data), batch_size=self.o["batch_size"])
        self.disc, self.opt_d, loader = self.privacy.attach(self.disc, self.opt_d, loader)
        # a fake count and latents that no real batch can move (see the module docstring)
        self.n_fake = max(1, round(float(self.privacy.sample_rate) * len(data)))
        seed = np.random.SeedSequence([int(self.o["seed"]), 0x6C6174]).generate_state(1)[0]
        self.latent_rng = torch.Generator().manual_seed(int(seed))
        return lambda: (batch for (batch,) in loader)

    def latents(self, n: int, rng: torch.Generator, device: torch.device) -> torch.Tensor:
        """``n`` latent vectors: from ``rng`` without DP, from the own latent stream under DP."""
        rng = rng if self.latent_rng is None else self.latent_rng
        return torch.randn(n, self.o["latent_dim"], generator=rng).to(device)

    def fakes(self, n_real: int, rng: torch.Generator, device: torch.device) -> tuple:
        """Fakes for a real batch of ``n_real``: as many without DP, the fixed ``n_fake`` under
        DP; from at least 2 latents; no graph under DP (the generator step reruns ``G(z)``
        through the hook-free discriminator)."""
        n = n_real if self.n_fake is None else self.n_fake
        z = self.latents(max(n, 2), rng, device)
        with torch.set_grad_enabled(self.privacy is None), self.run.autocast():
            return z, self.gen(z)[:n]

    def discriminator(self, real: torch.Tensor, fake: torch.Tensor, rng) -> float:
        """One discriminator update (autocast for DCGAN; the WGAN-GP critic runs in float32:
        its penalty differentiates a gradient, too fragile in half precision)."""
        o, n = self.o, len(real)
        if self.kind == "dcgan":
            low, high = o["label_smoothing"]
            labels = smoothed_real_labels(n, rng, low=low, high=high)
            with self.run.autocast():
                if self.privacy is None:
                    return discriminator_step(self.disc, self.opt_d, real, fake, real_labels=labels)
                return _dp().dp_dcgan_discriminator_step(
                    self.disc, self.opt_d, real, fake, labels, torch.zeros(len(fake))
                )
        step = critic_step if self.privacy is None else _dp().dp_wgan_gp_critic_step
        if self.privacy is not None:  # one pair per real, its fake picked from the fixed batch
            # from a generator of this step (one draw of rng whatever n): the i-th real's pick
            # and interpolation weight do not depend on how many reals follow it
            picks = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=rng)))
            fake = fake[torch.randint(len(fake), (n,), generator=picks).to(fake.device)]
        fake = fake.to(real.dtype)
        return step(self.disc, self.opt_d, real, fake, lambda_gp=o["lambda_gp"], generator=rng)

    def generator(self, z: torch.Tensor, fake: torch.Tensor | None) -> float:
        """Generator update from ``fake = G(z)`` (recomputed from ``z`` under DP)."""
        labels = torch.ones(len(z)) if self.kind == "dcgan" else None
        with self.run.autocast():
            if self.privacy is None:
                return generator_step(self.disc, self.opt_g, fake, kind=self.kind)
            return _dp().generator_step_with_frozen_dp_d(
                self.disc, self.gen, self.opt_g, z, labels, hooks=self.privacy.hooks
            )


def _train(kind: str, patches: np.ndarray, o: dict[str, Any]) -> GanResult:
    """Shared loop; ``o`` holds the keyword arguments of train_dcgan / train_wgan_gp."""
    privacy = o.pop("privacy")
    if privacy is not None and o["d_norm"] is None and kind == "dcgan":
        o["d_norm"] = "group"  # BatchNorm mixes examples: no per-sample gradients
    data = _as_tensor(patches, o["batch_size"])
    size, latent, seed = int(data.shape[-1]), o["latent_dim"], o["seed"]
    run = o.pop("runtime") or Runtime(device=str(o["device"]))
    device = run.torch_device
    o.pop("device")
    if privacy is not None:
        keep_freed_memory()  # DP steps churn tens of MB: keep the heap (see runtime)
    if run.amp == "fp16":
        raise ConfigError("GAN training supports amp='bf16' (fp16 would need a loss scaler)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen, disc = build_gan(
            kind, patch_size=size, latent_dim=latent, width=o["width"], norm=o["d_norm"]
        )
    gen, disc = run.prepare(gen).train(), run.prepare(disc).train()
    steps = _Steps(kind, gen, disc, o, privacy, run)
    rng = torch.Generator().manual_seed(seed)
    epoch_batches = steps.batches(data, rng)
    keep = set(snapshot_schedule(o["epochs"], warmup=o["warmup"], every=o["snapshot_every"]))
    result = GanResult(describe(kind, patch_size=size), {}, {})
    epochs = progress(
        range(1, o["epochs"] + 1),
        f"{kind}{' (DP)' if privacy else ''} epochs",
        interactive=True if o.pop("progress") else None,
    )
    for epoch in epochs:
        d_losses: list[float] = []
        g_losses: list[float] = []
        for batch in epoch_batches():  # under DP an empty Poisson batch is a step too
            real = run.batch(random_flips(batch, rng, p=o["flip_p"]))
            if kind == "dcgan":
                z, fake = steps.fakes(len(real), rng, device)
                d_losses.append(steps.discriminator(real, fake, rng))
                g_losses.append(steps.generator(z, fake))
                result.critic_steps += 1
                result.generator_steps += 1
                continue
            with torch.no_grad():
                _, fake = steps.fakes(len(real), rng, device)
            d_losses.append(steps.discriminator(real, fake, rng))
            result.critic_steps += 1
            if result.critic_steps % o["n_critic"] == 0:
                z = steps.latents(o["batch_size"], rng, device)
                with run.autocast():
                    fake = gen(z) if privacy is None else None
                g_losses.append(steps.generator(z, fake))
                result.generator_steps += 1
        result.history.append(
            {
                "epoch": float(epoch),
                "d_loss": float(np.mean(d_losses)) if d_losses else float("nan"),
                "g_loss": float(np.mean(g_losses)) if g_losses else float("nan"),
            }
        )
        if epoch in keep:
            result.snapshots.append((epoch, cpu_state(gen)))
    if privacy is not None:
        result.epsilon = privacy.after_training(result.critic_steps)
    hyper = _hyper_keys(kind)
    result.description = describe(
        kind,
        patch_size=size,
        latent_dim=latent,
        width=o["width"],
        norm=o["d_norm"],
        lesion_types=o["lesion_types"],
        n_training_patches=int(len(data)),
        epochs=o["epochs"],
        snapshot_epochs=[e for e, _ in result.snapshots],
        centre=o["centre"],
        extra={k: list(o[k]) if isinstance(o[k], tuple) else o[k] for k in hyper},
    )
    result.generator_state = cpu_state(gen)
    result.discriminator_state = cpu_state(steps.disc)
    logger.info(
        "%s: %d epochs, %d critic / %d generator steps, %d snapshots",
        kind,
        o["epochs"],
        result.critic_steps,
        result.generator_steps,
        len(result.snapshots),
    )
    return result


def _hyper_keys(kind: str) -> tuple[str, ...]:
    """The training settings a generator's description records for a GAN ``kind``."""
    keys = ("lr", "betas", "batch_size", "seed", "warmup", "snapshot_every", "flip_p")
    return keys + (("label_smoothing",) if kind == "dcgan" else ("lambda_gp", "n_critic"))


def hyperparameters(kind: str, given: dict[str, Any]) -> dict[str, Any]:
    """How a ``kind`` generator was trained: its trainer's defaults of the recorded settings
    (learning rate, betas, label smoothing, flips, ...) with the ``given`` ones over them, and
    every other ``given`` setting (the recipe's epochs, width, ...): what a receiving site
    reads in the generator's description.json."""
    import inspect

    trainer = {"dcgan": train_dcgan, "wgan_gp": train_wgan_gp}[kind]
    defaults = {k: v.default for k, v in inspect.signature(trainer).parameters.items()}
    recorded = [k for k in _hyper_keys(kind) if k != "seed"]  # the run derives each seed
    chosen = {k: defaults[k] for k in recorded} | dict(given)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in chosen.items()}


def train_dcgan(
    patches: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 16,
    lr: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    label_smoothing: tuple[float, float] = (0.8, 1.1),
    flip_p: float = 0.5,
    snapshot_every: int | None = 50,
    warmup: int = 500,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    privacy: Any | None = None,
    runtime: Runtime | None = None,
    latent_dim: int = 100,
    width: int = 64,
    d_norm: str | None = None,
    lesion_types: Sequence[str] = (),
    centre: str | None = None,
) -> GanResult:
    """Train a DCGAN on patches ``(N, S, S)`` in [0, 1]; see the module docstring."""
    options = dict(locals())
    del options["patches"]
    return _train("dcgan", patches, options)


def train_wgan_gp(
    patches: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 16,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.0, 0.9),
    lambda_gp: float = 10.0,
    n_critic: int = 5,
    flip_p: float = 0.5,
    snapshot_every: int | None = None,
    warmup: int = 0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    privacy: Any | None = None,
    runtime: Runtime | None = None,
    latent_dim: int = 100,
    width: int = 64,
    d_norm: str | None = None,
    lesion_types: Sequence[str] = (),
    centre: str | None = None,
) -> GanResult:
    """Train a WGAN-GP on patches ``(N, S, S)`` in [0, 1]; see the module docstring."""
    if n_critic < 1:
        raise DataError(f"n_critic must be >= 1, got {n_critic}")
    options = dict(locals())
    del options["patches"]
    return _train("wgan_gp", patches, options)
