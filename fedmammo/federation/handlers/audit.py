"""Membership-inference audits inside the centre that owns the images (only scores leave).

Handler ``evaluate.audit`` audits a shared classifier: the received model's per-image losses
on the centre's training images (members) and on its validation and test images (non-members,
never trained on) feed the loss-threshold attack (Yeom et al.). Only the attack's AUC, its TPR
at 1% FPR, the two counts and, when the centre trained this arm with DP, the epsilon spent on
the message's ledger and the TPR bound it implies leave the centre.

Handler ``evaluate.mtl_audit`` does the same for a shared multi-task net
(:class:`~fedmammo.models.mtl.MultiTaskNet`) on its malignancy task: each image's loss is the
cross-entropy of the malignancy head on the image's malignancy label (the per-example term of
the multi-task training loss; the label-uncertainty and class weights only rescale it per
label and are left out). Members are the training images the arm trained on with a malignancy
label (the manifest's, minus those the arm's label-drop removed: ``drop-*`` keys as in
``train.mtl``); non-members the labelled validation and test images; images without a
malignancy label are left out. A fine-tuning arm's model carries, at a centre that only
pre-trained, the pre-training's cost: without a ledger of its own there, the epsilon is the
one of the ledger it continues (``dp-parent-ledger``).

:func:`audit_generator` audits a generator the centre is about to share (called by
``train.generator``): GAN-Leaks (black box: distance of each real patch to the nearest
synthetic sample) and LOGAN (white box: the centre's own discriminator's score, which never
leaves the centre) on its training lesion patches vs its held-out ones.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import Context, Message, MetricRecord
from torch import nn
from torch.utils.data import DataLoader

from fedmammo.data.labels import MISSING, manifest_targets
from fedmammo.data.prepare import CentreData
from fedmammo.errors import DataError
from fedmammo.federation.centre_runtime import CentreIdentity, centre_data, device, identity_of
from fedmammo.federation.codec import get_json
from fedmammo.federation.handlers import handler
from fedmammo.federation.handlers.common import model_from, reply
from fedmammo.federation.handlers.mtl import (
    EVAL_BATCH,
    mtl_loader,
    single_centre,
    training_targets,
)
from fedmammo.federation.handlers.periodic import segments_of, select_rows
from fedmammo.federation.orchestrator import derive_seed
from fedmammo.federation.privacy_phases import PARENT_LEDGER_KEY
from fedmammo.federation.privacy_state import LEDGER_KEY, ledger_epsilon
from fedmammo.models import build_model
from fedmammo.models.gans import GeneratorDescription, build_discriminator
from fedmammo.privacy.audit import (
    AuditResult,
    gan_leaks_attack,
    logan_attack,
    loss_threshold_attack,
    run_lira_offline,
)
from fedmammo.recipes.common import LocalTrainingParams
from fedmammo.training.classifier import predict_scores, train_classifier

__all__ = [
    "GENERATOR_ATTACKS",
    "audit",
    "audit_generator",
    "example_losses",
    "malignancy_losses",
    "mtl_audit",
]

#: Attacks on a shared generator, in the order of :func:`audit_generator`'s results.
GENERATOR_ATTACKS = ("gan_leaks", "logan")


def example_losses(p_malignant: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy of a binary classifier from its class-1 probabilities."""
    p = np.clip(np.asarray(p_malignant, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels).astype(bool)
    return -np.log(np.where(y, p, 1.0 - p))


def _need_both(kind: str, ident: CentreIdentity, members: int, others: int) -> None:
    if members == 0 or others == 0:
        raise DataError(
            f"{kind} at centre {ident.name!r}: needs labelled training images (members) "
            f"and labelled val/test images (non-members); has {members} and {others}"
        )


def _attack_metrics(
    context: Context,
    ident: CentreIdentity,
    cfg: Mapping,
    losses: tuple[np.ndarray, np.ndarray],
    *,
    n_trained: int,
    start: float,
) -> MetricRecord:
    """The reply's metrics: attack scores, counts and, under DP, the ledger's epsilon bound.

    ``n_trained`` is the number of examples the arm trained on here (it sets the budget's
    delta, as in the training handler). Without a ledger of its own the message's
    ``dp-parent-ledger`` (the ledger the arm continues) is used.
    """
    result = loss_threshold_attack(*losses)
    metrics = {
        "auc": result.attack_auc,
        "tpr-at-1pct-fpr": result.tpr_at_1pct_fpr,
        "n-members": result.n_members,
        "n-nonmembers": result.n_nonmembers,
    }
    spent = ledger_epsilon(context, ident, cfg, n_trained)
    parent = cfg.get(PARENT_LEDGER_KEY)
    if spent is None and parent:
        spent = ledger_epsilon(context, ident, {LEDGER_KEY: str(parent)}, n_trained)
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
    return MetricRecord(metrics)


@handler("evaluate", "audit")
def audit(msg: Message, context: Context) -> Message:
    """Loss-threshold attack on the received classifier: members = this centre's train split
    (restricted to the config's ``segments`` when given), non-members its val and test.

    With ``lira-shadows`` > 0 (even) also offline LiRA (``lira-auc``, ``lira-tpr-at-1pct-fpr``)
    with that many shadow models trained here (see :func:`_lira`)."""
    start = time.perf_counter()
    cfg = msg.content["config"]
    model = model_from(msg, context, keep_local_bn=cfg.get("batchnorm", "local") == "local")
    ident = identity_of(context)
    data = centre_data(ident, cfg)
    segments = segments_of(cfg)  # periodic sampling: the arm trained on these segments only
    members = select_rows(data, "train", segments)
    others = np.concatenate([select_rows(data, split, segments) for split in ("val", "test")])
    _need_both("evaluate.audit", ident, len(members), len(others))
    losses = tuple(
        example_losses(
            predict_scores(model, data.dataset(rows), device=device()), data.labels(rows)
        )
        for rows in (members, others)
    )
    metrics = _attack_metrics(context, ident, cfg, losses, n_trained=len(members), start=start)
    shadows = int(cfg.get("lira-shadows", 0))
    if shadows:
        lira = _lira(model, data, members, others, cfg, shadows)
        metrics.update({"lira-auc": lira.attack_auc, "lira-tpr-at-1pct-fpr": lira.tpr_at_1pct_fpr})
        metrics["compute-seconds"] = time.perf_counter() - start
    return reply(msg, context, {"metrics": metrics})


def _lira(
    target: nn.Module, data, members: np.ndarray, others: np.ndarray, cfg: Mapping, shadows: int
) -> AuditResult:
    """Offline LiRA with ``shadows`` models trained here on random halves of the candidates.

    Each shadow trains a fresh ``model`` with the ``lira-train`` recipe (the arm's local
    training stretched over its rounds: an approximation of how the shared model was trained);
    candidates are this centre's members and held-out images.
    """
    rows = np.concatenate([members, others])
    is_member = np.r_[np.ones(len(members), bool), np.zeros(len(others), bool)]
    spec, params = get_json(cfg, "model"), LocalTrainingParams(**get_json(cfg, "lira-train"))

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
        shadows,
        derive_seed(int(cfg["seed"]), "lira"),
        target_model=target,
    )


