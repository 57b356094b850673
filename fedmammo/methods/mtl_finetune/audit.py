"""``evaluate.mtl_audit``: the loss-threshold attack on a shared multi-task net, in the centre.

The received :class:`~fedmammo.models.mtl.MultiTaskNet`'s malignancy task: each image's loss
is the cross-entropy of the malignancy head on the image's malignancy label (the per-example
term of the multi-task training loss; the label-uncertainty and class weights only rescale it
per label and are left out). Members are the training images the arm trained on with a
malignancy label (the manifest's, minus those the arm's label-drop removed: ``drop-*`` keys as
in ``train.mtl``); non-members the labelled validation and test images; images without a
malignancy label are left out. A fine-tuning arm's model carries, at a centre that only
pre-trained, the pre-training's cost: without a ledger of its own there, the epsilon is the
one of the ledger it continues (``dp-parent-ledger``).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import Context, Message
from torch import nn
from torch.utils.data import DataLoader

from fedmammo.data.labels import MISSING, manifest_targets
from fedmammo.data.prepare import CentreData
from fedmammo.errors import DataError
from fedmammo.federation.centre_models import model_from
from fedmammo.federation.centre_runtime import centre_data, device, identity_of
from fedmammo.federation.handlers import handler, reply
from fedmammo.federation.messages import ARRAYS, METRICS
from fedmammo.federation.privacy.audits import attack_metrics, need_both
from fedmammo.federation.site import single_centre
from fedmammo.methods.mtl_finetune.client import (
    EVAL_BATCH,
    mtl_loader,
    training_targets,
)
from fedmammo.methods.mtl_finetune.messages import EvaluateMtlAudit

__all__ = ["malignancy_losses", "mtl_audit"]


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


@handler(EvaluateMtlAudit.KIND, consent="audits")
def mtl_audit(msg: Message, context: Context) -> Message:
    """Loss-threshold attack on the received multi-task net's malignancy task (module doc)."""
    start = time.perf_counter()
    m = EvaluateMtlAudit.of(msg)
    model = model_from(m, msg.content[ARRAYS], context, keep_local_bn=False)
    ident = identity_of(context)
    data = single_centre(centre_data(ident, m), m.KIND)
    # the arm's training rows and (pre-training) labels here, after its label drop
    targets, _, trained = training_targets(data, data.rows("train", label=None), m, ident.name)
    held = np.concatenate([data.rows("val", label=None), data.rows("test", label=None)])
    loaders = (
        _labelled(data, trained, targets["malignancy"]),
        _labelled(data, held, manifest_targets(data.manifest.iloc[held])[0]["malignancy"]),
    )
    need_both(m.KIND, ident, *(len(x.dataset) for x in loaders))
    losses = tuple(malignancy_losses(model, x, device=device()) for x in loaders)
    metrics = attack_metrics(
        context,
        ident,
        m,
        losses,
        n_trained=len(trained),
        start=start,
        parent_ledger=m.parent_ledger,
    )
    return reply(msg, context, {METRICS: metrics.to_metrics()})
