"""Handlers of the multi-task method: train.mtl, evaluate.mtl and query.latent (multi-task paper).

A centre trains the received :class:`~fedmammo.models.mtl.MultiTaskNet` on every image of its
training split (labelled or not: a missing label only zeroes that task's weight) and replies
with weights and loss parts; it evaluates on the split the server names and replies with
metric records (malignancy AUC with its CI, ACR and density balanced accuracy, view AUC,
malignancy AUC per density class and per view, and per data segment).

``query.latent`` draws the Figure-6-style map of the latent ``z`` inside the centre: the
per-image embeddings never leave it (the egress guard would refuse them), only the pixels of a
plot do. In simulation the centre writes ``latent_<centre>_seed<seed>.png`` into the
``plot-dir`` the server passes (the run directory's ``plots/``, on the same machine); in
deployment it ignores any server path and writes to its own ``<output-dir>/plots`` (node
config ``output-dir``, default ``<data-dir>/outputs``). The reply carries counts only.

Differential privacy (``train.mtl`` at a centre whose profile sets ``privacy``): DP-SGD
through :func:`~fedmammo.federation.privacy.ledger.open_dp_session` (Poisson sampling at rate
``1 / steps_per_epoch``, per-example clipping, the planned noise), and the reply carries the
``privacy`` record. Budget composition across the method's phases:

- Pre-training rounds (``phase: pretrain``) are DP phase ``mtl``; fine-tuning rounds are DP
  phase ``finetune``. Both charge *one* ledger: a fine-tuning arm (its own ledger, as every
  arm is a separate what-if deployment) starts as a copy of the ledger of the pre-training
  it continues (``dp-parent-ledger``, the ``mtl`` arm's), copied from this centre's own
  ledger file, so its epsilon is pre-training plus fine-tuning (at a real site every arm
  charges the one site ledger). A centre without a record of that parent ledger refuses.
- The noise for a target epsilon is planned once for the whole run. ``DPSession`` plans a
  phase from what remains of the target after earlier phases, so planned alone the
  pre-training would spend the whole target and leave nothing to fine-tune. When the server
  announces the phases that will follow at this centre (``dp-later-phases``: their planned
  rounds and local training parameters), the first pre-training round plans one noise
  multiplier for all planned steps of every phase (pre-training at its sample rate, then
  fine-tuning at its own) so that the composed epsilon reaches the target exactly at the
  end of fine-tuning, and stores it as the plan of both phases. The ``mtl`` model alone
  then ends below the target (the rest is reserved for fine-tuning); a centre that does
  not fine-tune plans its pre-training alone, up to the whole target.
- Every round is checked before any step against the target (and the planned steps);
  work beyond them is refused (``BudgetRefusal``) and the server stops that arm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import Context, Message
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from fedmammo.config.recipe import LocalTrainingParams
from fedmammo.data.labels import MISSING, drop_labels, finetune_targets, manifest_targets
from fedmammo.data.prepare import CentreData
from fedmammo.errors import DataError
from fedmammo.evaluation.latent import plot_latent
from fedmammo.federation.centre_models import (
    keep_optimizer_state,
    kept_optimizer_state,
    model_from,
    model_with_weights,
)
from fedmammo.federation.centre_runtime import (
    CentreIdentity,
    centre_data,
    device,
    identity_of,
)
from fedmammo.federation.codec import state_to_arrays
from fedmammo.federation.handlers import handler, reply
from fedmammo.federation.messages import (
    ARRAYS,
    INFO,
    METRICS,
    PRIVACY,
    EvaluationMetrics,
    PlotInfo,
    model_record,
)
from fedmammo.federation.privacy.ledger import finish_dp, open_dp_session, privacy_budget
from fedmammo.federation.privacy.phases import fork_parent_ledger, plan_later_phases
from fedmammo.federation.site import plot_dir, single_centre
from fedmammo.methods.mtl_finetune.messages import (
    FINETUNE,
    EvaluateMtl,
    LabelDropFields,
    QueryLatent,
    TrainMtl,
    TrainMtlMetrics,
)
from fedmammo.methods.mtl_finetune.report import mtl_records
from fedmammo.seeds import derive_seed
from fedmammo.training.classifier import augment_batch
from fedmammo.training.mtl import (
    MultiTaskDataset,
    collate_mtl,
    evaluate_mtl,
    finetune_acr_weights,
    mtl_augmentation,
    train_mtl,
)
from fedmammo.training.runtime import seed_torch

if TYPE_CHECKING:  # the engine loads Opacus: imported in _dp_session, under DP only
    from fedmammo.privacy.engine import DPSession

logger = logging.getLogger(__name__)

__all__ = [
    "HANDLERS",
    "EVAL_BATCH",
    "breast_keys",
    "dp_phase",
    "evaluate",
    "labelled_images",
    "latent",
    "mtl_loader",
    "train",
    "training_targets",
]

EVAL_BATCH = 64


def training_targets(
    data: CentreData, rows: np.ndarray, m: LabelDropFields, centre: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Targets, uncertainties and the kept rows for this round's phase and the arm's label
    drop (``m``: a ``train.mtl`` message, or an audit's label drop)."""
    manifest = data.manifest.iloc[rows]
    if isinstance(m, TrainMtl) and m.phase == FINETUNE:
        u_other = 0.5 if m.u_other is None else m.u_other
        targets, unc = finetune_targets(manifest, u1=float(m.u1), u_other=float(u_other))
    else:
        targets, unc = manifest_targets(manifest)
    fraction = float(m.drop_fraction or 0.0)
    if fraction <= 0:
        return targets, unc, rows
    # the same labels every round: the seed comes from the run seed and the centre only
    seed = derive_seed(int(m.drop_seed or 0), centre)
    dropped = drop_labels(targets, fraction, tasks=["malignancy"], seed=seed)
    if not m.drop_all:
        return dropped, unc, rows
    # "all labels dropped" removes whole images (multi-task paper Table 5: fewer samples): those
    # whose
    # malignancy label the malignancy-only arm drops, and the same fraction of the others
    had = targets["malignancy"] != MISSING
    lost = had & (dropped["malignancy"] == MISSING)
    others = {"images": np.where(had, MISSING, 0)}
    lost |= ~had & (drop_labels(others, fraction, tasks=["images"], seed=seed)["images"] == MISSING)
    keep = ~lost
    targets = {t: v[keep] for t, v in targets.items()}
    unc = {t: v[keep] for t, v in unc.items()}
    rows = rows[keep]
    return targets, unc, rows


