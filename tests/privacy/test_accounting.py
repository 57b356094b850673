"""Tests for fedmammo.privacy.accounting: one composed budget, checked against dp-accounting."""

from __future__ import annotations

import json

import pytest
from helpers.dp_reference import independent_epsilon

from fedmammo.config import PrivacySpec
from fedmammo.errors import ConfigError
from fedmammo.privacy.accounting import (
    BudgetExceeded,
    CentreAccountant,
    PrivacyBudget,
    default_delta,
    epsilon_of,
    plan_noise,
)


def test_recorded_history_matches_dp_accounting_within_2pct():
    # Prepare: two phases with different noise and sampling rates.
    acc = CentreAccountant("rdp", centre="B")
    acc.record("gan", 1.1, 0.01, 600)
    acc.record("fedavg", 0.9, 0.05, 200)
    acc.record("fedavg", 0.9, 0.05, 100)
    # Execute
    eps = acc.epsilon(1e-5)
    # Assert: one composed budget, same as an independent accountant on the recorded history.
    assert acc.history == [[1.1, 0.01, 600], [0.9, 0.05, 300]]
    ref = independent_epsilon(acc.history, 1e-5)
    assert eps == pytest.approx(ref, rel=0.02)
    assert acc.phases == {"gan": [[1.1, 0.01, 600]], "fedavg": [[0.9, 0.05, 300]]}
    assert acc.phase_epsilon("gan", 1e-5) < eps and acc.phase_epsilon("fedavg", 1e-5) < eps


def test_state_round_trip_composes_rounds_into_one_budget():
    # Prepare: 5 rounds of 40 steps, state through JSON between rounds.
    sigma, q, delta = 1.0, 0.05, 1e-5
    state = CentreAccountant("rdp", centre="A").to_state()
    per_round = []
    # Execute
    for _ in range(5):
        acc = CentreAccountant.from_state(json.loads(json.dumps(state)))
        acc.record("fedavg", sigma, q, 40)
        per_round.append(acc.epsilon(delta))
        state = acc.to_state()
    fresh = CentreAccountant("rdp")
    fresh.record("fedavg", sigma, q, 40)
    single_run = epsilon_of([[sigma, q, 200]], delta)
    # Assert: grows every round, equals a single 200-step run, far above a fresh per-round one.
    assert all(b > a for a, b in zip(per_round, per_round[1:]))
    assert per_round[-1] == pytest.approx(single_run, rel=1e-9)
    assert per_round[-1] > 1.8 * fresh.epsilon(delta)
    assert state["history"] == [[sigma, q, 200]]


def test_plan_noise_hits_target_once_for_whole_run():
    # Prepare
    target, delta, q, steps = 3.0, 1e-5, 0.02, 500
    # Execute
    sigma = plan_noise(target, delta, q, steps)
    # Assert: the planned run ends just below the target, per dp-accounting too.
    eps = independent_epsilon([[sigma, q, steps]], delta)
    assert target * 0.99 - 0.01 <= eps <= target * 1.01


def test_plan_noise_with_prior_history_uses_what_remains():
    # Prepare: half the budget already spent by an earlier phase.
    prior = [[1.5, 0.02, 400]]
    spent = epsilon_of(prior, 1e-5)
    # Execute
    sigma = plan_noise(2 * spent, 1e-5, 0.05, 100, prior_history=prior)
    # Assert
    total = epsilon_of([*prior, [sigma, 0.05, 100]], 1e-5)
    assert total == pytest.approx(2 * spent, abs=0.02)


def test_would_exceed_simulates_on_a_copy():
    # Prepare
    acc = CentreAccountant("rdp", centre="C")
    acc.record("fedavg", 1.0, 0.05, 100)
    before = acc.to_state()
    eps_now = acc.epsilon(1e-5)
    # Execute / Assert
    assert acc.would_exceed(1.0, 0.05, 1000, target_epsilon=eps_now * 1.2, delta=1e-5)
    assert not acc.would_exceed(1.0, 0.05, 1, target_epsilon=eps_now * 1.2, delta=1e-5)
    assert acc.to_state() == before


def test_budget_exceeded_message_names_centre_spent_requested_target():
    err = BudgetExceeded(centre="B", spent=2.5, requested=4.1, target=3.0, delta=1e-5, phase="gan")
    assert str(err).startswith(
        "centre 'B' refuses the requested work in phase gan: epsilon spent so far 2.5; the "
        "requested steps would bring it to 4.1 > target 3 (delta 1e-05)."
    )
    assert err.requested == 4.1 and err.target == 3.0


def test_prv_accountant_state_round_trip():
    acc = CentreAccountant("prv", centre="A")
    assert acc.epsilon(1e-5) == 0.0
    acc.record("p", 1.1, 0.01, 1000)
    back = CentreAccountant.from_state(json.loads(json.dumps(acc.to_state())))
    assert back.mechanism == "prv"
    assert back.epsilon(1e-5) == pytest.approx(acc.epsilon(1e-5))
    assert 0.5 < back.epsilon(1e-5) < epsilon_of([[1.1, 0.01, 1000]], 1e-5, "rdp")


def test_budget_from_spec_defaults_delta_below_one_over_n():
    # Prepare
    spec = PrivacySpec(target_epsilon=4.0, max_grad_norm=0.5, accountant="prv")
    # Execute
    budget = PrivacyBudget.from_spec(spec, n_examples=50_000)
    # Assert: min(1e-5, 1/(10 n))
    assert budget.delta == pytest.approx(2e-6) == default_delta(50_000)
    assert budget.delta < 1 / 50_000
    assert (budget.target_epsilon, budget.max_grad_norm, budget.accountant) == (4.0, 0.5, "prv")
    assert PrivacyBudget.from_spec(spec, n_examples=100).delta == 1e-5


def test_budget_from_spec_rejects_disabled_and_large_delta():
    with pytest.raises(ConfigError, match="target_epsilon or privacy.noise_multiplier"):
        PrivacyBudget.from_spec(PrivacySpec(), n_examples=100)
    with pytest.raises(ConfigError, match="not below 1/n"):
        PrivacyBudget.from_spec(PrivacySpec(noise_multiplier=1.0, delta=0.02), n_examples=100)


def test_segment_histories_give_max_over_segments():
    # Prepare: shared steps plus periodic steps on two segments.
    acc = CentreAccountant("rdp")
    acc.record("gan", 1.0, 0.02, 100)
    acc.record("fedavg", 1.0, 0.1, 60, segment="GE")
    acc.record("fedavg", 1.0, 0.05, 30, segment="Hologic")
    # Execute
    eps = acc.epsilon(1e-5)
    per = acc.segment_epsilons(1e-5)
    # Assert
    assert eps == max(per.values())
    assert per["GE"] == pytest.approx(
        independent_epsilon([[1.0, 0.02, 100], [1.0, 0.1, 60]], 1e-5), rel=0.02
    )
    back = CentreAccountant.from_state(json.loads(json.dumps(acc.to_state())))
    assert back.epsilon(1e-5) == pytest.approx(eps)
