"""Tests for fedmammo.training.gan: label smoothing, flips, gradient penalty, schedules."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fedmammo.training.gan as gan_mod
from fedmammo.errors import DataError
from fedmammo.models.gans import sample_generator
from fedmammo.training.gan import (
    gradient_penalty,
    random_flips,
    smoothed_real_labels,
    snapshot_schedule,
    train_dcgan,
    train_wgan_gp,
)

TINY = {"width": 4, "batch_size": 8}


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    return np.random.default_rng(0).uniform(0.2, 0.8, size=(24, 32, 32)).astype(np.float32)


# --- label smoothing ---------------------------------------------------------------------


def test_smoothed_real_labels_are_uniform_on_0_8_to_1_1():
    # Execute
    labels = smoothed_real_labels(20_000, torch.Generator().manual_seed(0)).numpy()
    # Assert: inside the range, reaching both ends, flat histogram
    assert labels.min() >= 0.8 and labels.max() <= 1.1
    assert labels.min() < 0.801 and labels.max() > 1.099
    counts, _ = np.histogram(labels, bins=6, range=(0.8, 1.1))
    np.testing.assert_allclose(counts / len(labels), 1 / 6, atol=0.01)


def test_bce_with_logits_is_defined_for_targets_above_one():
    # The docstring's claim: finite loss, gradient sigmoid(x) - y (< 0 for y > 1)
    logits = torch.tensor([-3.0, 0.0, 3.0, 30.0], requires_grad=True)
    target = torch.full((4,), 1.1)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss)
    np.testing.assert_allclose(logits.grad, torch.sigmoid(logits.detach()) - 1.1, atol=1e-6)


def test_dcgan_training_draws_real_labels_across_the_smoothing_range(patches, monkeypatch):
    # Prepare: record the real targets of every discriminator step
    seen: list[torch.Tensor] = []
    original = gan_mod.discriminator_step

    def recording(disc, opt, real, fake, *, real_labels):
        seen.append(real_labels.clone())
        return original(disc, opt, real, fake, real_labels=real_labels)

    monkeypatch.setattr(gan_mod, "discriminator_step", recording)
    # Execute
    train_dcgan(patches, epochs=4, snapshot_every=None, **TINY)
    labels = torch.cat(seen).numpy()
    # Assert: 4 epochs x 3 batches x 8 labels, all in [0.8, 1.1], spread over the range
    assert labels.shape == (96,)
    assert labels.min() >= 0.8 and labels.max() <= 1.1
    assert labels.min() < 0.85 and labels.max() > 1.05


# --- flips ---------------------------------------------------------------------------------


def test_random_flips_flip_each_axis_with_probability_p():
    # Prepare: an asymmetric image (a single hot corner) repeated
    x = torch.zeros(4000, 1, 4, 4)
    x[:, 0, 0, 0] = 1.0
    # Execute
    out = random_flips(x, torch.Generator().manual_seed(0), p=0.5)
    # Assert: the hot pixel lands in each corner a quarter of the time
    corners = out[:, 0, [0, 0, 3, 3], [0, 3, 0, 3]].mean(dim=0).numpy()
    np.testing.assert_allclose(corners, 0.25, atol=0.03)
    assert torch.equal(random_flips(x, torch.Generator(), p=0.0), x)
    assert torch.equal(random_flips(x, torch.Generator(), p=1.0), x.flip(-1).flip(-2))


# --- gradient penalty ------------------------------------------------------------------------


class _Linear(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) * self.weight.flatten()).sum(dim=1)


@pytest.mark.parametrize("scale", [0.3, 1.0, 2.5])
def test_gradient_penalty_of_a_linear_critic_is_exact(scale):
    # Prepare: D(x) = <w, x> has gradient w everywhere, so GP = lambda * (||w|| - 1)^2
    w = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(1))
    w = w / w.norm() * scale
    critic = _Linear(w)
    gen = torch.Generator().manual_seed(2)
    real, fake = torch.rand(5, 1, 8, 8, generator=gen), torch.rand(5, 1, 8, 8, generator=gen)
    # Execute
    gp = gradient_penalty(critic, real, fake, lambda_gp=10.0, generator=gen)
    # Assert
    assert gp.item() == pytest.approx(10.0 * (scale - 1.0) ** 2, abs=1e-5)


def test_gradient_penalty_is_differentiable_in_the_critic_weights():
    # d/dw lambda (||w|| - 1)^2 = 2 lambda (||w|| - 1) w / ||w||
    w = torch.full((1, 2, 2), 1.0)  # ||w|| = 2
    critic = _Linear(w.clone())
    gp = gradient_penalty(critic, torch.rand(3, 1, 2, 2), torch.rand(3, 1, 2, 2), lambda_gp=10.0)
    gp.backward()
    np.testing.assert_allclose(critic.weight.grad.numpy(), 2 * 10.0 * 1.0 * w.numpy() / 2.0)


# --- schedules -------------------------------------------------------------------------------


def test_wgan_gp_runs_five_critic_steps_per_generator_step(patches):
    # Execute: 24 patches / batch 8 = 3 critic steps per epoch, 5 epochs = 15 critic steps
    result = train_wgan_gp(patches, epochs=5, seed=0, **TINY)
    # Assert: 3 generator steps, the 5:1 schedule running across epoch boundaries
    assert (result.critic_steps, result.generator_steps) == (15, 3)
    g_losses = [h["g_loss"] for h in result.history]
    assert np.isnan(g_losses[0]) and not np.isnan(g_losses[1])  # first G step at critic step 5
    assert result.description.extra["n_critic"] == 5
    assert result.description.extra["lambda_gp"] == 10.0


def test_dcgan_alternates_one_to_one(patches):
    result = train_dcgan(patches, epochs=2, snapshot_every=None, **TINY)
    assert (result.critic_steps, result.generator_steps) == (6, 6)


def test_snapshot_schedule_is_warmup_plus_multiples_of_k():
    assert snapshot_schedule(3000, warmup=500, every=50) == list(range(500, 3001, 50))
    assert snapshot_schedule(12, warmup=5, every=3) == [5, 8, 11]
    assert snapshot_schedule(10, warmup=0, every=4) == [4, 8]
    assert snapshot_schedule(10, warmup=20, every=4) == []
    assert snapshot_schedule(10, warmup=0, every=None) == []


def test_dcgan_keeps_snapshots_on_schedule_and_samples_from_them(patches):
    # Execute
    result = train_dcgan(patches, epochs=5, warmup=2, snapshot_every=2, seed=3, **TINY)
    # Assert: epochs 2 and 4 kept; distinct weights; the final state is epoch 5's
    assert [e for e, _ in result.snapshots] == [2, 4]
    assert result.description.snapshot_epochs == [2, 4]
    key = next(iter(result.generator_state))
    s2, s4 = (state[key] for _, state in result.snapshots)
    assert not torch.equal(s2, s4) and not torch.equal(s4, result.generator_state[key])
    assert len(result.sampling_states()) == 2


def test_without_snapshots_sampling_uses_the_last_generator(patches):
    result = train_wgan_gp(patches, epochs=1, **TINY)
    assert result.snapshots == []
    assert result.sampling_states() == [result.generator_state]


# --- reproducibility, description, input checks ------------------------------------------


def test_training_is_reproducible_and_leaves_global_rng_alone(patches):
    before = torch.random.get_rng_state()
    a = train_dcgan(patches, epochs=1, snapshot_every=None, seed=11, **TINY)
    b = train_dcgan(patches, epochs=1, snapshot_every=None, seed=11, **TINY)
    assert torch.equal(torch.random.get_rng_state(), before)
    for key, value in a.generator_state.items():
        assert torch.equal(value, b.generator_state[key])
    assert a.history == b.history


def test_description_records_training_and_is_json_serialisable(patches):
    result = train_dcgan(
        patches, epochs=2, warmup=1, snapshot_every=1, lesion_types=["mass"], centre="B", **TINY
    )
    desc = json.loads(json.dumps(result.description.to_dict()))
    assert desc["kind"] == "dcgan" and desc["latent_dim"] == 100 and desc["patch_size"] == 32
    assert desc["n_training_patches"] == 24 and desc["epochs"] == 2
    assert desc["snapshot_epochs"] == [1, 2] and desc["lesion_types"] == ["mass"]
    assert desc["extra"]["label_smoothing"] == [0.8, 1.1] and desc["extra"]["batch_size"] == 8


def test_dcgan_moves_its_samples_towards_the_data_intensity():
    # Prepare: bright patches (0.85); an untrained generator's output averages 0.5 (tanh(~0))
    data = np.clip(
        0.85 + 0.02 * np.random.default_rng(1).standard_normal((32, 32, 32)), 0, 1
    ).astype(np.float32)
    options = {"snapshot_every": None, "seed": 1, "width": 8, "batch_size": 8, "lr": 2e-3}
    # Execute
    untrained = train_dcgan(data, epochs=0, **options)
    trained = train_dcgan(data, epochs=12, **options)
    before, after = (
        sample_generator(r.description, r.sampling_states(), 16, seed=0).mean()
        for r in (untrained, trained)
    )
    # Assert: a short run moves the mean clearly from 0.5 towards 0.85
    assert abs(before - 0.5) < 0.02
    assert after - before > 0.08


def test_bad_inputs_are_refused(patches):
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
        train_dcgan(patches * 2, epochs=1)
    with pytest.raises(DataError, match=r"\(N, S, S\)"):
        train_wgan_gp(patches[:, :, :16], epochs=1)


# --- differential privacy ---------------------------------------------------------------


def _session(n: int, planned_steps: int, **spec):
    from fedmammo.config import PrivacySpec
    from fedmammo.privacy.accounting import CentreAccountant, PrivacyBudget
    from fedmammo.privacy.engine import DPSession

    budget = PrivacyBudget.from_spec(PrivacySpec(**spec), n)
    accountant = CentreAccountant(budget.accountant, centre="B")
    return DPSession(
        budget, accountant, planned_steps=planned_steps, phase="gan", centre="B", seed=3
    )


@pytest.mark.parametrize("train", [train_dcgan, train_wgan_gp])
def test_dp_gan_accounts_every_poisson_step_of_the_planned_run(patches, train):
    # Prepare: 24 patches, batch 8 -> 3 Poisson steps per epoch at rate 1/3, 2 epochs
    session = _session(len(patches), planned_steps=6, target_epsilon=4.0)
    # Execute
    result = train(patches, epochs=2, snapshot_every=None, privacy=session, **TINY)
    # Assert: one phase-history entry of 6 steps at q = 1/3 with the planned noise; the
    # reported epsilon is the accountant's and meets the target
    (entry,) = session.accountant.phases["gan"]
    sigma, q, steps = entry
    assert q == pytest.approx(1 / 3) and steps == 6 and sigma > 0.5
    assert result.critic_steps == 6  # every Poisson batch is a step, an empty one too
    assert result.epsilon == pytest.approx(session.epsilon)
    assert 3.5 < result.epsilon <= 4.0 * 1.01
    assert session.hooks is None  # detached: a plain module again


class _RecordingSGD(torch.optim.SGD):
    """SGD that keeps the gradients of its last step (the noised, scaled clipped sum)."""

    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        self.seen = [p.grad.detach().clone() for g in self.param_groups for p in g["params"]]
        return super().step(closure)


def _dp_step_clipped_sum(kind: str, real: torch.Tensor, seed: int, clip: float):
    """The trainer's private discriminator step on the real batch ``real``, with noise 0, in
    float64: the sum of clipped per-example gradients it applied, and its number of fakes.
    Everything is rebuilt from the same seeds, so two calls differ only in ``real``."""
    from fedmammo.models.gans import build_gan
    from fedmammo.privacy.accounting import CentreAccountant, PrivacyBudget
    from fedmammo.privacy.engine import DPSession
    from fedmammo.training.runtime import Runtime

    torch.manual_seed(0)
    gen, disc = build_gan(
        kind, patch_size=32, latent_dim=8, width=4, norm="group" if kind == "dcgan" else None
    )
    budget = PrivacyBudget(
        target_epsilon=None, noise_multiplier=0.0, delta=1e-5, max_grad_norm=clip
    )
    session = DPSession(
        budget, CentreAccountant(), planned_steps=10, phase="gan", centre="B", seed=0
    )
    o = {"lr": 1.0, "betas": (0.5, 0.999), "latent_dim": 8, "label_smoothing": (0.8, 1.1)}
    o |= {"batch_size": 8, "lambda_gp": 10.0, "seed": seed}
    steps = gan_mod._Steps(kind, gen.train(), disc.train(), o, session, Runtime(device="cpu"))
    steps.opt_d = recording = _RecordingSGD(disc.parameters(), lr=1.0)
    steps.batches(torch.zeros(24, 1, 32, 32), torch.Generator().manual_seed(0))  # rate 1/3
    rng = torch.Generator().manual_seed(seed)
    _, fake = steps.fakes(len(real), rng, torch.device("cpu"))  # as _train does
    steps.discriminator(real, fake, rng)
    summed = torch.cat([g.flatten() for g in recording.seen])
    return summed * steps.opt_d.expected_batch_size, len(fake)


@pytest.mark.parametrize("kind", ["dcgan", "wgan_gp"])
def test_dp_step_one_more_real_patch_moves_the_clipped_sum_by_at_most_the_clip(kind):
    # Prepare: real batches of varying size, and each with one more patch (same seeds)
    clip = 1e-3  # below every per-example gradient norm: every term is clipped to C
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # differences of sums of ~20 terms, to 1e-6
    try:
        g = torch.Generator().manual_seed(5)
        pool = torch.rand(30, 1, 32, 32, generator=g) * 2 - 1
        shifts, fake_counts = [], set()
        for draw, k in enumerate([0, 2, 5, 8, 11]):
            real, more = pool[:k], pool[: k + 1]
            # Execute
            without, n_without = _dp_step_clipped_sum(kind, real, draw, clip)
            with_one_more, n_with = _dp_step_clipped_sum(kind, more, draw, clip)
            shifts.append(float((with_one_more - without).norm()) / clip)
            fake_counts |= {n_without, n_with}
    finally:
        torch.set_default_dtype(dtype)
    # Assert: the sensitivity the noise and the accountant assume, C (one fake more would
    # add a second clipped term: up to 2 C); the fakes are the expected batch, 24 / 3, always
    assert max(shifts) <= 1 + 1e-6, shifts
    if kind == "dcgan":  # the one new term is the new patch's own, clipped to exactly C
        assert min(shifts) == pytest.approx(1.0, rel=1e-4)
    assert fake_counts == {8}


@pytest.mark.parametrize("train", [train_dcgan, train_wgan_gp])
def test_dp_fakes_and_latents_do_not_follow_the_real_batch(patches, train, monkeypatch):
    # Prepare: record the batch sizes every private step sees
    from fedmammo.privacy import dp_gan

    seen: dict[str, list[int]] = {"real": [], "fake": [], "latent": []}

    def dcgan_step(D, optD, real, fake, *args, **kwargs):
        seen["real"].append(len(real))
        seen["fake"].append(len(fake))
        return dp_gan.dp_dcgan_discriminator_step(D, optD, real, fake, *args, **kwargs)

    def critic_step(D, optD, real, fake, **kwargs):
        seen["real"].append(len(real))
        return dp_gan.dp_wgan_gp_critic_step(D, optD, real, fake, **kwargs)

    def generator_step(D, G, optG, z, *args, **kwargs):
        seen["latent"].append(len(z))
        return dp_gan.generator_step_with_frozen_dp_d(D, G, optG, z, *args, **kwargs)

    fakes = gan_mod._Steps.fakes

    def recording_fakes(self, n_real, rng, device):
        z, fake = fakes(self, n_real, rng, device)
        if train is train_wgan_gp:
            seen["fake"].append(len(fake))
        return z, fake

    recorder = SimpleNamespace(
        dp_dcgan_discriminator_step=dcgan_step,
        dp_wgan_gp_critic_step=critic_step,
        generator_step_with_frozen_dp_d=generator_step,
    )
    monkeypatch.setattr(gan_mod, "_dp", lambda: recorder)
    monkeypatch.setattr(gan_mod._Steps, "fakes", recording_fakes)
    extra = {"n_critic": 2} if train is train_wgan_gp else {}
    # Execute: 24 patches, batch 8: Poisson rate 1/3, expected batch 8
    train(
        patches,
        epochs=4,
        snapshot_every=None,
        privacy=_session(24, 12, noise_multiplier=1.0),
        **TINY,
        **extra,
    )
    # Assert: the real batches vary; the fakes and the generator's latents do not
    assert len(seen["real"]) == 12 and len(set(seen["real"])) > 1
    assert set(seen["fake"]) == {8} and len(seen["fake"]) == 12
    assert set(seen["latent"]) == {8} and seen["latent"]


def test_dp_dcgan_uses_group_norm_and_refuses_batch_norm(patches):
    # Execute
    result = train_dcgan(
        patches,
        epochs=1,
        snapshot_every=None,
        privacy=_session(24, 3, noise_multiplier=1.0),
        **TINY,
    )
    # Assert: GroupNorm by default under DP; an explicit BatchNorm critic is named and refused
    assert result.description.d_norm == "group"
    assert any(".weight" in k for k in result.discriminator_state)
    from fedmammo.privacy.engine import DPIncompatibleModelError

    with pytest.raises(DPIncompatibleModelError, match=r"BatchNorm2d\): BatchNorm mixes"):
        train_dcgan(
            patches,
            epochs=1,
            d_norm="batch",
            privacy=_session(24, 3, noise_multiplier=1.0),
            **TINY,
        )


def test_dp_wgan_gp_trains_the_critic_and_is_reproducible(patches):
    # Prepare
    options = {"epochs": 2, "snapshot_every": None, "n_critic": 2, "seed": 4, **TINY}
    start = train_wgan_gp(patches, **{**options, "epochs": 0})
    # Execute
    a = train_wgan_gp(patches, privacy=_session(24, 6, noise_multiplier=1.0), **options)
    b = train_wgan_gp(patches, privacy=_session(24, 6, noise_multiplier=1.0), **options)
    # Assert: same seed, same private run; the critic and the generator both moved
    for key, value in a.discriminator_state.items():
        assert torch.equal(value, b.discriminator_state[key])
        assert not torch.equal(value, start.discriminator_state[key])
    assert a.generator_steps >= 1
    assert any(not torch.equal(v, start.generator_state[k]) for k, v in a.generator_state.items())


def test_dp_dcgan_with_little_noise_still_learns_the_data_intensity():
    # Prepare: as the non-DP test below, with a private discriminator (sigma 0.3, C = 5)
    data = np.clip(
        0.85 + 0.02 * np.random.default_rng(1).standard_normal((32, 32, 32)), 0, 1
    ).astype(np.float32)
    options = {"snapshot_every": None, "seed": 1, "width": 8, "batch_size": 8, "lr": 2e-3}
    session = _session(32, 48, noise_multiplier=0.3, max_grad_norm=5.0)
    # Execute
    trained = train_dcgan(data, epochs=12, privacy=session, **options)
    after = sample_generator(trained.description, trained.sampling_states(), 16, seed=0).mean()
    # Assert
    assert after - 0.5 > 0.08
