"""Tests for fedmammo.privacy.dp_gan against per-example reference loops."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmammo.privacy.accounting import CentreAccountant, PrivacyBudget, PrivacyUsageError
from fedmammo.privacy.dp_gan import (
    dp_dcgan_discriminator_step,
    dp_wgan_gp_critic_step,
    generator_step_with_frozen_dp_d,
    wgan_gp_critic_per_sample_grads,
)
from fedmammo.privacy.engine import DPSession

N, BATCH, Z = 40, 8, 8


def critic() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 4, stride=2, padding=1),
        nn.GroupNorm(2, 4),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 1),
    )


def generator() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(Z, 16 * 16), nn.Tanh(), nn.Unflatten(1, (1, 16, 16)))


def images() -> TensorDataset:
    g = torch.Generator().manual_seed(2)
    return TensorDataset(torch.rand(N, 1, 16, 16, generator=g) * 2 - 1)


def private(model: nn.Module, *, clip: float, mode: str = "hooks", lr: float = 1.0):
    b = PrivacyBudget(target_epsilon=None, noise_multiplier=0.0, delta=1e-5, max_grad_norm=clip)
    session = DPSession(
        b,
        CentreAccountant(),
        planned_steps=5,
        phase="gan",
        centre="B",
        seed=0,
        grad_sample_mode=mode,
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model, opt, loader = session.attach(model, opt, DataLoader(images(), batch_size=BATCH))
    return session, model, opt, loader


def clipped_sum(per_example_grads: list[list[torch.Tensor]], clip: float) -> list[torch.Tensor]:
    out = [torch.zeros_like(g) for g in per_example_grads[0]]
    for grads in per_example_grads:
        norm = float(torch.sqrt(sum((g**2).sum() for g in grads)))
        for o, g in zip(out, grads):
            o += g * min(1.0, clip / (norm + 1e-6))
    return out


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_dcgan_step_clips_real_and_fake_per_example_in_one_batch(mode):
    # Prepare: a fixed fake batch (its size is not the Poisson real batch's)
    clip = 1e-2
    D, G = critic(), generator()
    reference = copy.deepcopy(D)
    session, D, optD, loader = private(D, clip=clip, mode=mode)
    (real,) = next(iter(loader))
    fake = G(torch.randn(len(real) + 3, Z, generator=torch.Generator().manual_seed(3)))
    ones, zeros = torch.ones(len(real)), torch.zeros(len(fake))
    # Execute
    dp_dcgan_discriminator_step(D, optD, real, fake, ones, zeros)
    # Assert: the update is the sum of the clipped per-example BCE grads of every real and
    # every fake, over the expected batch size.
    per_example = []
    for x, y in [(real, ones), (fake.detach(), zeros)]:
        for i in range(len(x)):
            reference.zero_grad()
            nn.functional.binary_cross_entropy_with_logits(
                reference(x[i : i + 1]).reshape(-1), y[i : i + 1]
            ).backward()
            per_example.append([p.grad.clone() for p in reference.parameters()])
    expected = clipped_sum(per_example, clip)
    for new, old, e in zip(D.parameters(), reference.parameters(), expected):
        assert torch.allclose(old - new, e / optD.expected_batch_size, atol=1e-7)
    assert all(p.grad is None and getattr(p, "grad_sample", None) is None for p in D.parameters())
    assert session.after_training(1) == float("inf")  # sigma 0: no privacy, reported as such


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_dcgan_step_one_more_real_adds_only_its_own_clipped_term(mode):
    # Prepare: the same fixed fakes whatever the real batch (noise 0, every term clipped)
    clip = 1e-3
    session, D, optD, _ = private(critic(), clip=clip, mode=mode)
    start = copy.deepcopy(D.state_dict())
    pool = images().tensors[0]
    fake = generator()(torch.randn(8, Z, generator=torch.Generator().manual_seed(3))).detach()

    def clipped_sum(real: torch.Tensor) -> torch.Tensor:
        D.load_state_dict(start)
        dp_dcgan_discriminator_step(
            D, optD, real, fake, torch.full((len(real),), 0.95), torch.zeros(len(fake))
        )
        moved = [(start[k] - v).flatten() for k, v in D.state_dict().items()]
        return torch.cat(moved) * optD.expected_batch_size

    # Execute / Assert: over several batches, adding one real moves the sum by C
    for k in (0, 3, 6, 11):
        shift = (clipped_sum(pool[: k + 1]) - clipped_sum(pool[:k])).norm() / clip
        assert float(shift) == pytest.approx(1.0, abs=1e-4)


def test_dcgan_step_refuses_labels_that_do_not_match_the_images():
    session, D, optD, _ = private(critic(), clip=1.0)
    real, fake = torch.zeros(4, 1, 16, 16), torch.zeros(3, 1, 16, 16)
    with pytest.raises(PrivacyUsageError, match="3 real labels for 4 real"):
        dp_dcgan_discriminator_step(D, optD, real, fake, torch.ones(3), torch.zeros(3))
    with pytest.raises(PrivacyUsageError, match="4 fake labels for 3 fake"):
        dp_dcgan_discriminator_step(D, optD, real, fake, torch.ones(4), torch.zeros(4))


def test_wgan_gp_step_refuses_unpaired_batches():
    session, D, optD, _ = private(critic(), clip=1.0, mode="no_op")
    real, fake = torch.zeros(4, 1, 16, 16), torch.zeros(3, 1, 16, 16)
    with pytest.raises(PrivacyUsageError, match="pairs each real with one fake"):
        dp_wgan_gp_critic_step(D, optD, real, fake)


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_generator_step_freezes_the_private_discriminator(mode):
    # Prepare
    D, G = critic(), generator()
    plain_D, plain_G = copy.deepcopy(D), copy.deepcopy(G)
    session, D, optD, loader = private(D, clip=1.0, mode=mode)
    d_before = copy.deepcopy(D.state_dict())
    optG = torch.optim.SGD(G.parameters(), lr=0.5)
    z = torch.randn(6, Z, generator=torch.Generator().manual_seed(4))
    # Execute
    generator_step_with_frozen_dp_d(D, G, optG, z, torch.ones(6))
    # Assert: D untouched, G moved exactly as with a plain D, D's hooks back on.
    assert all(torch.equal(D.state_dict()[k], d_before[k]) for k in d_before)
    assert all(p.grad is None and getattr(p, "grad_sample", None) is None for p in D.parameters())
    assert session.hooks.hooks_enabled
    ref_opt = torch.optim.SGD(plain_G.parameters(), lr=0.5)
    nn.functional.binary_cross_entropy_with_logits(
        plain_D(plain_G(z)).reshape(-1), torch.ones(6)
    ).backward()
    ref_opt.step()
    for a, b in zip(G.parameters(), plain_G.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    # and the next private D step still works (no stale per-sample gradients)
    (real,) = next(iter(loader))
    fake = G(torch.randn(len(real), Z))
    dp_dcgan_discriminator_step(D, optD, real, fake, torch.ones(len(real)), torch.zeros(len(real)))
    assert any(not torch.equal(D.state_dict()[k], d_before[k]) for k in d_before)


def loop_wgan_gp_grads(D: nn.Module, real, fake, alpha, lambda_gp: float):
    """Reference: autograd per example, penalty with create_graph=True."""
    out = []
    params = list(D.parameters())
    for i in range(len(real)):
        r, f, a = real[i : i + 1], fake[i : i + 1], alpha[i : i + 1]
        x_hat = (a * r + (1 - a) * f).requires_grad_(True)
        (gx,) = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
        penalty = (torch.sqrt((gx**2).sum() + 1e-12) - 1.0) ** 2
        loss = D(f).sum() - D(r).sum() + lambda_gp * penalty
        out.append([g.detach() for g in torch.autograd.grad(loss, params)])
    return out


class _Critic(nn.Module):
    """Not a Sequential (traced with torch.fx): InstanceNorm, ReLU, a flatten in forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.norm = nn.InstanceNorm2d(4, affine=True)
        self.act = nn.ReLU()
        self.b = nn.Conv2d(4, 1, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.act(self.norm(self.a(x)))).flatten()


