"""Tests for fedmammo.privacy.engine: Opacus wiring, composed budgets and refusals."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers.dp_session import budget, tiny_cnn
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmammo.privacy.accounting import BudgetExceeded, CentreAccountant, epsilon_of
from fedmammo.privacy.engine import DPIncompatibleModelError, DPSession, validate_for_dp

N, BATCH = 60, 6  # sample rate 1/10, 10 steps per epoch


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.randn(N, 1, 8, 8, generator=g), torch.randint(0, 2, (N,), generator=g)
    )


def train_round(session: DPSession, model: nn.Module, *, lr: float = 0.1, skip_odd: bool = False):
    """A minimal training loop as the training package writes it."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model, opt, loader = session.attach(model, opt, DataLoader(dataset(), batch_size=BATCH))
    steps = 0
    for i, (x, y) in enumerate(loader):
        if len(y) == 0 or (skip_odd and i % 2):
            continue
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        steps += 1
    return session.after_training(steps), opt, steps


def test_session_round_uses_opacus_and_records_history():
    # Prepare
    model = tiny_cnn()
    before = copy.deepcopy(model.state_dict())
    acc = CentreAccountant("rdp", centre="A")
    session = DPSession(budget(), acc, planned_steps=10, phase="fedavg", centre="A", seed=3)
    # Execute
    eps, opt, steps = train_round(session, model)
    # Assert: DP optimizer, weights changed, unprefixed keys, history [sigma, q, steps].
    assert isinstance(opt, DPOptimizer)
    assert list(model.state_dict()) == list(before)
    assert any(not torch.equal(model.state_dict()[k], before[k]) for k in before)
    assert acc.history == [[1.0, pytest.approx(1 / 10), 10]]
    assert acc.phases["fedavg"] == acc.history
    assert eps == pytest.approx(epsilon_of(acc.history, 1e-5))
    assert not hasattr(next(model.parameters()), "grad_sample")  # hooks removed


def test_per_sample_clipping_matches_a_manual_loop():
    # Prepare: no noise, tiny clipping norm, lr 1: the update is the mean of clipped grads.
    model, clip = tiny_cnn(), 1e-3
    reference = copy.deepcopy(model)
    session = DPSession(
        budget(noise_multiplier=0.0, max_grad_norm=clip),
        CentreAccountant(),
        planned_steps=1,
        phase="p",
        centre="A",
        seed=0,
    )
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model, opt, loader = session.attach(model, opt, DataLoader(dataset(), batch_size=BATCH))
    x, y = next(iter(loader))
    # Execute
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    session.after_training(1)
    # Assert
    expected = [torch.zeros_like(p) for p in reference.parameters()]
    for i in range(len(y)):
        reference.zero_grad()
        nn.functional.cross_entropy(reference(x[i : i + 1]), y[i : i + 1]).backward()
        grads = [p.grad for p in reference.parameters()]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        for e, g in zip(expected, grads):
            e += g * min(1.0, clip / (float(norm) + 1e-6))
    for p_new, p_old, e in zip(model.parameters(), reference.parameters(), expected):
        assert torch.allclose(p_old - p_new, e / opt.expected_batch_size, atol=1e-7)
    assert (
        float(
            max(
                (p_old - p_new).detach().abs().max()
                for p_new, p_old in zip(model.parameters(), reference.parameters())
            )
        )
        > 0
    )