@torch.no_grad()
def malignancy_losses(
    model: nn.Module, loader: DataLoader, *, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Per-image cross-entropy of a multi-task net's malignancy head (labels all present)."""
    if "malignancy" not in getattr(model, "tasks", {}):
        raise DataError("membership audit: the multi-task net has no malignancy head")
    model.to(device).eval()
    out = []
    for x, targets, _ in loader:
        z = model(x.to(device))["logits"]["malignancy"].float()
        y = targets["malignancy"].to(device)
        out.append(F.cross_entropy(z, y, reduction="none").cpu().numpy())
    return np.concatenate(out)


def _labelled(data: CentreData, rows: np.ndarray, labels: np.ndarray) -> DataLoader:
    """Loader of the ``rows`` whose malignancy label (``labels``, aligned) is present."""
    keep = labels != MISSING
    y = {"malignancy": labels[keep]}
    u = {"malignancy": np.zeros(int(keep.sum()), np.float32)}
    return mtl_loader(data, rows[keep], y, u, batch_size=EVAL_BATCH)


@handler("evaluate", "mtl_audit")
def mtl_audit(msg: Message, context: Context) -> Message:
    """Loss-threshold attack on the received multi-task net's malignancy task (module doc)."""
    start = time.perf_counter()
    cfg = msg.content["config"]
    model = model_from(msg, context, keep_local_bn=False)
    ident = identity_of(context)
    data = single_centre(centre_data(ident, cfg), "evaluate.mtl_audit")
    # the arm's training rows and (pre-training) labels here, after its label drop
    drop = {k: cfg[k] for k in ("drop-fraction", "drop-all", "drop-seed") if k in cfg}
    targets, _, trained = training_targets(data, data.rows("train", label=None), drop, ident.name)
    held = np.concatenate([data.rows("val", label=None), data.rows("test", label=None)])
    loaders = (
        _labelled(data, trained, targets["malignancy"]),
        _labelled(data, held, manifest_targets(data.manifest.iloc[held])[0]["malignancy"]),
    )
    _need_both("evaluate.mtl_audit", ident, *(len(x.dataset) for x in loaders))
    losses = tuple(malignancy_losses(model, x, device=device()) for x in loaders)
    metrics = _attack_metrics(context, ident, cfg, losses, n_trained=len(trained), start=start)
    return reply(msg, context, {"metrics": metrics})


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