def _critics():
    from fedmammo.models.gans import build_discriminator

    torch.manual_seed(4)
    return {
        "sequential": critic(),
        "traced": _Critic(),
        "wgan_gp": build_discriminator("wgan_gp", patch_size=16, width=4),
        "wgan_gp group": build_discriminator("wgan_gp", patch_size=16, width=4, norm="group"),
    }


@pytest.mark.parametrize("name", ["sequential", "traced", "wgan_gp", "wgan_gp group"])
@pytest.mark.parametrize("method", ["chain", "vmap"])
def test_wgan_gp_per_sample_grads_match_a_per_example_loop(name, method):
    # Prepare
    D, G = _critics()[name], generator()
    for m in D.modules():  # as DPSession.attach does
        if getattr(m, "inplace", False):
            m.inplace = False
    real = images().tensors[0][:6]
    fake = G(torch.randn(6, Z, generator=torch.Generator().manual_seed(5))).detach()
    alpha = torch.rand((6, 1, 1, 1), generator=torch.Generator().manual_seed(7))
    # Execute
    wgan_gp_critic_per_sample_grads(
        D, real, fake, lambda_gp=10.0, generator=torch.Generator().manual_seed(7), method=method
    )
    # Assert
    expected = loop_wgan_gp_grads(D, real, fake, alpha, 10.0)
    scale = max(float(p.grad_sample.abs().max()) for p in D.parameters())
    for j, p in enumerate(D.parameters()):
        assert p.grad_sample.shape == (6, *p.shape)
        ref = torch.stack([e[j] for e in expected])
        assert torch.allclose(p.grad_sample, ref, rtol=1e-4, atol=1e-5 * max(scale, 1.0))
    assert scale > 1e-3


