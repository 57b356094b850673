"""Uncertainty-weighted multi-task loss, dataset and local train/evaluate loops (no Flower)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from fedmammo.errors import DataError
from fedmammo.progress import progress
from fedmammo.training.runtime import Runtime, keep_freed_memory

__all__ = [
    "MTL_TASKS",
    "MultiTaskDataset",
    "collate_mtl",
    "evaluate_mtl",
    "finetune_acr_weights",
    "mtl_augmentation",
    "mtl_loss",
    "train_mtl",
    "weighted_task_loss",
]

log = logging.getLogger(__name__)

#: The classification tasks the loss knows, in reporting order.
MTL_TASKS: tuple[str, ...] = ("malignancy", "acr", "density", "view")

Batch = tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]


def _acr_sample_weights(targets: Mapping[str, Tensor], acr_weights: Tensor | None) -> Tensor | None:
    """Each sample's weight by its ACR class (``acr_weights``, 6 values); 1 without an ACR."""
    if acr_weights is None or "acr" not in targets:
        return None
    weights = torch.as_tensor(acr_weights, dtype=torch.float32).reshape(-1)
    if weights.numel() != 6:
        raise DataError(f"acr_weights has {weights.numel()} values, not 6 (ACR 1-6)")
    acr = targets["acr"].long().reshape(-1)
    return torch.where(acr >= 0, weights.to(acr.device)[acr.clamp(0, 5)], 1.0)


def _task_losses(
    logits: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    uncertainty: Mapping[str, Tensor],
    acr_weights: Tensor | None,
) -> dict[str, Tensor]:
    """Per-task weighted cross-entropy, summed over the batch and divided by its size."""
    out: dict[str, Tensor] = {}
    by_acr = _acr_sample_weights(targets, acr_weights)  # once per batch, for every task
    for task, z in logits.items():
        n, classes = z.shape
        if task not in targets:
            out[task] = z.sum() * 0.0  # keeps the head in the graph (Opacus needs its grads)
            continue
        y = targets[task].to(z.device).long().reshape(-1)
        if y.numel() != n:
            raise DataError(f"task {task!r}: {y.numel()} targets for a batch of {n}")
        if bool((y >= classes).any()) or bool((y < -1).any()):
            raise DataError(
                f"task {task!r}: targets must be -1 (missing) or 0..{classes - 1}, got "
                f"{sorted(set(y.tolist()))}"
            )
        u = uncertainty.get(task)
        u = torch.zeros(n, device=z.device) if u is None else u.to(z.device, z.dtype).reshape(-1)
        present = y >= 0
        w = torch.where(present, 1.0 - u.clamp(0.0, 1.0), torch.zeros_like(u))
        safe_y = y.clamp(min=0)  # missing -> class 0, then multiplied by w = 0: zero gradient
        ce = F.cross_entropy(z, safe_y, reduction="none")
        if by_acr is not None:
            if by_acr.numel() != n:
                raise DataError(f"task 'acr': {by_acr.numel()} targets for a batch of {n}")
            ce = ce * by_acr.to(ce)
        out[task] = (w * ce).sum() / max(n, 1)
    return out


def weighted_task_loss(
    logits: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    uncertainty: Mapping[str, Tensor],
    *,
    acr_weights: Tensor | None = None,
) -> Tensor:
    """multi-task paper Eq. 1-2: sum over tasks of (1 - u)-weighted cross-entropy, batch-averaged.

    Targets are class indices with -1 for a missing label, whose weight is 0 (zero loss and
    exactly zero gradient). The sum over samples is divided by the batch size, not by the sum
    of weights: uncertain labels shrink the loss, as in the seed ("no additional
    normalization"). A task in ``logits`` without targets counts as missing everywhere.
    ``acr_weights`` (6 values, ACR 1-6) multiplies every task's loss of a sample by the weight
    of the sample's ACR class (the paper's fine-tuning weighs "all samples having ACR in
    {4, 5}"); a sample without an ACR label weighs 1.
    """
    losses = _task_losses(logits, targets, uncertainty, acr_weights)
    if not losses:
        raise DataError("weighted_task_loss: no task logits (every head is switched off)")
    return torch.stack(list(losses.values())).sum()


