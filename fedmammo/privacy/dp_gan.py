"""DP-GAN steps: a private discriminator (DCGAN) or critic (WGAN-GP), a non-private generator.

Only the discriminator reads real images, so only it is trained with DP-SGD; the generator
learns from the discriminator's outputs and inherits the guarantee by post-processing.

Sensitivity: the noise (``sigma * C``) and the accountant assume that adding or removing one
real image changes the sum of clipped per-example gradients by at most ``C``. That holds
when only that image's own term changes, so the fakes must not depend on the real batch:
neither their number nor their latents (``fedmammo.training.gan`` draws the expected Poisson
batch size every step, from a latent stream of its own; its generator steps likewise).
Fakes tied to the real batch (``len(real)`` of them) would let one real image add a second
clipped term, its fake's: a sensitivity of up to ``2 C``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from opacus.grad_sample.gsm_base import AbstractGradSampleHooks, AbstractGradSampleModule
from torch import nn
from torch.func import functional_call, grad, vmap

from fedmammo.privacy.accounting import PrivacyUsageError
from fedmammo.privacy.critic_grads import critic_chain, per_example_wgan_gp_grads
from fedmammo.privacy.engine import HOOKS_ATTR, dp_backward

__all__ = [
    "dp_dcgan_discriminator_step",
    "dp_wgan_gp_critic_step",
    "generator_step_with_frozen_dp_d",
    "wgan_gp_critic_per_sample_grads",
]

logger = logging.getLogger(__name__)
_GP_EPS = 1e-12
#: How per-example WGAN-GP critic gradients are computed (see wgan_gp_critic_per_sample_grads).
PER_EXAMPLE_METHODS = (
    "auto",
    "chain",
    "vmap",
)  # inside the square root of the penalty's norm: finite gradient at zero


def _same_batch(real: torch.Tensor, fake: torch.Tensor) -> None:
    if real.shape[0] != fake.shape[0]:
        raise PrivacyUsageError(
            f"WGAN-GP step pairs each real with one fake (got {fake.shape[0]} fake for "
            f"{real.shape[0]} real); pick one partner per real from a fake batch whose size "
            "does not depend on the real batch"
        )


def _labels_match(x: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if labels.reshape(-1).shape[0] != x.shape[0]:
        raise PrivacyUsageError(
            f"{labels.reshape(-1).shape[0]} {what} labels for {x.shape[0]} {what} images"
        )


def dp_dcgan_discriminator_step(
    D: nn.Module,
    optD: Any,
    real: torch.Tensor,
    fake: torch.Tensor,
    real_labels: torch.Tensor,
    fake_labels: torch.Tensor,
    *,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """One private discriminator step on real + fake.detach() in one batch; returns the loss.

    ``criterion`` defaults to ``BCEWithLogitsLoss`` on ``D``'s flattened output. Each real and
    each fake image is its own clipped per-sample gradient (norm at most ``C``), and the noise
    is ``sigma * C``: calibrated to one real image changing one term. That holds only if
    ``fake`` does not depend on the real batch: pass a fixed number of fakes (for example the
    expected batch size), never ``len(real)`` of them (see the module docstring). ``real`` may
    be empty (an empty Poisson batch: the step is the fakes' terms plus noise).
    """
    _labels_match(real, real_labels, "real")
    _labels_match(fake, fake_labels, "fake")
    criterion = criterion or nn.BCEWithLogitsLoss()
    optD.zero_grad(set_to_none=True)
    x = torch.cat([real, fake.detach()])
    y = torch.cat([real_labels, fake_labels]).to(device=x.device, dtype=x.dtype).reshape(-1)
    out = D(x).reshape(-1)
    loss = criterion(out, y) if len(y) else out.sum()
    dp_backward(D, loss)
    optD.step()
    optD.zero_grad(set_to_none=True)
    return float(loss.detach()) if len(y) else 0.0


def _hooks_of(D: nn.Module, hooks: Any) -> Any:
    if hooks is not None:
        return hooks
    if isinstance(D, AbstractGradSampleHooks):
        return D
    found = getattr(D, HOOKS_ATTR, None)
    if found is None and hasattr(D, "autograd_grad_sample_hooks"):
        raise PrivacyUsageError(
            "the discriminator carries Opacus hooks but their owner is unknown; pass "
            "hooks=session.hooks (the DPSession that made it private)"
        )
    return found


def generator_step_with_frozen_dp_d(
    D: nn.Module,
    G: nn.Module,
    optG: Any,
    noise: torch.Tensor,
    real_labels: torch.Tensor | None = None,
    *,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    hooks: Any = None,
) -> float:
    """Generator step through a private discriminator whose Opacus hooks are off; the loss.

    With ``real_labels`` the loss is ``criterion(D(G(noise)), real_labels)`` (DCGAN, default
    ``BCEWithLogitsLoss``); without, the WGAN loss ``-mean(D(G(noise)))``. D's hooks are
    disabled (not ``requires_grad_(False)``) and D's gradients are cleared afterwards.
    """
    owner = _hooks_of(D, hooks)
    disable = getattr(owner, "disable_hooks", None)
    if disable is not None:
        disable()
    try:
        optG.zero_grad(set_to_none=True)
        out = D(G(noise)).reshape(-1)
        if real_labels is None:
            loss = -out.mean()
        else:
            target = real_labels.to(device=out.device, dtype=out.dtype).reshape(-1)
            loss = (criterion or nn.BCEWithLogitsLoss())(out, target)
        loss.backward()
        optG.step()
    finally:
        if disable is not None:
            owner.enable_hooks()
        for p in D.parameters():
            p.grad = None
    return float(loss.detach())


def _per_example_wgan_gp(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    lambda_gp: float,
    generator: torch.Generator | None,
    method: str = "auto",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    if method not in PER_EXAMPLE_METHODS:
        raise PrivacyUsageError(f"unknown method {method!r}; valid: {list(PER_EXAMPLE_METHODS)}")
    module = critic._module if isinstance(critic, AbstractGradSampleModule) else critic
    params = {k: p.detach() for k, p in module.named_parameters() if p.requires_grad}
    fixed = {k: p.detach() for k, p in module.named_parameters() if not p.requires_grad}
    fixed.update({k: b.detach() for k, b in module.named_buffers()})
    n = real.shape[0]
    if n == 0:
        zeros = {
            k: torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device) for k, p in params.items()
        }
        return zeros, torch.zeros(0, device=real.device)
    shape = (n,) + (1,) * (real.dim() - 1)
    alpha = torch.rand(shape, generator=generator, dtype=real.dtype).to(real.device)
    layers = critic_chain(module) if method != "vmap" else None
    if layers is None and method == "chain":
        raise PrivacyUsageError(
            f"{type(module).__name__} is not a chain of Conv2d/Linear/(Leaky)ReLU/GroupNorm/"
            "InstanceNorm/reshape layers; use method='vmap'"
        )
    if layers is not None:  # explicit input-gradient pass: no vmap (see critic_grads)
        by_param, losses = per_example_wgan_gp_grads(
            layers, real, fake.detach(), alpha, lambda_gp, _GP_EPS
        )
        names = {p: k for k, p in module.named_parameters()}
        return {names[p]: g for p, g in by_param.items()}, losses

    def score(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(module, (p, fixed), (x.unsqueeze(0),)).sum()

    def loss_i(p: dict[str, torch.Tensor], r: torch.Tensor, f: torch.Tensor, a: torch.Tensor):
        x_hat = a * r + (1 - a) * f
        g = grad(score, argnums=1)(p, x_hat)
        penalty = (torch.sqrt((g**2).sum() + _GP_EPS) - 1.0) ** 2
        loss = score(p, f) - score(p, r) + lambda_gp * penalty
        return loss, loss

    grads, losses = vmap(grad(loss_i, has_aux=True), in_dims=(None, 0, 0, 0))(
        params, real, fake.detach(), alpha
    )
    return grads, losses


def wgan_gp_critic_per_sample_grads(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    lambda_gp: float = 10.0,
    generator: torch.Generator | None = None,
    method: str = "auto",
) -> None:
    """Set ``p.grad_sample`` to per-example gradients of the WGAN-GP critic loss.

    Example ``i``'s loss is ``D(fake_i) - D(real_i) + lambda_gp (||grad_x D(x_hat_i)|| - 1)^2``
    with ``x_hat_i`` between ``real_i`` and ``fake_i`` (uniform weight drawn from
    ``generator``): the pair is one clipped example, so one real changes one term. ``fake_i``
    must be drawn independently of the real batch (e.g. a random pick from a fixed-size fake
    batch, as ``fedmammo.training.gan`` does). For a critic made private with
    ``grad_sample_mode="no_op"``: call ``optD.zero_grad(set_to_none=True)`` before and
    ``optD.step()`` (clip + noise) after.
    ``method``: "chain" (an explicit input-gradient pass, see ``critic_grads``; for critics
    that are a chain of supported layers), "vmap" (``torch.func``, any critic) or "auto"
    (chain when possible).
    """
    _same_batch(real, fake)
    grads, _ = _per_example_wgan_gp(critic, real, fake, lambda_gp, generator, method)
    module = critic._module if isinstance(critic, AbstractGradSampleModule) else critic
    for name, p in module.named_parameters():
        if p.requires_grad:
            p.grad_sample = grads[name].detach()


def dp_wgan_gp_critic_step(
    critic: nn.Module,
    optD: Any,
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    lambda_gp: float = 10.0,
    generator: torch.Generator | None = None,
    method: str = "auto",
) -> float:
    """One private WGAN-GP critic step (per-sample grads, clip, noise); the mean loss.

    Each (``real_i``, ``fake_i``) pair is one clipped example; ``fake`` as in and ``method`` as
    in :func:`wgan_gp_critic_per_sample_grads`. An empty pair batch is a noise-only step.
    """
    _same_batch(real, fake)
    optD.zero_grad(set_to_none=True)
    grads, losses = _per_example_wgan_gp(critic, real, fake, lambda_gp, generator, method)
    module = critic._module if isinstance(critic, AbstractGradSampleModule) else critic
    for name, p in module.named_parameters():
        if p.requires_grad:
            p.grad_sample = grads[name].detach()
    optD.step()
    optD.zero_grad(set_to_none=True)
    return float(losses.mean()) if len(losses) else 0.0