def test_a_critic_that_is_not_a_chain_falls_back_to_vmap_or_is_refused():
    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x + self.conv(x)).flatten(1).sum(1)  # a residual: not a chain

    real, fake = images().tensors[0][:3], images().tensors[0][3:6]
    wgan_gp_critic_per_sample_grads(Skip(), real, fake)  # auto: torch.func
    with pytest.raises(PrivacyUsageError, match="not a chain"):
        wgan_gp_critic_per_sample_grads(Skip(), real, fake, method="chain")


def test_private_wgan_gp_critic_step_is_the_clipped_mean():
    # Prepare: critic made private with grad_sample_mode="no_op".
    clip = 1e-2
    D, G = critic(), generator()
    reference = copy.deepcopy(D)
    session, D, optD, loader = private(D, clip=clip, mode="no_op")
    (real,) = next(iter(loader))
    fake = G(torch.randn(len(real), Z)).detach()
    alpha = torch.rand((len(real), 1, 1, 1), generator=torch.Generator().manual_seed(11))
    # Execute
    loss = dp_wgan_gp_critic_step(D, optD, real, fake, generator=torch.Generator().manual_seed(11))
    session.after_training(1)
    # Assert
    expected = clipped_sum(loop_wgan_gp_grads(reference, real, fake, alpha, 10.0), clip)
    for new, old, e in zip(D.parameters(), reference.parameters(), expected):
        assert torch.allclose(old - new, e / optD.expected_batch_size, atol=1e-6)
    assert loss == loss  # finite float
    assert session.accountant.total_steps == 1  # one Poisson batch drawn, one step


def test_wgan_gp_generator_step_uses_the_wgan_loss():
    D, G = critic(), generator()
    session, D, optD, _ = private(D, clip=1.0, mode="no_op")
    optG = torch.optim.SGD(G.parameters(), lr=0.1)
    z = torch.randn(4, Z, generator=torch.Generator().manual_seed(6))
    loss = generator_step_with_frozen_dp_d(D, G, optG, z)
    assert loss == pytest.approx(-float(D(generator()(z)).mean()), abs=1e-6)
    assert all(p.grad is None for p in D.parameters())


def _dcgan_step(D, optD, empty):
    return dp_dcgan_discriminator_step(D, optD, empty, empty, torch.ones(0), torch.zeros(0))


def _wgan_gp_step(D, optD, empty):
    return dp_wgan_gp_critic_step(D, optD, empty, empty)


@pytest.mark.parametrize(
    ("mode", "step"),
    [("bk", _dcgan_step), ("hooks", _dcgan_step), ("no_op", _wgan_gp_step)],
    ids=["dcgan-bk", "dcgan-hooks", "wgan_gp"],
)
def test_empty_poisson_batch_is_a_noise_only_step(mode, step):
    # Prepare: noise on, an empty real batch (Poisson sampling can draw one; the trainer
    # steps on it, for the discriminator and the critic)
    D = critic()
    b = PrivacyBudget(target_epsilon=None, noise_multiplier=1.0, delta=1e-5, max_grad_norm=1.0)
    session = DPSession(
        b,
        CentreAccountant(),
        planned_steps=1,
        phase="gan",
        centre="B",
        seed=0,
        grad_sample_mode=mode,
    )
    D, optD, _ = session.attach(
        D, torch.optim.SGD(D.parameters(), lr=1.0), DataLoader(images(), batch_size=BATCH)
    )
    before = copy.deepcopy(D.state_dict())
    # Execute
    loss = step(D, optD, torch.zeros(0, 1, 16, 16))
    session.after_training(1)
    # Assert: the step still happened (noise only) and was accounted.
    assert loss == 0.0
    assert any(not torch.equal(D.state_dict()[k], before[k]) for k in before)
    assert session.accountant.total_steps == 1