def labelled_images(targets: Mapping[str, np.ndarray], tasks: Sequence[str]) -> int:
    """Images with a label for at least one of ``tasks`` (the tasks the arm trains; a
    single-task baseline: its task's labelled images), the ``labelled`` weighting count."""
    present = [targets[t] != MISSING for t in tasks if t in targets]
    return int(np.logical_or.reduce(present).sum()) if present else 0


def mtl_loader(
    data: CentreData,
    rows: np.ndarray,
    targets: Mapping[str, np.ndarray],
    unc: Mapping[str, np.ndarray],
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
    augment: bool = False,
    num_samples: int | None = None,
    augmentation: Mapping | None = None,
) -> DataLoader:
    """Multi-task batches of ``rows``; in order without ``generator``, else sampled from it.

    ``augment`` (training only): the paper's translation / zoom / vertical flip with the
    ``augmentation`` options (:func:`~fedmammo.training.mtl.mtl_augmentation`), or without
    them the shared flips and shifts (``augment_batch``).
    """
    array = data.cache.array
    transform = None
    if augment and augmentation is not None:
        transform = mtl_augmentation(**augmentation)
    elif augment:
        transform = lambda x: augment_batch(x[None], generator)[0]  # noqa: E731
    targets = {t: np.array(v) for t, v in targets.items()}  # writable copies for torch
    unc = {t: np.array(v) for t, v in unc.items()}
    dataset = MultiTaskDataset(lambda i: array[rows[i]], targets, unc, transform=transform)
    if generator is None:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_mtl)
    sampler = RandomSampler(dataset, num_samples=num_samples, generator=generator)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_mtl)


