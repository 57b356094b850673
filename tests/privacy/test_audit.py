"""Tests for fedmammo.privacy.audit: attacks separate memorised members, not DP-trained ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmammo.errors import DataError
from fedmammo.privacy.accounting import CentreAccountant, PrivacyBudget
from fedmammo.privacy.audit import (
    AuditResult,
    attack_result,
    gan_leaks_attack,
    lira_offline_scores,
    logan_attack,
    logit_scaled_confidence,
    loss_threshold_attack,
    run_lira_offline,
)
from fedmammo.privacy.engine import DPSession

D_IN, N, CLASSES = 16, 64, 10


def random_label_data(seed: int, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D_IN, 64), nn.ReLU(), nn.Linear(64, CLASSES))


@torch.no_grad()
def losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    return nn.functional.cross_entropy(model(x), y, reduction="none").numpy()


def test_loss_threshold_separates_a_memorising_model():
    # Prepare: an MLP memorises 64 random labels out of 10 classes.
    (xm, ym), (xn, yn) = random_label_data(0), random_label_data(1, 256)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xm), ym).backward()
        opt.step()
    # Execute
    result = loss_threshold_attack(losses(model, xm, ym), losses(model, xn, yn))
    # Assert
    assert result.attack_auc > 0.8
    assert (result.n_members, result.n_nonmembers, result.attack) == (64, 256, "loss_threshold")


def test_loss_threshold_falls_to_chance_under_strong_dp():
    # Prepare: same model and data, DP-SGD with noise multiplier 5.
    (xm, ym), (xn, yn) = random_label_data(0), random_label_data(1, 256)
    model = mlp()
    budget = PrivacyBudget(target_epsilon=None, noise_multiplier=5.0, delta=1e-3, max_grad_norm=1.0)
    session = DPSession(
        budget, CentreAccountant(), planned_steps=80, phase="fedavg", centre="A", seed=0
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model, opt, loader = session.attach(model, opt, DataLoader(TensorDataset(xm, ym), batch_size=8))
    steps = 0
    for _ in range(10):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            steps += 1
    eps = session.after_training(steps)
    # Execute
    result = loss_threshold_attack(losses(model, xm, ym), losses(model, xn, yn))
    # Assert: near chance, and within what epsilon allows.
    assert eps < 1.0
    assert result.attack_auc < 0.65
    assert result.tpr_at_1pct_fpr <= AuditResult.epsilon_bound_tpr(eps, 1e-3) + 0.05


def test_epsilon_bound_tpr():
    assert AuditResult.epsilon_bound_tpr(1.0, 1e-5) == pytest.approx(math.e * 0.01 + 1e-5)
    assert AuditResult.epsilon_bound_tpr(10.0, 1e-5) == 1.0
    assert AuditResult.epsilon_bound_tpr(math.inf, 1e-5) == 1.0
    assert AuditResult.epsilon_bound_tpr(1000.0, 1e-5) == 1.0  # e^1000 overflowed a float
    assert AuditResult.epsilon_bound_tpr(math.log(100) - 1e-9, 0.0) == pytest.approx(1.0)
    r = attack_result([1.0], [0.0])
    assert r.to_dict(epsilon=0.0, delta=0.0)["tpr_bound_at_1pct_fpr"] == pytest.approx(0.01)


def test_attack_result_auc_and_tpr_at_low_fpr():
    # Prepare: 200 non-members; 1% FPR allows the top 2 non-member scores above threshold.
    nonmembers = np.arange(200, dtype=float)
    members = np.r_[np.full(30, 500.0), np.full(70, 100.5)]
    # Execute
    r = attack_result(members, nonmembers)
    # Assert
    assert r.tpr_at_1pct_fpr == pytest.approx(0.3)
    expected_auc = (30 * 200 + 70 * 101) / (100 * 200)
    assert r.attack_auc == pytest.approx(expected_auc)


def test_fpr_reached_is_the_operating_points_fpr():
    # 200 non-members: 1% FPR is 2 of them, above 30 of the members; 28 non-members: the 1%
    # point is an FPR of 0.
    r = attack_result(np.r_[np.full(20, 500.0), np.full(30, 197.5), np.zeros(50)], np.arange(200.0))
    assert (r.tpr_at_1pct_fpr, r.fpr_reached) == (pytest.approx(0.5), pytest.approx(0.01))
    r = attack_result(np.r_[np.full(8, 99.0), np.zeros(104)], np.arange(28.0))
    assert (r.tpr_at_1pct_fpr, r.fpr_reached) == (pytest.approx(8 / 112), 0.0)
    # A flat stretch of the curve ending in ties past 1%: the lowest FPR with that TPR.
    r = attack_result([10.0, 10.0, 2.0, 2.0], [5.0, 2.0, 2.0, 2.0, 2.0] + [0.0] * 295)
    assert (r.tpr_at_1pct_fpr, r.fpr_reached) == (pytest.approx(0.5), 0.0)


def test_epsilon_lower_bound_of_a_perfect_attack_is_the_clopper_pearson_limit():
    # Prepare: n members all above n non-members; the exact bounds at 97.5% one-sided.
    n = 1000
    r = attack_result(np.ones(n), np.zeros(n))
    tpr_low, fpr_high = 0.025 ** (1 / n), 1 - 0.025 ** (1 / n)
    # Execute / Assert: log(TPR_low / FPR_high), and delta taken off the TPR.
    assert r.epsilon_lower_bound() == pytest.approx(math.log(tpr_low / fpr_high), rel=1e-9)
    assert r.epsilon_lower_bound(delta=0.5) == pytest.approx(
        math.log((tpr_low - 0.5) / fpr_high), rel=1e-9
    )
    assert r.to_dict()["epsilon_lower_95"] == pytest.approx(5.600, abs=1e-3)
    # ... which is what these counts can prove at most; 166 members and 50 non-members: 2.6
    assert AuditResult.provable_epsilon(n, n) == pytest.approx(r.epsilon_lower_bound())
    assert AuditResult.provable_epsilon(166, 50) == pytest.approx(
        math.log(0.025 ** (1 / 166) / (1 - 0.025 ** (1 / 50))), rel=1e-9
    )


def test_a_tpr_above_the_1pct_bound_on_few_non_members_proves_nothing():
    # Prepare: a generator audit as measured (C at epsilon 1): 8 of 112 members caught at an
    # FPR of 0 on 28 non-members, above the 1% bound of epsilon 1 (0.027).
    r = attack_result(np.r_[np.full(8, 99.0), np.zeros(104)], np.arange(28.0))
    bound = AuditResult.epsilon_bound_tpr(1.0, 1e-5)
    # Execute
    scores = r.to_dict(epsilon=1.0, delta=1e-5)
    # Assert: above the bound, yet the upper FPR on 28 examples (12%) leaves epsilon unproved.
    assert r.tpr_at_1pct_fpr > bound
    assert scores["epsilon_lower_95"] == 0.0
    assert r.epsilon_lower_bound() == 0.0
    assert attack_result([0.0], [1.0]).epsilon_lower_bound() == 0.0  # no member caught


def test_epsilon_lower_bound_of_the_laplace_mechanism():
    # Prepare: a member's score is 1 + Laplace(1 / eps), a non-member's 0 + Laplace(1 / eps):
    # the mechanism is eps-DP, and beyond score 1 every threshold's TPR / FPR is exactly e^eps.
    eps, rng = 2.0, np.random.default_rng(0)
    # Execute: many small audits, and one large one.
    small = [
        attack_result(
            1.0 + rng.laplace(0, 1 / eps, 1000), rng.laplace(0, 1 / eps, 1000)
        ).epsilon_lower_bound()
        for _ in range(200)
    ]
    large = attack_result(1.0 + rng.laplace(0, 1 / eps, 40_000), rng.laplace(0, 1 / eps, 40_000))
    # Assert: a valid lower bound (at most ~5% of audits above eps, allowing the threshold
    # chosen on the same scores), and a tight one when the audit is large.
    assert np.mean(np.array(small) > eps) <= 0.05
    assert 1.6 < large.epsilon_lower_bound() <= eps


def test_logan_scores_are_d_outputs():
    r = logan_attack([0.9, 0.8, 0.7], [0.1, 0.75, 0.2])
    assert r.attack_auc == pytest.approx(8 / 9) and r.attack == "logan"


def test_bad_scores_are_data_errors():
    with pytest.raises(DataError, match="empty"):
        loss_threshold_attack([], [1.0])
    with pytest.raises(DataError, match="non-finite"):
        logan_attack([np.nan, 1.0], [0.0])


def test_lira_scores_are_a_one_sided_gaussian_test():
    # Prepare
    target = np.array([0.9, 0.5, 0.2])
    shadows = np.array([[0.5, 0.6, 0.4], [0.5, 0.6, 0.4], [0.5, 0.6, 0.4]])
    # Execute
    scores = lira_offline_scores(target, shadows)
    # Assert: logit scaling, Gaussian fit of OUT, score = -log P(OUT >= observed).
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    mu, sd = logit(shadows[0]).mean(), logit(shadows[0]).std(ddof=1)
    assert scores == pytest.approx(-norm.logsf(logit(target), mu, sd))
    assert scores[0] > scores[1] > scores[2]


def test_logit_scaled_confidence_is_stable():
    logits = np.array([[0.0, 50.0], [10.0, -10.0], [1.0, 2.0]])
    conf = logit_scaled_confidence(logits, [1, 0, 0])
    assert conf == pytest.approx([50.0, 20.0, -1.0])
    assert logit_scaled_confidence(np.array([3.0]), [1]) == pytest.approx([3.0])  # binary
    with pytest.raises(DataError, match="every class"):
        logit_scaled_confidence(logits, [2, 0, 0])


LIRA_CLASSES = 5


def sk_train(X, y, seed):
    return LogisticRegression(C=0.1, max_iter=2000, random_state=seed).fit(X, y)


def sk_logits(model, X):
    out = np.full((len(X), LIRA_CLASSES), -1e9)  # a class missing from a shadow's half
    out[:, model.classes_] = model.decision_function(X)
    return out


def test_lira_offline_separates_an_overfit_logistic_model():
    # Prepare: 80 candidates with random labels (5 classes) in 40 dimensions; half members.
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(80, 40)), rng.integers(0, LIRA_CLASSES, 80)
    members = np.zeros(80, dtype=bool)
    members[rng.permutation(80)[:40]] = True
    # Execute
    result = run_lira_offline(sk_train, sk_logits, X, y, members, n_shadows=8, seed=1)
    # Assert
    assert result.attack == "lira_offline" and result.n_members == 40
    assert result.attack_auc > 0.8


def test_lira_offline_is_near_chance_for_a_model_that_never_saw_the_candidates():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(80, 40)), rng.integers(0, LIRA_CLASSES, 80)
    members = np.zeros(80, dtype=bool)
    members[:40] = True
    outsider = sk_train(rng.normal(size=(40, 40)), np.arange(40) % LIRA_CLASSES, 0)
    result = run_lira_offline(sk_train, sk_logits, X, y, members, 8, 3, target_model=outsider)
    assert 0.3 < result.attack_auc < 0.7


def test_gan_leaks_separates_a_copying_generator_not_a_noise_one():
    # Prepare
    g = torch.Generator().manual_seed(0)
    members, nonmembers = (
        torch.rand(40, 1, 16, 16, generator=g),
        torch.rand(40, 1, 16, 16, generator=g),
    )
    copies = members + 0.01 * torch.randn(40, 1, 16, 16, generator=g)
    noise = torch.rand(200, 1, 16, 16, generator=g)
    # Execute
    copying = gan_leaks_attack(members, nonmembers, copies)
    random = gan_leaks_attack(members, nonmembers, noise)
    # Assert
    assert copying.attack_auc > 0.99 and copying.tpr_at_1pct_fpr > 0.9
    assert 0.35 < random.attack_auc < 0.65
    with pytest.raises(DataError, match="image sizes differ"):
        gan_leaks_attack(members, nonmembers, torch.rand(5, 1, 8, 8))
