"""The centre's work for ``contrastive_dg`` (no Flower here): pre-training inputs and loops,
the downstream tasks' inputs, models, fine-tuning and evaluation, the embedding map.

Evaluation of several task models at once (an unseen centre receives the models fine-tuned
at every labelled centre): the metric is the mean over the models of each model's metric on
the centre's test samples, and its bootstrap CI resamples the samples' patients (the same
resample for every model), so it reads "a locally fine-tuned model, on this vendor".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from fedmammo.data.pairs import contrastive_masks
from fedmammo.data.prepare import CentreData, PooledData
from fedmammo.errors import DataError
from fedmammo.evaluation.bootstrap import bootstrap_mean, bootstrap_statistic
from fedmammo.evaluation.detection import average_precision, match_image
from fedmammo.evaluation.embeddings import plot_embeddings_by_vendor, vendor_silhouette
from fedmammo.methods.contrastive_dg.params import FinetuneParams, PretrainParams, metric_name
from fedmammo.methods.contrastive_dg.styles import StyleStore, train_rows
from fedmammo.models.contrastive_losses import nt_xent_loss
from fedmammo.progress import progress
from fedmammo.training.contrastive import (
    ContrastiveResult,
    augment_views,
    encode_images,
    pretrain_contrastive,
)
from fedmammo.training.contrastive_styles import translate_images
from fedmammo.training.downstream import (
    DownstreamResult,
    EncoderClassifier,
    MatchingNet,
    MatchPairs,
    density_labels,
    detection_targets,
    downstream_frame,
    mass_crops,
    matching_pairs,
    pair_distances,
    predict_detections,
    predict_proba,
    train_detector,
    train_encoder_classifier,
    train_matching,
)
from fedmammo.training.patch_classifier import choose_patients
from fedmammo.training.state import cpu_state

__all__ = [
    "STYLED_SCHEMES",
    "TaskInputs",
    "embedding_map",
    "evaluate_task",
    "finetune_task",
    "initial_task_model",
    "pretrain",
    "pretrain_inputs",
    "task_inputs",
    "task_model",
    "validation_records",
]

#: Schemes whose views are style variants (they need the centre's style bank).
STYLED_SCHEMES = ("mscl", "mvcl", "msvcl")
_EMBED_DIM = 64
_BIRADS_CLASSES = 3


# --------------------------------------------------------------------------- pre-training
def _parts(data: CentreData | PooledData) -> list[CentreData]:
    return list(data.parts) if isinstance(data, PooledData) else [data]


def pretrain_inputs(
    data: CentreData | PooledData, store: StyleStore | None, key: str, scheme: str
) -> tuple[np.ndarray, pd.DataFrame]:
    """(styles (N, S, H, W), manifest rows) of the training split; pooled: every part's.

    Styled schemes read the centre's bank ``key`` (own style first); the others use the
    images in their own style only (S = 1).
    """
    banks, frames = [], []
    for part in _parts(data):
        frame, images = train_rows(part)
        if scheme in STYLED_SCHEMES:
            if store is None:
                raise DataError(f"{scheme} needs a style bank; none was named")
            sub = store if not isinstance(data, PooledData) else StyleStore(store.folder, part.name)
            banks.append(sub.bank(key, list(frame["image_id"].astype(str))).images)
        else:
            banks.append(images[:, None])
        frames.append(frame)
    return np.concatenate(banks), pd.concat(frames, ignore_index=True)


def _labels(frame: pd.DataFrame) -> np.ndarray:
    return frame["malignant"].to_numpy(dtype="float64", na_value=np.nan)


def _optimizer(params, p: PretrainParams) -> torch.optim.Optimizer:
    if p.optimizer == "sgd":
        return torch.optim.SGD(params, lr=p.lr, momentum=0.9, weight_decay=p.weight_decay)
    return torch.optim.Adam(params, lr=p.lr, weight_decay=p.weight_decay)


def _pretrain_supervised(
    encoder: nn.Module, images: np.ndarray, frame: pd.DataFrame, p: PretrainParams, steps, seed
) -> ContrastiveResult:
    """Cross-entropy on whole-image malignancy, the encoder's head giving the logits."""
    start = time.perf_counter()
    y = _labels(frame)
    keep = np.isfinite(y)
    if keep.sum() < 2:
        raise DataError("supervised pre-training: fewer than 2 images with a malignancy label")
    x_all, y_all = torch.from_numpy(images[keep])[:, None], torch.from_numpy(y[keep].astype(int))
    steps = steps or math.ceil(len(y_all) / p.batch_size)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    encoder.train()
    opt = _optimizer([q for q in encoder.parameters() if q.requires_grad], p)
    result = ContrastiveResult("supervised", steps=0, num_examples=0, loss=math.nan, seconds=0)
    for epoch in progress(range(1, p.epochs + 1), "supervised pre-training epochs"):
        total = 0.0
        for _ in range(steps):
            idx = rng.choice(len(y_all), size=min(p.batch_size, len(y_all)), replace=False)
            x = augment_views(x_all[idx], gen) if p.augment else x_all[idx]
            loss = F.cross_entropy(encoder(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.steps += 1
            result.num_examples += len(idx)
            total += float(loss.detach()) / steps
        result.history.append({"epoch": float(epoch), "loss": total})
    result.loss = result.history[-1]["loss"]
    result.state = cpu_state(encoder)
    result.seconds = time.perf_counter() - start
    return result


def pretrain(
    encoder: nn.Module,
    styles: np.ndarray,
    frame: pd.DataFrame,
    *,
    scheme: str,
    p: PretrainParams,
    seed: int,
    steps_scale: int = 1,
) -> ContrastiveResult:
    """One round of local pre-training in place (contrastive schemes or ``supervised``)."""
    steps = p.steps_per_epoch * steps_scale if p.steps_per_epoch else None
    if scheme == "supervised":
        return _pretrain_supervised(encoder, styles[:, 0], frame, p, steps, seed)
    return pretrain_contrastive(
        encoder,
        styles,
        frame,
        scheme=scheme,
        tau=p.tau,
        epochs=p.epochs,
        batch_size=p.batch_size,
        steps_per_epoch=steps,
        lr=p.lr,
        optimizer=p.optimizer,
        weight_decay=p.weight_decay,
        mvcl_weight=p.mvcl_weight,
        augment=p.augment,
        seed=seed,
    )


@torch.no_grad()
def validation_records(
    encoder: nn.Module, images: np.ndarray, frame: pd.DataFrame, *, scheme: str, p, seed: int
) -> list[dict]:
    """``val_loss``: cross-entropy (supervised) or the SimCLR NT-Xent of two augmentations of
    each image (every contrastive scheme: one comparable measure), in eval mode."""
    encoder.eval()
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(np.asarray(images, np.float32))[:, None]
    if scheme == "supervised":
        y = _labels(frame)
        keep = np.isfinite(y)
        if not keep.any():
            return []
        logits = encoder(x_all[keep])
        target = torch.from_numpy(y[keep].astype(int))
        acc = float((logits.argmax(1) == target).float().mean())
        loss = float(F.cross_entropy(logits, target))
        return [_record("val_loss", loss), _record("val_accuracy", acc)]
    ids = frame["image_id"].astype(str).to_numpy()
    losses = []
    for s in range(0, len(ids) - 1, p.batch_size):
        chunk = np.arange(s, min(s + p.batch_size, len(ids)))
        if len(chunk) < 2:
            break
        x = torch.cat([x_all[chunk], x_all[chunk]])
        keys = np.concatenate([ids[chunk], ids[chunk]])
        pos, neg = contrastive_masks(patient=keys, image=keys, view=keys, scheme="simclr")
        z = encoder(augment_views(x, gen) if p.augment else x)
        losses.append(
            float(nt_xent_loss(z, torch.from_numpy(pos), torch.from_numpy(neg), tau=p.tau))
        )
    return [_record("val_loss", float(np.mean(losses)))] if losses else []


def _record(metric: str, value: float, low: float = math.nan, high: float = math.nan) -> dict:
    return {
        "segment": None,
        "metric": metric,
        "value": value,
        "ci_low": None if math.isnan(low) else low,
        "ci_high": None if math.isnan(high) else high,
    }


# --------------------------------------------------------------------------- downstream
@dataclass
class TaskInputs:
    """One task's samples at a centre: images (whole or crops) with labels or boxes, or pairs."""

    task: str
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    boxes: list[np.ndarray] = field(default_factory=list)
    pairs: MatchPairs | None = None
    n_patients: int = 0
    patients: np.ndarray | None = None  # each sample's patient (what a bootstrap resamples)

    def __len__(self) -> int:
        if self.pairs is not None:
            return len(self.pairs)
        return 0 if self.images is None else len(self.images)


def task_inputs(
    data: CentreData, task: str, split: str, ft: FinetuneParams, *, fraction=1.0, seed: int = 0
) -> TaskInputs:
    """The samples of ``task`` in a split; detection keeps ``fraction`` of the patients
    (stratified by having a mass, :func:`~fedmammo.training.patch_classifier.choose_patients`)."""
    frame = downstream_frame(data, split)
    if task == "detection" and fraction < 1:
        frame = choose_patients(frame, fraction, subset="masses", seed=seed)
    n_patients = int(frame["patient_id"].nunique())
    if task == "matching":
        pairs = matching_pairs(data.cache.get, frame, out_size=ft.crop_size, seed=seed)
        return TaskInputs(task, pairs=pairs, n_patients=n_patients, patients=pairs.patient_ids)
    if task == "birads":
        crops = mass_crops(data.cache.get, frame, out_size=ft.crop_size, label="birads")
        return TaskInputs(
            task,
            images=crops.crops,
            labels=crops.labels,
            n_patients=n_patients,
            patients=crops.patient_ids,
        )
    images = data.cache.images(data.cache.rows(frame["image_id"].astype(str)))
    patients = frame["patient_id"].astype(str).to_numpy()
    if task == "density":
        labels = density_labels(frame, binary=ft.density_classes == 2)
        return TaskInputs(
            task, images=images, labels=labels, n_patients=n_patients, patients=patients
        )
    if task == "detection":
        boxes = detection_targets(frame)
        return TaskInputs(
            task, images=images, boxes=boxes, n_patients=n_patients, patients=patients
        )
    raise DataError(f"unknown downstream task {task!r}")


def _classes(task: str, ft: FinetuneParams) -> int:
    return _BIRADS_CLASSES if task == "birads" else ft.density_classes


def task_model(
    task: str, encoder: nn.Module, ft: FinetuneParams, image_size: tuple[int, int]
) -> nn.Module:
    """The task's network on a copy of ``encoder``'s backbone (what the replies carry)."""
    if task == "detection":
        from fedmammo.models.detection import build_fcos  # torchvision's FCOS: only here

        return build_fcos(image_size=image_size, encoder=encoder, fpn_channels=ft.fpn_channels)
    if task == "matching":
        return MatchingNet(encoder, embed_dim=_EMBED_DIM)
    return EncoderClassifier(encoder, _classes(task, ft))


def initial_task_model(
    task: str, encoder: nn.Module, ft: FinetuneParams, *, image_size: tuple[int, int], seed: int
) -> nn.Module:
    """The task's network on ``encoder``'s backbone, its new layers drawn with ``seed``."""
    torch.manual_seed(seed)
    return task_model(task, encoder, ft, image_size)


def finetune_task(
    task: str,
    encoder: nn.Module | None,
    inputs: TaskInputs,
    ft: FinetuneParams,
    *,
    image_size: tuple[int, int],
    seed: int,
    model: nn.Module | None = None,
) -> DownstreamResult:
    """Fine-tune the task's network on ``inputs`` (the paper's loops): ``model`` in place when
    given (a federated round continues the averaged task model), else a new one from
    ``encoder`` (:func:`initial_task_model` with ``seed``, the local downstream)."""
    if len(inputs) == 0:
        raise DataError(f"{task}: no training samples at this centre")
    if model is None:
        if encoder is None:
            raise DataError(f"{task}: fine-tuning needs an encoder or a task model")
        model = initial_task_model(task, encoder, ft, image_size=image_size, seed=seed)
    loop = ft.task(task).model_dump()
    if task == "detection":
        return train_detector(model, inputs.images, inputs.boxes, seed=seed, **loop)
    if task == "matching":
        return train_matching(model, inputs.pairs, margin=ft.margin, seed=seed, **loop)
    return train_encoder_classifier(
        model,
        inputs.images,
        inputs.labels,
        num_classes=_classes(task, ft),
        task=task,
        seed=seed,
        **loop,
    )


def _detection_per_image(model: nn.Module, inputs: TaskInputs) -> list[tuple]:
    preds = predict_detections(model, inputs.images)
    return [
        (*match_image(p["boxes"], p["scores"], gt, iou_threshold=0.5), len(gt))
        for p, gt in zip(preds, inputs.boxes, strict=True)
    ]


def _ap(per: list[tuple], idx: np.ndarray) -> float:
    n_gt = sum(per[i][2] for i in idx)
    if n_gt == 0:
        return math.nan
    scores = np.concatenate([per[i][0] for i in idx] + [np.zeros(0)])
    tp = np.concatenate([per[i][1] for i in idx] + [np.zeros(0, bool)])
    return average_precision(scores, tp, n_gt)


def _correct(task: str, model: nn.Module, inputs: TaskInputs, ft: FinetuneParams) -> np.ndarray:
    """Per-sample correctness (1/0) of one model; unlabelled samples are NaN."""
    if task == "matching":
        predicted = pair_distances(model, inputs.pairs) < ft.margin / 2
        return (predicted == inputs.pairs.match.astype(bool)).astype(np.float64)
    predicted = predict_proba(model, inputs.images).argmax(axis=1)
    out = (predicted == inputs.labels).astype(np.float64)
    out[inputs.labels < 0] = np.nan
    return out


def evaluate_task(
    task: str,
    models: list[nn.Module],
    inputs: TaskInputs,
    ft: FinetuneParams,
    *,
    fraction: float = 1.0,
    n_boot: int = 0,
    seed: int = 0,
) -> list[dict]:
    """The task metric averaged over ``models``, with a bootstrap CI over the samples (over
    their patients, when ``inputs`` names them)."""
    name = metric_name(task, fraction)
    if not models or len(inputs) == 0:
        return []
    patients = inputs.patients
    if task == "detection":
        per = [_detection_per_image(m, inputs) for m in models]

        def stat(idx: np.ndarray) -> float:
            return float(np.mean([_ap(p, idx) for p in per]))

        value, low, high = bootstrap_statistic(
            stat, len(inputs), n_boot=n_boot, seed=seed, groups=patients
        )
        return [_record(name, value, low, high)]
    stack = np.stack([_correct(task, m, inputs, ft) for m in models])
    labelled = np.isfinite(stack).all(axis=0)  # unlabelled samples are left out
    correct = stack[:, labelled].mean(axis=0)
    if correct.size == 0:
        return []
    groups = None if patients is None else patients[labelled]
    value, low, high = bootstrap_mean(correct, n_boot=n_boot, seed=seed, groups=groups)
    return [_record(name, value, low, high)]


# --------------------------------------------------------------------------- embeddings
def embedding_map(
    encoders: dict[str, nn.Module],
    images: np.ndarray,
    *,
    own_style: str,
    translators: dict[str, nn.Module],
    path: Path,
    method: str = "tsne",
    seed: int = 0,
    title: str = "",
) -> dict[str, float]:
    """Draw the embeddings of ``images`` in their own style and translated into every other
    seen style, one panel per encoder; returns each encoder's vendor silhouette."""
    sets = [(own_style, np.asarray(images, np.float32))]
    sets += [(s, translate_images(g, images)) for s, g in sorted(translators.items())]
    stack = np.concatenate([x for _, x in sets])
    vendors = [s for s, x in sets for _ in range(len(x))]
    emb = {arm: encode_images(enc, stack) for arm, enc in encoders.items()}
    plot_embeddings_by_vendor(emb, vendors, path, method=method, seed=seed, title=title)
    return {arm: vendor_silhouette(z, vendors) for arm, z in emb.items()}
