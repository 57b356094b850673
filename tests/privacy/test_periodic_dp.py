"""Tests for fedmammo.privacy.periodic: honest periodic sampling under DP."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedmammo.errors import ConfigError
from fedmammo.privacy.accounting import CentreAccountant, PrivacyBudget, epsilon_of
from fedmammo.privacy.engine import DPSession
from fedmammo.privacy.periodic import PoissonPeriodicSampler, periodic_epsilon, periodic_epsilons

SEGMENTS = {
    "GE": list(range(0, 40)),
    "Hologic": list(range(40, 60)),
    "Siemens": list(range(60, 68)),
}
PATTERN = ["GE", "Hologic", "GE", "Siemens", "GE", "Hologic"]
RATES = {"GE": 0.05, "Hologic": 0.1, "Siemens": 0.25}


def test_each_step_samples_only_the_named_segment_and_counts_match_the_pattern():
    # Prepare
    sampler = PoissonPeriodicSampler(SEGMENTS, PATTERN, RATES, seed=0, steps=600)
    # Execute
    batches = list(sampler)
    # Assert: membership, per-segment step counts, Poisson rates.
    seen = Counter()
    hits = Counter()
    for t, batch in enumerate(batches):
        seg = PATTERN[t % len(PATTERN)]
        assert set(batch) <= set(SEGMENTS[seg])
        seen[seg] += 1
        hits[seg] += len(batch)
    assert dict(seen) == {"GE": 300, "Hologic": 200, "Siemens": 100}
    assert dict(sampler.drawn) == dict(seen) == sampler.segment_counts(600, start=0)
    for seg, n in seen.items():
        rate = hits[seg] / (n * len(SEGMENTS[seg]))
        assert rate == pytest.approx(RATES[seg], rel=0.15)
    assert any(len(b) == 0 for b in batches)  # empty Poisson batches are kept as steps


def test_sampler_is_reproducible_and_continues_the_pattern():
    a = PoissonPeriodicSampler(SEGMENTS, PATTERN, RATES, seed=4, steps=5)
    b = PoissonPeriodicSampler(SEGMENTS, PATTERN, RATES, seed=4, steps=5)
    assert list(a) == list(b)
    second = list(a)
    assert a.position == 10 and set(second[0]) <= set(SEGMENTS[PATTERN[5]])


def test_integer_pattern_and_default_steps():
    sampler = PoissonPeriodicSampler(SEGMENTS, [0, 1, 0, 2], 0.25, seed=0)
    assert sampler.pattern_ == ["GE", "Hologic", "GE", "Siemens"]
    # one expected pass of every segment: Hologic and Siemens need 4 of their steps
    assert len(sampler) == 16


def test_unknown_segment_in_pattern_is_a_config_error():
    with pytest.raises(ConfigError, match="'Fuji' names no segment"):
        PoissonPeriodicSampler(SEGMENTS, ["GE", "Fuji"], 0.1, seed=0)


def test_periodic_epsilon_is_the_max_of_per_segment_rdp_accountants():
    # Prepare: per-segment histories from a run of the pattern.
    sampler = PoissonPeriodicSampler(SEGMENTS, PATTERN, RATES, seed=0, steps=600)
    counts = sampler.segment_counts(600)
    sigma, delta = 1.2, 1e-5
    histories = {s: [[sigma, RATES[s], n]] for s, n in counts.items()}
    # Execute
    per = periodic_epsilons(histories, delta)
    eps = periodic_epsilon(histories, delta)
    # Assert: each segment counts only its own steps; the run reports the maximum.
    for s, n in counts.items():
        assert per[s] == pytest.approx(epsilon_of([[sigma, RATES[s], n]], delta))
    assert eps == max(per.values())
    assert eps < epsilon_of([[sigma, max(RATES.values()), 600]], delta)
    dp_accounting = pytest.importorskip("dp_accounting")
    for s, n in counts.items():
        ref = dp_accounting.rdp.RdpAccountant()
        gauss = dp_accounting.GaussianDpEvent(sigma)
        ref.compose(dp_accounting.PoissonSampledDpEvent(RATES[s], gauss), n)
        assert per[s] == pytest.approx(ref.get_epsilon(delta), rel=0.02)


def test_session_accounts_periodic_steps_per_segment():
    # Prepare: a linear model on 68 feature vectors, three segments.
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(68, 5, generator=g), torch.randint(0, 2, (68,), generator=g))
    sampler = PoissonPeriodicSampler(SEGMENTS, PATTERN, RATES, seed=1, steps=12)
    budget = PrivacyBudget(target_epsilon=None, noise_multiplier=1.0, delta=1e-5)
    acc = CentreAccountant("rdp", centre="A")
    session = DPSession(budget, acc, planned_steps=12, phase="fedavg", centre="A", seed=0)
    model = nn.Linear(5, 2)
    before = model.weight.detach().clone()
    # Execute
    model, opt, loader = session.attach_periodic(
        model, torch.optim.SGD(model.parameters(), lr=0.5), data, sampler
    )
    steps = 0
    for x, y in loader:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        steps += 1
    eps = session.after_training(steps)
    # Assert: per-segment histories, max over segments, nothing in the shared history.
    assert steps == 12 and not torch.equal(model.weight, before)
    assert acc.history == []
    assert acc.segment_history == {
        "GE": [(1.0, 0.05, 6)],
        "Hologic": [(1.0, 0.1, 4)],
        "Siemens": [(1.0, 0.25, 2)],
    }
    expected = periodic_epsilon({s: [list(h[0])] for s, h in acc.segment_history.items()}, 1e-5)
    assert eps == pytest.approx(expected)
    assert np.isfinite(eps) and eps > 0


def test_session_plans_noise_for_the_worst_segment():
    # Prepare
    sampler = PoissonPeriodicSampler(SEGMENTS, PATTERN, RATES, seed=1, steps=60)
    budget = PrivacyBudget(target_epsilon=5.0, noise_multiplier=None, delta=1e-5)
    session = DPSession(budget, CentreAccountant(), planned_steps=60, phase="p", centre="A", seed=0)
    model = nn.Linear(5, 2)
    data = TensorDataset(torch.randn(68, 5), torch.randint(0, 2, (68,)))
    # Execute
    session.attach_periodic(model, torch.optim.SGD(model.parameters(), lr=0.1), data, sampler)
    projected = session.check_budget(60)
    # Assert: the planned run's worst segment ends at the target.
    assert projected == pytest.approx(5.0, abs=0.05)
    assert projected <= 5.0