def _reconstruction_loss(outputs: Mapping[str, Any], x: Tensor) -> Tensor | None:
    rec = outputs.get("reconstruction")
    return None if rec is None else F.mse_loss(rec, x.to(rec.device, rec.dtype))


def mtl_loss(
    outputs: Mapping[str, Any],
    batch: Batch,
    *,
    recon_weight: float = 1.0,
    acr_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """multi-task paper Eq. 3: reconstruction MSE plus the weighted task losses; also the parts.

    ``parts`` has ``total``, ``classification``, ``reconstruction`` (0 without decoder) and
    ``task_<name>`` per task, as floats.
    """
    x, targets, uncertainty = batch
    losses = _task_losses(outputs["logits"], targets, uncertainty, acr_weights)
    cls = torch.stack(list(losses.values())).sum() if losses else x.new_zeros(())
    rec = _reconstruction_loss(outputs, x)
    total = cls if rec is None else cls + recon_weight * rec
    parts = {
        "total": float(total.detach()),
        "classification": float(cls.detach()),
        "reconstruction": 0.0 if rec is None else float(rec.detach()),
    }
    parts.update({f"task_{t}": float(v.detach()) for t, v in losses.items()})
    return total, parts


def finetune_acr_weights(high: float = 20.0) -> Tensor:
    """The seed's fine-tuning sample weights by ACR 1-6: ``high`` for ACR 4-5, 1 elsewhere.

    Section 3.3.5: "We set the weight to 20 for all samples having ACR in {4, 5}, and to 1 for
    all the other classes": a sample's weight follows its ACR assessment, so a confirmed
    ACR 6 cancer weighs 1 although fine-tuning labels it malignant as ACR 4-5 are.
    """
    return torch.tensor([1.0, 1.0, 1.0, high, high, 1.0])


def mtl_augmentation(
    *,
    p: float = 0.5,
    zoom: Sequence[float] = (0.8, 1.2),
    translate: float = 0.1,
    vertical_flip: bool = True,
) -> Callable[[Tensor], Tensor]:
    """The multi-task paper's training augmentation (section 3.2) on one (C, H, W) image.

    Random translation (up to ``translate`` of the width and of the height), random zoom
    (scale drawn in ``zoom``, > 1 zooms in, about the centre, bilinear, background 0) and
    random vertical flip, each applied independently with probability ``p``: "each image
    can be modified with none, one, or several augmentations with a probability of 0.5 for
    each technique". No shear, no horizontal flip (the chest wall stays on its side).
    torchvision transforms v2 (``RandomAffine``, ``RandomVerticalFlip``) drawing from
    torch's global generator, which the training handler seeds.
    """
    from torchvision.transforms import InterpolationMode, v2

    lo, hi = (float(v) for v in zoom)
    steps: list[nn.Module] = []
    if translate > 0:
        shift = v2.RandomAffine(degrees=0.0, translate=(translate, translate))
        steps.append(v2.RandomApply([shift], p=p))
    if (lo, hi) != (1.0, 1.0):
        scale = v2.RandomAffine(
            degrees=0.0, scale=(lo, hi), interpolation=InterpolationMode.BILINEAR
        )
        steps.append(v2.RandomApply([scale], p=p))
    if vertical_flip:
        steps.append(v2.RandomVerticalFlip(p=p))
    return v2.Compose(steps) if steps else (lambda x: x)


class MultiTaskDataset(Dataset):
    """Images plus per-task targets (-1 = missing) and uncertainties, one row per image.

    ``images`` is anything with ``__getitem__(int)`` returning an H x W (or 1 x H x W) array
    (a numpy array, a memory-mapped cache) or a callable ``row -> image``. uint16 images are
    scaled to [0, 1]; other dtypes are cast to float32 as they are. ``transform`` maps the
    (1, H, W) float32 tensor to another. Items: ``(x, {task: int64}, {task: float32})``.
    """

    def __init__(
        self,
        images: Any | Callable[[int], np.ndarray],
        targets: Mapping[str, np.ndarray],
        uncertainty: Mapping[str, np.ndarray],
        *,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if not targets:
            raise DataError("MultiTaskDataset: no targets (pass at least one task)")
        lengths = {f"targets[{t!r}]": len(v) for t, v in targets.items()}
        lengths.update({f"uncertainty[{t!r}]": len(v) for t, v in uncertainty.items()})
        if not callable(images) and hasattr(images, "__len__"):
            lengths["images"] = len(images)
        if len(set(lengths.values())) != 1:
            raise DataError(f"MultiTaskDataset: lengths differ: {lengths}")
        missing_u = sorted(set(targets) - set(uncertainty))
        if missing_u:
            raise DataError(f"MultiTaskDataset: no uncertainty for task(s) {missing_u}")
        self.images = images
        self.targets = {
            t: torch.as_tensor(np.asarray(v), dtype=torch.int64) for t, v in targets.items()
        }
        self.uncertainty = {
            t: torch.as_tensor(np.asarray(uncertainty[t]), dtype=torch.float32) for t in targets
        }
        self.transform = transform
        self._n = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> Batch:
        i = int(i)
        raw = self.images(i) if callable(self.images) else self.images[i]
        arr = np.asarray(raw)
        if arr.dtype == np.uint16:
            arr = arr.astype(np.float32) / 65535.0
        x = torch.as_tensor(np.array(arr, dtype=np.float32, copy=True))
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if x.dim() != 3:
            raise DataError(f"MultiTaskDataset: image {i} has shape {tuple(arr.shape)}, not HxW")
        if self.transform is not None:
            x = self.transform(x)
        return (
            x,
            {t: v[i] for t, v in self.targets.items()},
            {t: v[i] for t, v in self.uncertainty.items()},
        )


def collate_mtl(items: Sequence[Batch]) -> Batch:
    """Stack images and every target/uncertainty dict of a list of dataset items."""
    if not items:
        raise DataError("collate_mtl: empty batch")
    x = torch.stack([it[0] for it in items])
    targets = {t: torch.stack([it[1][t] for it in items]) for t in items[0][1]}
    unc = {t: torch.stack([it[2][t] for it in items]) for t in items[0][2]}
    return x, targets, unc


def _to(batch: Batch, device: str | torch.device | Runtime) -> Batch:
    x, t, u = batch
    move = device.batch if isinstance(device, Runtime) else (lambda v: v.to(device))
    return move(x), {k: move(v) for k, v in t.items()}, {k: move(v) for k, v in u.items()}


def _optimizer(model: nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise DataError(f"unknown optimizer {name!r}; valid: adam, sgd")


def train_mtl(
    model: nn.Module,
    loader: DataLoader,
    *,
    epochs: int,
    lr: float,
    optimizer: str = "adam",
    device: str | torch.device = "cpu",
    acr_weights: Tensor | None = None,
    recon_weight: float = 1.0,
    max_steps: int | None = None,
    privacy: Any | None = None,
    runtime: Runtime | None = None,
    optimizer_state: dict | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place with :func:`mtl_loss`; return example-weighted mean loss parts.

    Returns ``total``, ``classification``, ``reconstruction``, ``task_<name>``, ``steps`` and
    ``num_examples`` (floats), and ``optimizer_state``, the optimiser's state_dict after the
    last step. ``optimizer_state`` given (a previous call's) continues that optimiser (Adam's
    moments and step count) instead of starting a fresh one (the paper trains one Adam run;
    docs/mtl_finetune.md compares the two).

    ``privacy`` is a :class:`fedmammo.privacy.engine.DPSession` (or anything with the same
    ``attach(model, optimizer, loader)`` / ``after_training(steps)`` pair), called before and
    after training. Under DP the session swaps ``loader``'s sampler for Poisson sampling at
    rate ``1 / len(loader)`` (same number of steps per epoch), clips every example's gradient
    (the multi-task loss is a per-example sum, so per-example gradients are exact with
    instance or group norm; BatchNorm is refused, naming the layer) and adds the planned
    noise. An empty Poisson batch is skipped without a step but still accounted (the session
    counts every batch drawn), as in ``train_classifier``. ``runtime`` (a
    :class:`~fedmammo.training.runtime.Runtime`) overrides ``device`` and adds mixed
    precision and channels_last; None keeps the plain float32 loop.
    """
    run = runtime or Runtime(device=str(device))
    if privacy is not None:
        run.check_dp()
        keep_freed_memory()  # DP steps churn tens of MB: keep the heap (see runtime)
    run.prepare(model).train()
    opt = base_opt = _optimizer(model, optimizer, lr)
    if optimizer_state is not None:
        base_opt.load_state_dict(optimizer_state)
    if privacy is not None:
        model, opt, loader = privacy.attach(model, opt, loader)
    backward = getattr(privacy, "backward", Tensor.backward)
    scaler = run.scaler()
    sums: dict[str, float] = {}
    steps = seen = 0
    for _ in progress(range(epochs), "multi-task epochs"):
        for batch in loader:
            if max_steps is not None and steps >= max_steps:
                break
            x, targets, unc = _to(batch, run)
            n = x.shape[0]
            if n == 0:
                continue
            opt.zero_grad(set_to_none=True)
            with run.autocast():
                total, parts = mtl_loss(
                    model(x),
                    (x, targets, unc),
                    recon_weight=recon_weight,
                    acr_weights=acr_weights,
                )
            if scaler is not None:
                scaler.scale(total).backward()
                scaler.step(opt)
                scaler.update()
            else:
                backward(total)
                opt.step()
            steps += 1
            seen += n
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * n
    if privacy is not None:
        privacy.after_training(steps)
    metrics: dict[str, Any] = {k: v / max(seen, 1) for k, v in sums.items()}
    metrics.update(steps=float(steps), num_examples=float(seen))
    log.debug("train_mtl: %d steps, %d examples, loss %.4f", steps, seen, metrics.get("total", 0))
    metrics["optimizer_state"] = base_opt.state_dict()
    return metrics


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    keep = labels >= 0
    if len(np.unique(labels[keep])) < 2:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels[keep], scores[keep]))


def _balanced_accuracy(labels: np.ndarray, pred: np.ndarray) -> float:
    keep = labels >= 0
    if not keep.any():
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes predicted but absent from y_true
        from sklearn.metrics import balanced_accuracy_score

        return float(balanced_accuracy_score(labels[keep], pred[keep]))


@torch.no_grad()
def evaluate_mtl(
    model: nn.Module, loader: DataLoader, *, device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Losses and task metrics of ``model`` on ``loader`` (eval mode, no gradients).

    Scalars: ``total``/``classification``/``reconstruction``/``task_<name>`` (mean loss),
    ``num_examples``, ``malignancy_auc`` and ``view_auc`` (ROC AUC on present labels, NaN
    with one class), ``acr_balanced_accuracy`` and ``density_balanced_accuracy``. Arrays for
    the caller (bootstrap CIs, strata by density/view): ``predictions[task]`` (N, C)
    probabilities, ``labels[task]`` (N,) targets with -1, ``malignancy_scores`` (N,) P(class 1).
    Labels of tasks the model has no head for are still returned (for stratification).
    """
    model.to(device).eval()
    sums: dict[str, float] = {}
    probs: dict[str, list[np.ndarray]] = {}
    labels: dict[str, list[np.ndarray]] = {}
    seen = 0
    for batch in loader:
        x, targets, unc = _to(batch, device)
        n = x.shape[0]
        if n == 0:
            continue
        outputs = model(x)
        _, parts = mtl_loss(outputs, (x, targets, unc))
        seen += n
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * n
        for task, z in outputs["logits"].items():
            probs.setdefault(task, []).append(torch.softmax(z.float(), dim=1).cpu().numpy())
        for task, y in targets.items():
            labels.setdefault(task, []).append(y.cpu().numpy().astype(np.int64))
    result: dict[str, Any] = {k: v / max(seen, 1) for k, v in sums.items()}
    result["num_examples"] = float(seen)
    pred = {t: np.concatenate(v) for t, v in probs.items()}
    lab = {t: np.concatenate(v) for t, v in labels.items()}
    result["predictions"] = pred
    result["labels"] = lab
    for task in ("malignancy", "view"):
        if task in pred and task in lab:
            result[f"{task}_auc"] = _auc(lab[task], pred[task][:, 1])
    for task in ("acr", "density"):
        if task in pred and task in lab:
            result[f"{task}_balanced_accuracy"] = _balanced_accuracy(
                lab[task], pred[task].argmax(axis=1)
            )
    if "malignancy" in pred:
        result["malignancy_scores"] = pred["malignancy"][:, 1]
    return result
