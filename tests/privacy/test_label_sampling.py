"""Label-balanced Poisson sampling under DP: rates, batch statistics, accounting at the
largest rate, and train_classifier's DP batches with sampler balanced_labels."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.dp_session import budget, tiny_cnn
from scipy.stats import binomtest
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fedmammo.errors import ConfigError
from fedmammo.privacy.accounting import CentreAccountant, epsilon_of
from fedmammo.privacy.engine import DPSession
from fedmammo.privacy.label_sampling import LabelPoissonSampler, label_rates
from fedmammo.privacy.periodic import PoissonPeriodicSampler
from fedmammo.training.classifier import train_classifier

N_POS, N_NEG, BATCH = 6, 54, 6  # 10% positives, 10 steps per epoch


def labels() -> np.ndarray:
    return np.r_[np.ones(N_POS, int), np.zeros(N_NEG, int)]


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.randn(N_POS + N_NEG, 1, 8, 8, generator=g), torch.as_tensor(labels())
    )


# --------------------------------------------------------------------------- rates
def test_rates_expect_each_label_equally_often_at_the_uniform_batch_size():
    # Execute: 60 examples, 10 steps: the uniform sampler expects batches of 6 at rate 1/10.
    rates = label_rates(labels(), 6.0)
    # Assert: 3 of each label expected per step; positives at 3/6, negatives at 3/54.
    assert rates[:N_POS] == pytest.approx(np.full(N_POS, 0.5))
    assert rates[N_POS:] == pytest.approx(np.full(N_NEG, 3 / 54))
    assert rates[:N_POS].sum() == pytest.approx(rates[N_POS:].sum()) == pytest.approx(3.0)
    assert rates.sum() == pytest.approx(60 / 10)


def test_balanced_or_single_labels_give_the_uniform_rate_and_rates_cap_at_one():
    # Balanced labels, in any order, and a single label: every example at 1 / steps.
    assert label_rates(np.array([1, 0, 0, 1, 1, 0]), 2.0) == pytest.approx(np.full(6, 1 / 3))
    assert label_rates(np.full(8, 7), 2.0) == pytest.approx(np.full(8, 1 / 4))
    # 2 positives of 100 in 2 steps: 25 expected per label, so positives join every batch.
    rates = label_rates(np.r_[np.ones(2, int), np.zeros(98, int)], 50.0)
    assert rates[:2] == pytest.approx([1.0, 1.0]) and rates[2] == pytest.approx(25 / 98)


def test_bad_rate_inputs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        label_rates(np.array([], int), 3)
    with pytest.raises(ValueError, match="the expected batch must be > 0, got 0"):
        label_rates(labels(), 0)
    with pytest.raises(ValueError, match=r"every rate must be in \(0, 1\]"):
        LabelPoissonSampler(np.array([0.5, 0.0]), steps=2, generator=torch.Generator())
    # the periodic sampler accounts a segment at one rate: the largest of its members'
    with pytest.raises(ConfigError, match="'all' needs one rate per member, the largest being"):
        PoissonPeriodicSampler(
            {"all": [0, 1]}, ["all"], {"all": 0.5}, 0, example_rates={"all": np.array([0.2, 0.3])}
        )


# --------------------------------------------------------------------------- sampler
def test_sampler_draws_each_example_at_its_rate_and_repeats_with_its_seed():
    # Prepare
    rates = label_rates(labels(), 6.0)
    sampler = LabelPoissonSampler(rates, steps=4000, generator=torch.Generator().manual_seed(5))
    # Execute
    batches = list(sampler)
    again = list(LabelPoissonSampler(rates, steps=20, generator=torch.Generator().manual_seed(5)))
    # Assert: steps, counter, and the accountant's figures.
    assert len(sampler) == len(batches) == sampler.drawn == 4000
    assert sampler.sample_rate == pytest.approx(0.5)
    assert sampler.expected_batch_size == pytest.approx(6.0)
    assert again == batches[:20]
    # each label's draws are Binomial(steps x count, rate): 99.9% intervals hold the rate
    drawn = np.zeros(N_POS + N_NEG, int)
    for b in batches:
        drawn[b] += 1
    for part, rate in ((slice(0, N_POS), 0.5), (slice(N_POS, None), 3 / 54)):
        k, n = int(drawn[part].sum()), 4000 * len(drawn[part])
        low, high = binomtest(k, n).proportion_ci(confidence_level=0.999)
        assert low <= rate <= high
    # batch sizes are sums of independent Bernoullis: mean 6, variance sum q (1 - q)
    sizes = np.array([len(b) for b in batches])
    var = float((rates * (1 - rates)).sum())
    assert abs(sizes.mean() - 6.0) < 4 * math.sqrt(var / len(sizes))
    assert sizes.var() == pytest.approx(var, rel=0.15)


# --------------------------------------------------------------------------- DP session
@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_session_accounts_every_step_at_the_largest_rate(mode):
    # Prepare: fixed noise, one epoch of 10 steps, the labels of the dataset.
    acc = CentreAccountant("rdp", centre="A")
    session = DPSession(
        budget(), acc, planned_steps=10, phase="p", centre="A", seed=3, grad_sample_mode=mode
    )
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(dataset(), batch_size=BATCH)
    # Execute
    model, opt, poisson = session.attach(model, opt, loader, labels=labels())
    steps = 0
    for x, y in poisson:
        if len(y):
            opt.zero_grad(set_to_none=True)
            session.backward(nn.functional.cross_entropy(model(x), y))
            opt.step()
            steps += 1
    eps = session.after_training(steps)
    # Assert: 10 steps at rate 0.5 (not 1/10), Opacus averaging by the expected batch of 6.
    assert session.sample_rate == pytest.approx(0.5)
    assert opt.expected_batch_size == pytest.approx(6.0)
    assert acc.history == [[1.0, pytest.approx(0.5), 10]]
    assert eps == pytest.approx(epsilon_of([[1.0, 0.5, 10]], 1e-5))
    assert eps > 2 * epsilon_of([[1.0, 0.1, 10]], 1e-5)  # the price of the balanced batches


def test_a_target_epsilon_is_planned_and_spent_at_the_largest_rate():
    # Prepare: target epsilon 3 for one epoch; the budget check runs at the rate attach uses.
    acc = CentreAccountant("rdp", centre="A")
    session = DPSession(
        budget(target_epsilon=3.0, noise_multiplier=None),
        acc,
        planned_steps=10,
        phase="p",
        centre="A",
        seed=0,
    )
    projected = session.check_budget(10, sample_rate=float(label_rates(labels(), 6.0).max()))
    plan = dict(acc.plans["p"])
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # Execute
    session.attach(model, opt, DataLoader(dataset(), batch_size=BATCH), labels=labels())
    for _ in session._sampler:
        pass
    eps = session.after_training(0)
    # Assert: the noise planned by the check is the one used; the target is spent, not passed.
    assert plan["sample_rate"] == pytest.approx(0.5) and acc.plans["p"] == plan
    assert session.noise_multiplier == plan["noise_multiplier"]
    assert eps == pytest.approx(projected) and eps == pytest.approx(3.0, rel=0.02)


def test_labels_that_do_not_match_the_dataset_are_refused():
    session = DPSession(
        budget(), CentreAccountant(), planned_steps=10, phase="p", centre="A", seed=0
    )
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(Exception, match="centre 'A': 59 labels for a dataset of 60 examples"):
        session.attach(model, opt, DataLoader(dataset(), batch_size=BATCH), labels=labels()[1:])


# --------------------------------------------------------------------------- training
class Recording(Dataset):
    """A labelled dataset that records every index the loader fetches."""

    def __init__(self) -> None:
        self.inner, self.fetched = dataset(), []

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        self.fetched.append(int(i))
        return self.inner[i]


@pytest.mark.parametrize(
    ("sampler", "low", "high"), [("balanced_labels", 0.4, 0.6), ("random", 0.0, 0.2)]
)
def test_dp_training_keeps_the_recipes_label_balance(sampler, low, high):
    # Prepare: 10% positives, 20 epochs of 10 DP steps.
    params = SimpleNamespace(
        optimizer="sgd",
        lr=0.05,
        momentum=0.0,
        weight_decay=0.0,
        epochs=20,
        batch_size=BATCH,
        steps_per_epoch=None,
        sampler=sampler,
        augment=False,
    )
    data = Recording()
    acc = CentreAccountant("rdp", centre="A")
    session = DPSession(budget(), acc, planned_steps=200, phase="p", centre="A", seed=0)
    # Execute
    result = train_classifier(
        tiny_cnn(), data, labels(), ["s"] * len(data), params=params, seed=0, privacy=session
    )
    # Assert: balanced_labels draws about as many positives as negatives (random: about 10%),
    # and the ledger holds the rate each sampler is accounted at.
    positives = float(np.mean(labels()[data.fetched]))
    assert low < positives < high
    rate = 0.5 if sampler == "balanced_labels" else 0.1
    assert acc.history == [[1.0, pytest.approx(rate), 200]]
    assert result.epsilon == pytest.approx(epsilon_of([[1.0, rate, 200]], 1e-5))