# --------------------------------------------------------------------------- privacy
def dp_phase(m: TrainMtl) -> str:
    """The DP phase of a train.mtl message: ``mtl`` (pre-training) or ``finetune``."""
    return "finetune" if m.phase == FINETUNE else "mtl"


def _dp_session(
    context: Context,
    ident: CentreIdentity,
    m: TrainMtl,
    model: nn.Module,
    *,
    n_examples: int,
    steps_per_epoch: int,
    epochs: int,
) -> DPSession | None:
    """The round's DP session (None without DP); refuses before any step when over budget."""
    budget = privacy_budget(ident, n_examples)
    if budget is None:
        return None
    from fedmammo.privacy.engine import validate_for_dp

    validate_for_dp(model)  # names every layer DP-SGD cannot train (BatchNorm), up front
    phase = dp_phase(m)
    fork_parent_ledger(context, ident, m, budget)
    plan_later_phases(
        context,
        ident,
        m,
        budget,
        n_examples=n_examples,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        phase=phase,
    )
    return open_dp_session(
        context,
        ident,
        m,
        n_examples=n_examples,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        phase=phase,
    )


@handler(TrainMtl.KIND, dp=True, consent="models", averaged=True)
def train(msg: Message, context: Context) -> Message:
    """Train the received multi-task net on this centre's training split; return weights.

    Under DP (``privacy`` in the centre profile) the round trains with DP-SGD and the reply
    adds the ``privacy`` record; a round beyond the budget is refused before any step.
    """
    start = time.perf_counter()
    m = TrainMtl.of(msg)
    ident = identity_of(context)
    model = model_from(m, msg.content[ARRAYS], context, keep_local_bn=False)
    data = single_centre(centre_data(ident, m), m.KIND)
    targets, unc, rows = training_targets(data, data.rows("train", label=None), m, ident.name)
    if not len(rows):
        raise DataError(f"centre {ident.name!r}: no training images (check its split)")
    params = LocalTrainingParams(**m.train)
    gen = seed_torch(int(m.seed))
    per_epoch = params.steps_per_epoch
    loader = mtl_loader(
        data,
        rows,
        targets,
        unc,
        batch_size=params.batch_size,
        generator=gen,
        augment=params.augment,
        num_samples=per_epoch * params.batch_size if per_epoch else None,
        augmentation=m.augmentation,
    )
    # DP: plans the noise, or refuses (BudgetRefusal) before any step; see the module doc
    privacy = _dp_session(
        context,
        ident,
        m,
        model,
        n_examples=len(rows),
        steps_per_epoch=len(loader),
        epochs=params.epochs,
    )
    keep = params.keep_optimizer_state  # Adam's state from this centre's previous round
    weights = None
    if m.phase == FINETUNE:
        high = 20.0 if m.class_weight_high is None else m.class_weight_high
        weights = finetune_acr_weights(float(high))
    result = train_mtl(
        model,
        loader,
        epochs=params.epochs,
        lr=params.lr,
        optimizer=params.optimizer,
        device=device(),
        acr_weights=weights,
        recon_weight=float(m.recon_weight),
        privacy=privacy,
        optimizer_state=kept_optimizer_state(context, m, keep),
    )
    keep_optimizer_state(context, m, result.pop("optimizer_state"), keep)
    metrics = TrainMtlMetrics(
        num_examples=len(rows),
        examples_seen=int(result["num_examples"]),
        steps=int(result["steps"]),
        train_loss=result.get("total", 0.0),
        compute_seconds=time.perf_counter() - start,
        losses={
            key.removeprefix("task_"): float(value)
            for key, value in result.items()
            if key not in ("total", "steps", "num_examples")
        },
        labelled={task: int((y != MISSING).sum()) for task, y in targets.items()},
        num_images=len(rows),  # the weighting counts (its own): images, and those labelled
        num_labelled=labelled_images(targets, tuple(model.tasks)),  # for the arm's tasks
    )
    records = {ARRAYS: state_to_arrays(model.state_dict()), METRICS: metrics.to_metrics()}
    if privacy is not None:
        records[PRIVACY] = finish_dp(context, privacy, m, int(result["steps"]))
    return reply(msg, context, records, model)


