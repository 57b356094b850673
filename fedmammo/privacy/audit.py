"""Membership-inference audits, run inside the centre that owns the data (only scores leave).

Every attack turns per-example scores (higher = "member") into an :class:`AuditResult`:
the attack's ROC AUC and its TPR at 1% FPR, to report next to the bound that epsilon implies
(``TPR <= e^eps * FPR + delta``), and the epsilon the attack proves at 95% confidence
(:meth:`AuditResult.epsilon_lower_bound`). With fewer than 100 non-members the 1%-FPR point
is an FPR of 0 observed on few examples, so its TPR may exceed the 1% bound without
contradicting DP; the lower bound accounts for that.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from fedmammo.errors import DataError
from fedmammo.progress import progress

__all__ = [
    "AuditResult",
    "attack_result",
    "gan_leaks_attack",
    "lira_offline_scores",
    "logan_attack",
    "logit_scaled_confidence",
    "loss_threshold_attack",
    "run_lira_offline",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditResult:
    """A membership-inference attack's success on members vs non-members."""

    attack_auc: float
    tpr_at_1pct_fpr: float
    n_members: int
    n_nonmembers: int
    attack: str = ""
    #: The FPR of the operating point ``tpr_at_1pct_fpr`` reports: the lowest FPR (<= 1%) at
    #: which the scores reach that TPR (always 0 with fewer than 100 non-members).
    fpr_reached: float = 0.0

    @staticmethod
    def epsilon_bound_tpr(epsilon: float, delta: float, fpr: float = 0.01) -> float:
        """Largest TPR an (epsilon, delta)-DP model allows at ``fpr``: min(1, e^eps fpr + delta)."""
        if epsilon >= math.log(1.0 / fpr):  # e^eps * fpr >= 1 (and no overflow at eps 1000)
            return 1.0
        return float(min(1.0, math.exp(epsilon) * fpr + delta))

    def epsilon_lower_bound(self, delta: float = 0.0, confidence: float = 0.95) -> float:
        """The epsilon this attack proves at ``confidence``: ``log((TPR_low - delta) / FPR_high)``.

        An (epsilon, delta)-DP model lets no test exceed ``TPR <= e^eps FPR + delta``, so the
        attack's operating point (``tpr_at_1pct_fpr`` at ``fpr_reached``) bounds epsilon from
        below once sampling error is allowed for (Jagielski et al. 2020): TPR_low and FPR_high
        are the Clopper-Pearson bounds (scipy's exact binomial interval at ``confidence``, each
        side one-sided at (1 + confidence) / 2, so both hold together at ``confidence``). 0 when
        the attack proves nothing. The threshold is chosen on the same scores, which favours
        the attacker: a bound above the epsilon spent is a reason to check the training.
        """
        from scipy.stats import binomtest

        tp = round(self.tpr_at_1pct_fpr * self.n_members)
        fp = round(self.fpr_reached * self.n_nonmembers)
        tpr_low = binomtest(tp, self.n_members).proportion_ci(confidence, "exact").low
        fpr_high = binomtest(fp, self.n_nonmembers).proportion_ci(confidence, "exact").high
        if tpr_low <= delta:
            return 0.0
        return max(0.0, math.log((tpr_low - delta) / fpr_high))

    @classmethod
    def provable_epsilon(
        cls, n_members: int, n_nonmembers: int, delta: float = 0.0, confidence: float = 0.95
    ) -> float:
        """The most any attack could prove on these counts (every member caught at FPR 0):
        an audit of fewer examples cannot check a larger epsilon."""
        perfect = cls(
            attack_auc=1.0,
            tpr_at_1pct_fpr=1.0,
            n_members=int(n_members),
            n_nonmembers=int(n_nonmembers),
            fpr_reached=0.0,
        )
        return perfect.epsilon_lower_bound(delta, confidence)

    def to_dict(self, *, epsilon: float | None = None, delta: float | None = None) -> dict:
        """JSON-safe dict with ``epsilon_lower_95``; with epsilon and delta (the ledger's spend)
        also those and the TPR bound at 1% FPR (the lower bound then allows for delta)."""
        out: dict[str, Any] = asdict(self)
        if epsilon is not None and delta is not None:
            out.update(epsilon=epsilon, delta=delta)
            out["tpr_bound_at_1pct_fpr"] = self.epsilon_bound_tpr(epsilon, delta)
        out["epsilon_lower_95"] = self.epsilon_lower_bound(delta or 0.0)
        return out