def test_rounds_compose_one_budget_through_state():
    # Prepare: target epsilon 4 over 3 rounds of one epoch (30 planned steps).
    b = budget(target_epsilon=4.0, noise_multiplier=None)
    state = CentreAccountant("rdp", centre="B").to_state()
    eps, sigmas = [], []
    # Execute
    for r in range(3):
        acc = CentreAccountant.from_state(json.loads(json.dumps(state)))
        session = DPSession(b, acc, planned_steps=30, phase="fedavg", centre="B", seed=r)
        session.check_budget(10, sample_rate=1 / 10)
        eps.append(train_round(session, tiny_cnn())[0])
        sigmas.append(session.noise_multiplier)
        state = acc.to_state()
    # Assert: one sigma for the run, epsilon grows and ends at the target, a fresh accountant
    # per round would report far less.
    dp_accounting = pytest.importorskip("dp_accounting")
    assert len(set(sigmas)) == 1
    assert eps[0] < eps[1] < eps[2] <= 4.0 * 1.01
    assert eps[2] == pytest.approx(4.0, abs=0.05)
    assert eps[2] == pytest.approx(epsilon_of([[sigmas[0], 1 / 10, 30]], 1e-5), rel=1e-9)
    ref = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(1 / 10, dp_accounting.GaussianDpEvent(sigmas[0]))
    ref.compose(event, 30)
    assert eps[2] == pytest.approx(ref.get_epsilon(1e-5), rel=0.02)
    assert eps[2] > 1.3 * epsilon_of([[sigmas[0], 1 / 10, 10]], 1e-5)


def test_next_round_beyond_the_plan_is_refused_before_work():
    # Prepare: the whole plan (20 steps) is spent.
    b = budget(target_epsilon=3.0, noise_multiplier=None)
    acc = CentreAccountant("rdp", centre="C")
    for r in range(2):
        train_round(
            DPSession(b, acc, planned_steps=20, phase="fedavg", centre="C", seed=r), tiny_cnn()
        )
    model = tiny_cnn()
    before = copy.deepcopy(model.state_dict())
    session = DPSession(b, acc, planned_steps=20, phase="fedavg", centre="C", seed=9)
    # Execute / Assert: refused at attach, nothing trained, nothing recorded.
    with pytest.raises(BudgetExceeded, match="'C'") as info:
        train_round(session, model)
    assert info.value.target == 3.0 and info.value.spent <= 3.0
    # the reason, without an inequality that reads false (spent is below the target)
    assert (
        f"in phase fedavg: all 20 planned steps taken: epsilon spent so far "
        f"{info.value.spent:.4g} of target 3 (delta"
    ) in str(info.value)
    assert ">" not in str(info.value)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    assert acc.history[0][2] == 20


def test_check_budget_refuses_steps_that_overrun_a_fixed_noise_budget():
    # Prepare: noise multiplier fixed, target epsilon as a cap.
    b = budget(target_epsilon=6.0, noise_multiplier=1.0)
    acc = CentreAccountant("rdp", centre="D")
    session = DPSession(b, acc, planned_steps=10, phase="fedavg", centre="D", seed=0)
    ok = session.check_budget(10, sample_rate=1 / 10)
    # Execute / Assert
    with pytest.raises(BudgetExceeded, match="target 6") as info:
        session.check_budget(10_000, sample_rate=1 / 10)
    assert ok < 6.0 < info.value.requested
    assert acc.history == []


def test_a_fixed_noise_just_over_the_target_is_refused_not_tolerated():
    # Prepare: a fixed noise whose 10 steps at rate 1/10 end 0.5% above the target
    acc = CentreAccountant("rdp", centre="D")
    eps = epsilon_of([[1.0, 1 / 10, 10]], 1e-5)
    session = DPSession(
        budget(target_epsilon=eps / 1.005), acc, planned_steps=10, phase="p", centre="D", seed=0
    )
    # Execute / Assert: refused before any step (the centre allowed 1% over until 2026-12)
    with pytest.raises(BudgetExceeded):
        session.check_budget(10, sample_rate=1 / 10)
    assert acc.history == []
    # at exactly the target it runs
    exact = DPSession(
        budget(target_epsilon=eps), acc, planned_steps=10, phase="p", centre="D", seed=0
    )
    assert exact.check_budget(10, sample_rate=1 / 10) == pytest.approx(eps)


def test_skipped_batches_still_count_as_steps():
    # Prepare / Execute: the loop skips every other Poisson batch.
    acc = CentreAccountant("rdp")
    session = DPSession(budget(), acc, planned_steps=10, phase="p", centre="A", seed=0)
    _, _, steps = train_round(session, tiny_cnn(), skip_odd=True)
    # Assert: conservative accounting counts every batch drawn.
    assert steps == 5
    assert acc.total_steps == 10 and acc.phases["p"][0][2] == 10