def breast_keys(manifest) -> list[str] | None:
    """One key per image naming its breast (patient and laterality), or None without them."""
    if not {"patient_id", "laterality"} <= set(manifest.columns):
        return None
    side = manifest["laterality"].astype("string").str.strip().str.upper().fillna("?")
    return (manifest["patient_id"].astype("string").fillna("?") + "|" + side).tolist()


@handler(EvaluateMtl.KIND, consent="metrics")
def evaluate(msg: Message, context: Context) -> Message:
    """Multi-task metric records of the received net on one split of this centre."""
    start = time.perf_counter()
    m = EvaluateMtl.of(msg)
    model = model_from(m, msg.content[ARRAYS], context, keep_local_bn=False)
    data = single_centre(centre_data(identity_of(context), m), m.KIND)
    rows = data.rows(m.split, label=None)
    records: list[dict] = []
    if len(rows):
        manifest = data.manifest.iloc[rows]
        targets, unc = manifest_targets(manifest)
        loader = mtl_loader(data, rows, targets, unc, batch_size=EVAL_BATCH)
        result = evaluate_mtl(model, loader, device=device())
        reference = None
        if m.reference_model is not None:
            ref_model = model_with_weights(m.reference_model, msg.content[model_record(0)])
            reference = evaluate_mtl(ref_model, loader, device=device())["predictions"]
        records = mtl_records(
            result["predictions"],
            result["labels"],
            data.segments(rows),
            n_boot=m.n_boot,
            seed=int(m.seed),
            breasts=breast_keys(manifest),
            reference=reference,
        )
        records.append({"segment": None, "metric": "loss", "value": result.get("total")})
    metrics = EvaluationMetrics(
        records=records, num_examples=len(rows), compute_seconds=time.perf_counter() - start
    )
    return reply(msg, context, {METRICS: metrics.to_metrics()})


@torch.no_grad()
def _latent_codes(model: nn.Module, loader: DataLoader) -> np.ndarray:
    model.to(device()).eval()
    return np.concatenate([model(x.to(device()))["z"].float().cpu().numpy() for x, _, _ in loader])


@handler(QueryLatent.KIND, consent="metrics")
def latent(msg: Message, context: Context) -> Message:
    """Draw the latent map of the received models on one split; reply with counts only.

    The message (:class:`~fedmammo.methods.mtl_finetune.messages.QueryLatent`) holds one
    model per arm in ``arrays-<k>``.
    """
    m = QueryLatent.of(msg)
    ident = identity_of(context)
    data = single_centre(centre_data(ident, m), m.KIND)
    rows = data.rows(m.split, label=None)
    if len(rows) < 3:
        return reply(msg, context, {INFO: PlotInfo(n_images=len(rows)).to_metrics()})
    targets, unc = manifest_targets(data.manifest.iloc[rows])
    loader = mtl_loader(data, rows, targets, unc, batch_size=EVAL_BATCH)
    codes = {}
    for k, arm in enumerate(m.arms):
        model = model_with_weights(m.models[arm], msg.content[model_record(k)])
        codes[arm] = _latent_codes(model, loader)
    path = (
        plot_dir(context, ident, m.plot_dir, needed_by=m.KIND)
        / f"latent_{ident.name}_seed{m.seed}.png"
    )
    plot_latent(
        codes,
        targets,
        path,
        method=m.method,
        seed=m.seed,
        title=f"Latent z at centre {ident.name} ({m.split} split)",
    )
    return reply(msg, context, {INFO: PlotInfo(n_images=len(rows), plotted=1).to_metrics()})


HANDLERS = (train, evaluate, latent)
