"""Handler ``evaluate.audit``: a membership-inference audit of a shared classifier.

Runs inside the centre that owns the images: the received model's per-image losses on the
centre's training images (members) and on its validation and test images (non-members, never
trained on) feed the loss-threshold attack (Yeom et al.). Only the attack's AUC, its TPR at
1% FPR, the two counts and, when the centre trained this arm with DP, the epsilon spent on
the message's ledger and the TPR bound it implies leave the centre.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Context, Message, MetricRecord

from fedmammo.errors import DataError
from fedmammo.federation.centre_runtime import centre_data, device, identity_of
from fedmammo.federation.handlers import handler
from fedmammo.federation.handlers.common import model_from, reply
from fedmammo.federation.privacy_state import ledger_epsilon
from fedmammo.privacy.audit import AuditResult, loss_threshold_attack
from fedmammo.training.classifier import predict_scores

__all__ = ["audit", "example_losses"]


def example_losses(p_malignant: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy of a binary classifier from its class-1 probabilities."""
    p = np.clip(np.asarray(p_malignant, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels).astype(bool)
    return -np.log(np.where(y, p, 1.0 - p))


@handler("evaluate", "audit")
def audit(msg: Message, context: Context) -> Message:
    """Loss-threshold attack on the received classifier: members = this centre's train split."""
    start = time.perf_counter()
    cfg = msg.content["config"]
    model = model_from(msg, context, keep_local_bn=cfg.get("batchnorm", "local") == "local")
    ident = identity_of(context)
    data = centre_data(ident, cfg)
    members = data.rows("train")
    others = np.concatenate([data.rows("val"), data.rows("test")])
    if len(members) == 0 or len(others) == 0:
        raise DataError(
            f"evaluate.audit at centre {ident.name!r}: needs labelled training images (members) "
            f"and labelled val/test images (non-members); has {len(members)} and {len(others)}"
        )
    losses = [
        example_losses(
            predict_scores(model, data.dataset(rows), device=device()), data.labels(rows)
        )
        for rows in (members, others)
    ]
    result = loss_threshold_attack(*losses)
    metrics = {
        "auc": result.attack_auc,
        "tpr-at-1pct-fpr": result.tpr_at_1pct_fpr,
        "n-members": result.n_members,
        "n-nonmembers": result.n_nonmembers,
    }
    spent = ledger_epsilon(context, ident, cfg, len(members))
    if spent is not None:
        eps, delta = spent
        metrics.update(
            {
                "epsilon": eps,
                "delta": delta,
                "tpr-bound-at-1pct-fpr": AuditResult.epsilon_bound_tpr(eps, delta),
            }
        )
    metrics["compute-seconds"] = time.perf_counter() - start
    return reply(msg, context, {"metrics": MetricRecord(metrics)})
