"""Membership-inference audits of a shared classifier, inside the centre that owns the images.

Handler ``evaluate.audit`` audits a shared classifier: the received model's per-image losses
on the centre's training images (members) and on its validation and test images (non-members,
never trained on) feed the loss-threshold attack (Yeom et al.). Only the attack's AUC, its TPR
at 1% FPR, the two counts and, when the centre trained this arm with DP, the epsilon spent on
the message's ledger and the TPR bound it implies leave the centre. :func:`attack_metrics`
and :func:`need_both` serve the methods' own audit handlers too.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from flwr.app import Context, Message
from torch import nn

from fedmammo.config.recipe import LocalTrainingParams
from fedmammo.errors import DataError
from fedmammo.federation.centre_models import load_model
from fedmammo.federation.centre_runtime import (
    CentreIdentity,
    centre_data,
    device,
    identity_of,
    select_rows,
)
from fedmammo.federation.handlers import handler, reply
from fedmammo.federation.messages import ARRAYS, METRICS, AuditMetrics, EvaluateAudit, LedgerFields
from fedmammo.federation.privacy.ledger import ledger_epsilon, ledger_name
from fedmammo.models import build_model
from fedmammo.privacy.audit import (
    AuditResult,
    loss_threshold_attack,
    run_lira_offline,
)
from fedmammo.seeds import derive_seed
from fedmammo.training.classifier import predict_scores, train_classifier

__all__ = ["attack_metrics", "audit", "example_losses", "need_both"]


def example_losses(p_malignant: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy of a binary classifier from its class-1 probabilities."""
    p = np.clip(np.asarray(p_malignant, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels).astype(bool)
    return -np.log(np.where(y, p, 1.0 - p))


def need_both(kind: str, ident: CentreIdentity, members: int, others: int) -> None:
    if members == 0 or others == 0:
        raise DataError(
            f"{kind} at centre {ident.name!r}: needs labelled training images (members) "
            f"and labelled val/test images (non-members); has {members} and {others}"
        )


def attack_metrics(
    context: Context,
    ident: CentreIdentity,
    m: LedgerFields,
    losses: tuple[np.ndarray, np.ndarray],
    *,
    n_trained: int,
    start: float,
    parent_ledger: str | None = None,
) -> AuditMetrics:
    """The reply's metrics: attack scores, counts and, under DP, the ledger's epsilon bound.

    ``n_trained`` is the number of examples the arm trained on here (it sets the budget's
    delta, as in the training handler). Without a ledger of its own ``parent_ledger`` (the
    ledger the arm continues, ``dp-parent-ledger``) is used.
    """
    result = loss_threshold_attack(*losses)
    spent = ledger_epsilon(context, ident, ledger_name(m), m.prior, n_trained)
    if spent is None and parent_ledger:
        spent = ledger_epsilon(context, ident, str(parent_ledger), None, n_trained)
    eps, delta = spent if spent is not None else (None, None)
    scores = result.to_dict(epsilon=eps, delta=delta)
    return AuditMetrics(
        auc=result.attack_auc,
        tpr_at_1pct_fpr=result.tpr_at_1pct_fpr,
        n_members=result.n_members,
        n_nonmembers=result.n_nonmembers,
        fpr_reached=result.fpr_reached,
        epsilon_lower_95=scores["epsilon_lower_95"],
        epsilon=eps,
        delta=delta,
        tpr_bound_at_1pct_fpr=scores.get("tpr_bound_at_1pct_fpr"),
        compute_seconds=time.perf_counter() - start,
    )


@handler(EvaluateAudit.KIND, consent="audits")
def audit(msg: Message, context: Context) -> Message:
    """Loss-threshold attack on the received classifier: members = this centre's train split
    (restricted to the config's ``segments`` when given), non-members its val and test.

    With ``lira-shadows`` > 0 (even) also offline LiRA (``lira-auc``, ``lira-tpr-at-1pct-fpr``)
    with that many shadow models trained here (see :func:`_lira`)."""
    start = time.perf_counter()
    m = EvaluateAudit.of(msg)
    model = load_model(  # FedBN: this centre's BatchNorm state of the audited round
        m.model,
        msg.content[ARRAYS],
        context,
        local_bn=(m.arm, m.run_seed) if m.batchnorm == "local" else None,
        after_round=m.model_round,
    )
    ident = identity_of(context)
    data = centre_data(ident, m)
    segments = m.segments  # periodic sampling: the arm trained on these segments only
    members = select_rows(data, "train", segments)
    others = np.concatenate([select_rows(data, split, segments) for split in ("val", "test")])
    need_both(EvaluateAudit.KIND, ident, len(members), len(others))
    losses = tuple(
        example_losses(
            predict_scores(model, data.dataset(rows), device=device()), data.labels(rows)
        )
        for rows in (members, others)
    )
    metrics = attack_metrics(context, ident, m, losses, n_trained=len(members), start=start)
    if m.lira_shadows:
        lira = _lira(model, data, members, others, m)
        metrics = dataclasses.replace(
            metrics,
            lira_auc=lira.attack_auc,
            lira_tpr_at_1pct_fpr=lira.tpr_at_1pct_fpr,
            lira_epsilon_lower_95=lira.epsilon_lower_bound(metrics.delta or 0.0),
            compute_seconds=time.perf_counter() - start,
        )
    return reply(msg, context, {METRICS: metrics.to_metrics()})


def _lira(
    target: nn.Module, data, members: np.ndarray, others: np.ndarray, m: EvaluateAudit
) -> AuditResult:
    """Offline LiRA with ``shadows`` models trained here on random halves of the candidates.

    Each shadow trains a fresh ``model`` with the ``lira_train`` recipe (the arm's local
    training stretched over its rounds: an approximation of how the shared model was trained);
    candidates are this centre's members and held-out images.
    """
    rows = np.concatenate([members, others])
    is_member = np.r_[np.ones(len(members), bool), np.zeros(len(others), bool)]
    spec, params = m.model, LocalTrainingParams(**m.lira_train)

    def train_fn(idx: np.ndarray, _y: np.ndarray, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        shadow = build_model(spec["name"], **spec.get("options", {}))
        picked = rows[idx]
        train_classifier(
            shadow,
            data.dataset(picked),
            data.labels(picked),
            data.segments(picked),
            params=params,
            seed=seed,
            device=device(),
        )
        return shadow

    def logits(model: nn.Module, idx: np.ndarray) -> np.ndarray:
        p = predict_scores(model, data.dataset(rows[idx]), device=device())
        p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
        return np.log(p) - np.log1p(-p)  # binary: the class-1 logit against class 0

    index = np.arange(len(rows))
    return run_lira_offline(
        train_fn,
        logits,
        index,
        data.labels(rows),
        is_member,
        m.lira_shadows,
        derive_seed(int(m.seed), "lira"),
        target_model=target,
    )