@pytest.mark.parametrize("minority", [None, 200], ids=["uniform", "label_rates"])
def test_poisson_batches_are_drawn_at_the_rates_the_session_accounts_every_step_at(minority):
    # Prepare: 1000 examples (the dataset holds their index) in a loader of 10 batches:
    # expected batch B = 100; uniform rate 1/10, or with 200 positives the per-label rates
    # B / (2 n_label) = 0.0625 and 0.25, every step accounted at the largest
    n, steps, epochs = 1000, 10, 50
    labels = None if minority is None else torch.arange(n) < minority
    if labels is None:
        expected, accounted = torch.full((n,), 1 / steps), 1 / steps
    else:
        expected = torch.where(labels, 100 / (2 * minority), 100 / (2 * (n - minority)))
        accounted = 100 / (2 * minority)
    acc = CentreAccountant("rdp")
    session = DPSession(budget(), acc, planned_steps=steps * epochs, phase="p", centre="A", seed=0)
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=n // steps)
    # Execute: draw 50 epochs of batches, then account them
    _, _, poisson = session.attach(model, opt, loader, labels=labels)
    seen = torch.zeros(n)
    for _ in range(epochs):
        for (batch,) in poisson:
            seen[batch] += 1
    session.after_training(0)
    # Assert: each example's inclusion frequency is its expected rate (per label: within 4
    # standard errors), the largest is the rate accounted, for every batch drawn
    freq = seen / (steps * epochs)
    for rate in expected.unique():
        group = freq[expected == rate]
        se = (rate * (1 - rate) / (len(group) * steps * epochs)).sqrt()
        assert abs(group.mean() - rate) < 4 * se, (float(rate), float(group.mean()))
    assert session.sample_rate == pytest.approx(accounted)
    assert acc.history == [[1.0, pytest.approx(accounted), steps * epochs]]


def test_same_seed_reproduces_and_rounds_draw_fresh_noise():
    # Prepare
    runs = []
    for _ in range(2):
        model = tiny_cnn()
        train_round(
            DPSession(
                budget(), CentreAccountant(), planned_steps=10, phase="p", centre="A", seed=5
            ),
            model,
        )
        runs.append(model.state_dict())
    acc = CentreAccountant()
    acc.record("p", 1.0, 1 / 10, 10)  # a later round of the same centre
    later = tiny_cnn()
    train_round(DPSession(budget(), acc, planned_steps=20, phase="p", centre="A", seed=5), later)
    # Assert
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not torch.equal(runs[0][k], later.state_dict()[k]) for k in runs[0])


def test_validate_for_dp_names_the_batchnorm_layer():
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(1, 4, 3))
    model.add_module("stem_bn", nn.BatchNorm2d(4))
    model.add_module("norm2", nn.InstanceNorm2d(4, track_running_stats=True))
    with pytest.raises(DPIncompatibleModelError) as info:
        validate_for_dp(model)
    msg = str(info.value)
    assert "stem_bn (BatchNorm2d)" in msg and "norm2 (InstanceNorm2d)" in msg
    assert "GroupNorm" in msg and "ModuleValidator.fix" in msg
    assert "stem " not in msg
    validate_for_dp(tiny_cnn())  # GroupNorm passes


def test_batchnorm_without_affine_is_refused_too():
    with pytest.raises(DPIncompatibleModelError, match=r"1 \(BatchNorm1d\)"):
        validate_for_dp(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, affine=False)))


def test_a_plan_that_leaves_mostly_noise_is_warned_about(caplog):
    # Prepare: a tiny target over many steps at a high sample rate needs sigma > 10
    acc = CentreAccountant("rdp", centre="E")
    session = DPSession(
        budget(target_epsilon=0.2, noise_multiplier=None),
        acc,
        planned_steps=500,
        phase="p",
        centre="E",
        seed=0,
    )
    # Execute
    with caplog.at_level("WARNING", logger="fedmammo.privacy.engine"):
        session.check_budget(5, sample_rate=0.5)
    # Assert
    assert session.accountant.plans["p"]["noise_multiplier"] > 10
    assert "mostly noise" in caplog.text and "centre E phase p" in caplog.text
