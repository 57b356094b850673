"""``query.identify``: a centre's name, role and label counts (the first message of a run),
and a training-free reference AUROC of its test images."""

from __future__ import annotations

import math

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord

from fedmammo.data.prepare import CentreData
from fedmammo.evaluation.metrics import auc_ci
from fedmammo.federation.centre_runtime import centre_data, identity_of
from fedmammo.federation.handlers import handler, reply
from fedmammo.federation.messages import COUNTS, INFO, REFERENCE, CentreInfo, Identify

__all__ = ["brightest_pixel_reference", "identify"]

_ROWS_AT_ONCE = 256  # cached images read at a time (a large test split is not copied whole)


def brightest_pixel_reference(data: CentreData) -> dict[str, float]:
    """The malignancy AUROC of the test images scored by their brightest cached pixel, with
    its 95% CI over patients (:func:`~fedmammo.evaluation.metrics.auc_ci`; NaN without
    malignant and benign test images): what a model must beat to have learned more than
    "is something bright in this image". At
    ``fedavg_quick``'s phantom centres (128x96, ``lesion_contrast`` 2.5) it is 0.96-1.00:
    there the task is mostly lesion detection (README, "What the phantom's malignancy task
    measures")."""
    rows = data.rows("test")
    if rows.size == 0:
        return {"brightest_pixel_auc": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    chunks = [rows[i : i + _ROWS_AT_ONCE] for i in range(0, rows.size, _ROWS_AT_ONCE)]
    brightest = np.concatenate([data.cache.array[c].max(axis=(1, 2)) for c in chunks])
    auc, low, high = auc_ci(data.labels(rows), brightest, groups=data.patients(rows))
    return {"brightest_pixel_auc": auc, "ci_low": low, "ci_high": high}


@handler(Identify.KIND)
def identify(msg: Message, context: Context) -> Message:
    """Name, role, the digest of its own profile, its torch threads, label counts per split
    and segment (counts only), and, under ``sharing.metrics``, the brightest-pixel reference
    AUROC of its test images."""
    ident = identity_of(context)
    data = centre_data(ident, Identify.of(msg))
    counts = data.counts() if hasattr(data, "counts") else {}
    digest = ident.profile.digest() if ident.profile is not None else None
    info = CentreInfo(
        centre=ident.name, role=ident.role, profile=digest, torch_threads=torch.get_num_threads()
    ).to_config()
    content = {INFO: info, COUNTS: MetricRecord(counts)}
    # a metric of the test images: it leaves only with the centre's consent to metrics
    if isinstance(data, CentreData) and ident.profile is not None and ident.profile.sharing.metrics:
        content[REFERENCE] = MetricRecord(brightest_pixel_reference(data))
    return reply(msg, context, content)