def _vector(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise DataError(f"membership audit: {name} is empty; need at least one example")
    if not np.all(np.isfinite(arr)):
        raise DataError(
            f"membership audit: {name} has {int((~np.isfinite(arr)).sum())} "
            "non-finite values; check the model's outputs"
        )
    return arr


def attack_result(member_scores: Any, nonmember_scores: Any, *, attack: str = "") -> AuditResult:
    """AUC and TPR at 1% FPR of scores where higher means "member"."""
    from sklearn.metrics import roc_auc_score, roc_curve

    m = _vector("member scores", member_scores)
    n = _vector("non-member scores", nonmember_scores)
    y = np.r_[np.ones(m.size), np.zeros(n.size)]
    s = np.r_[m, n]
    fpr, tpr, _ = roc_curve(y, s)
    # The best TPR at FPR <= 1% (the curve starts at (0, 0)), at the lowest FPR that reaches it.
    point = int(np.argmax(tpr >= tpr[fpr <= 0.01].max()))
    return AuditResult(
        attack_auc=float(roc_auc_score(y, s)),
        tpr_at_1pct_fpr=float(tpr[point]),
        n_members=int(m.size),
        n_nonmembers=int(n.size),
        attack=attack,
        fpr_reached=float(fpr[point]),
    )


def loss_threshold_attack(member_losses: Any, nonmember_losses: Any) -> AuditResult:
    """Yeom et al. (2018): score = -loss; members have lower loss on an overfit model."""
    m = _vector("member losses", member_losses)
    n = _vector("non-member losses", nonmember_losses)
    return attack_result(-m, -n, attack="loss_threshold")


def logit_scaled_confidence(logits: Any, labels: Any) -> np.ndarray:
    """Stable logit of the true-class probability: ``z_y - logsumexp_{j != y} z_j``."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if z.dim() == 1:  # one logit per example (binary): classes are [0, z]
        z = torch.stack([torch.zeros_like(z), z], dim=1)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
    if z.shape[0] != y.shape[0]:
        raise DataError(f"logit_scaled_confidence: {z.shape[0]} rows of logits, {len(y)} labels")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= z.shape[1]):
        raise DataError(
            f"logit_scaled_confidence: labels up to {int(y.max())} but only {z.shape[1]} logit "
            "columns; return a column for every class (a shadow model trained on half the "
            "data may have missed a class: fill its column with a large negative logit)"
        )
    true = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf"))
    return (true - torch.logsumexp(others, dim=1)).numpy()


def lira_offline_scores(
    target_conf: Any, shadow_out_conf: Any, *, scaled: bool = False, min_std: float = 1e-3
) -> np.ndarray:
    """Offline LiRA (Carlini et al. 2022): one-sided Gaussian test against OUT shadows.

    ``target_conf`` (n,) is the target model's confidence on each candidate's true label and
    ``shadow_out_conf`` (n, k) the same for k shadow models not trained on it; probabilities
    are logit-scaled first unless ``scaled``. The score ``-log P(OUT >= observed)`` is higher
    for likely members.
    """
    t = np.asarray(target_conf, dtype=np.float64).reshape(-1)
    out = np.asarray(shadow_out_conf, dtype=np.float64)
    if out.ndim != 2 or out.shape[0] != t.size or out.shape[1] < 1:
        raise DataError(
            f"lira_offline_scores: shadow_out_conf must be (n, k) with n={t.size}; got {out.shape}"
        )
    if not scaled:
        t, out = _logit(t), _logit(out)
    finite = np.isfinite(out)
    k = finite.sum(axis=1)
    if np.any(k < 1):
        raise DataError(f"lira_offline_scores: {int((k < 1).sum())} candidates have no OUT shadow")
    mu = np.where(finite, out, 0.0).sum(axis=1) / k
    var = np.where(finite, (out - mu[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(k - 1, 1)
    std = np.maximum(np.sqrt(var), min_std)
    from scipy.stats import norm

    return -norm.logsf(t, loc=mu, scale=std)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return np.log(p) - np.log1p(-p)


def run_lira_offline(
    train_fn: Callable[[np.ndarray, np.ndarray, int], Any],
    predict_fn: Callable[[Any, np.ndarray], np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    members_mask: np.ndarray,
    n_shadows: int,
    seed: int,
    *,
    target_model: Any = None,
) -> AuditResult:
    """Offline LiRA on candidates ``X, y``: members are ``members_mask``, the rest held out.

    ``train_fn(X, y, seed) -> model`` and ``predict_fn(model, X) -> logits`` (n, classes) or
    (n,) for binary. Shadows train on random halves of the candidates such that every
    candidate is left out of exactly half of them; their outputs give each candidate's OUT
    distribution. The target is ``target_model`` or ``train_fn`` on the members.
    """
    X, y = np.asarray(X), np.asarray(y)
    members = np.asarray(members_mask, dtype=bool).reshape(-1)
    if len(X) != len(y) or len(y) != len(members):
        raise DataError(
            f"run_lira_offline: X, y, members_mask lengths {len(X)}, {len(y)}, "
            f"{len(members)} differ"
        )
    if n_shadows < 2 or n_shadows % 2:
        raise DataError(f"run_lira_offline: n_shadows must be even and >= 2, got {n_shadows}")
    rng = np.random.default_rng(seed)
    if target_model is None:
        target_model = train_fn(X[members], y[members], int(rng.integers(2**31)))
    target = logit_scaled_confidence(predict_fn(target_model, X), y)
    # keep[k, i]: candidate i trains shadow k; each column has exactly n_shadows/2 True.
    keep = rng.random((n_shadows, len(X))).argsort(axis=0) < n_shadows // 2
    out = np.full((len(X), n_shadows), np.nan)
    for k in progress(range(n_shadows), "LiRA shadow models"):
        shadow = train_fn(X[keep[k]], y[keep[k]], int(rng.integers(2**31)))
        conf = logit_scaled_confidence(predict_fn(shadow, X), y)
        out[~keep[k], k] = conf[~keep[k]]
        logger.debug("LiRA shadow %d/%d trained on %d candidates", k + 1, n_shadows, keep[k].sum())
    scores = lira_offline_scores(target, out, scaled=True)
    return attack_result(scores[members], scores[~members], attack="lira_offline")


def _flat(name: str, images: Any) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if t.shape[0] == 0:
        raise DataError(f"GAN-Leaks: {name} is empty")
    return t.reshape(t.shape[0], -1)


def _min_distances(queries: torch.Tensor, synthetic: torch.Tensor, chunk: int = 512) -> np.ndarray:
    out = [
        torch.cdist(queries[i : i + chunk], synthetic).min(dim=1).values
        for i in range(0, len(queries), chunk)
    ]
    return torch.cat(out).numpy()


def gan_leaks_attack(
    member_images: Any, nonmember_images: Any, synthetic_samples: Any
) -> AuditResult:
    """GAN-Leaks, black box (Chen et al. 2020): score = -L2 distance to the nearest sample."""
    members = _flat("member images", member_images)
    nonmembers = _flat("non-member images", nonmember_images)
    synthetic = _flat("synthetic samples", synthetic_samples)
    if not members.shape[1] == nonmembers.shape[1] == synthetic.shape[1]:
        raise DataError(
            f"GAN-Leaks: image sizes differ (members {tuple(members.shape[1:])}, non-members "
            f"{tuple(nonmembers.shape[1:])}, synthetic {tuple(synthetic.shape[1:])} values)"
        )
    d_members = _min_distances(members, synthetic)
    d_nonmembers = _min_distances(nonmembers, synthetic)
    return attack_result(-d_members, -d_nonmembers, attack="gan_leaks")


def logan_attack(
    discriminator_scores_members: Any, discriminator_scores_nonmembers: Any
) -> AuditResult:
    """LOGAN, white box (Hayes et al. 2019): score = D(x); members look "more real"."""
    return attack_result(
        discriminator_scores_members, discriminator_scores_nonmembers, attack="logan"
    )
