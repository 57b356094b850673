"""Membership-inference audits inside the centre that owns the images (only scores leave).

Handler ``evaluate.audit`` audits a shared classifier: the received model's per-image losses
on the centre's training images (members) and on its validation and test images (non-members,
never trained on) feed the loss-threshold attack (Yeom et al.). Only the attack's AUC, its TPR
at 1% FPR, the two counts and, when the centre trained this arm with DP, the epsilon spent on
the message's ledger and the TPR bound it implies leave the centre.

:func:`audit_generator` audits a generator the centre is about to share (called by
``train.generator``): GAN-Leaks (black box: distance of each real patch to the nearest
synthetic sample) and LOGAN (white box: the centre's own discriminator's score, which never
leaves the centre) on its training lesion patches vs its held-out ones.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord

from fedmammo.errors import DataError
from fedmammo.federation.centre_runtime import centre_data, device, identity_of
from fedmammo.federation.handlers import handler
from fedmammo.federation.handlers.common import model_from, reply
from fedmammo.federation.privacy_state import ledger_epsilon
from fedmammo.models.gans import GeneratorDescription, build_discriminator
from fedmammo.privacy.audit import (
    AuditResult,
    gan_leaks_attack,
    logan_attack,
    loss_threshold_attack,
)
from fedmammo.training.classifier import predict_scores

__all__ = ["GENERATOR_ATTACKS", "audit", "audit_generator", "example_losses"]

#: Attacks on a shared generator, in the order of :func:`audit_generator`'s results.
GENERATOR_ATTACKS = ("gan_leaks", "logan")


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


@torch.no_grad()
def _discriminator_scores(
    desc: GeneratorDescription, state: dict, patches: np.ndarray, device: torch.device | str
) -> np.ndarray:
    disc = build_discriminator(
        desc.kind, patch_size=desc.patch_size, width=desc.width, norm=desc.d_norm
    )
    disc.load_state_dict(state)
    disc.to(device).eval()
    x = torch.from_numpy(np.asarray(patches, np.float32)).unsqueeze(1) * 2.0 - 1.0
    return np.concatenate([disc(b.to(device)).reshape(-1).cpu().numpy() for b in x.split(256)])


def audit_generator(
    desc: GeneratorDescription,
    discriminator_state: dict,
    members: np.ndarray,
    nonmembers: np.ndarray,
    synthetic: np.ndarray,
    *,
    epsilon: float | None = None,
    delta: float | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, dict[str, float]]:
    """GAN-Leaks and LOGAN attack results on patches ``(N, S, S)`` in [0, 1], per attack.

    Members are the generator's training patches, non-members held-out patches of the same
    centre. Each result holds ``auc``, ``tpr_at_1pct_fpr``, the two counts and, with
    ``epsilon``, the TPR bound at 1% FPR that (epsilon, delta)-DP implies.
    """
    if len(members) < 2 or len(nonmembers) < 2:
        raise DataError(
            f"generator audit: needs at least 2 member and 2 held-out patches, got "
            f"{len(members)} and {len(nonmembers)}"
        )
    scores = [
        _discriminator_scores(desc, discriminator_state, x, device) for x in (members, nonmembers)
    ]
    results = {
        "gan_leaks": gan_leaks_attack(members, nonmembers, synthetic),
        "logan": logan_attack(*scores),
    }
    out = {}
    for name, r in results.items():
        out[name] = {
            "auc": r.attack_auc,
            "tpr_at_1pct_fpr": r.tpr_at_1pct_fpr,
            "n_members": r.n_members,
            "n_nonmembers": r.n_nonmembers,
        }
        if epsilon is not None and delta is not None:
            out[name].update(
                {
                    "epsilon": epsilon,
                    "delta": delta,
                    "tpr_bound_at_1pct_fpr": AuditResult.epsilon_bound_tpr(epsilon, delta),
                }
            )
    return out
