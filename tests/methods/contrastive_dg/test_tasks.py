"""contrastive_dg's centre-side work: several task models' metrics averaged against the
single-model references, supervised pre-training, the validation loss."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fedmammo.evaluation.detection import detection_ap
from fedmammo.methods.contrastive_dg.params import FinetuneParams, PretrainParams
from fedmammo.methods.contrastive_dg.tasks import (
    TaskInputs,
    evaluate_task,
    pretrain,
    validation_records,
)
from fedmammo.models.contrastive import build_contrastive_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FT = FinetuneParams()


class _Classifier(nn.Module):
    """Predicts class 1 when an image's mean exceeds ``threshold``."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([self.threshold - m, m - self.threshold], dim=1) * 10


class _Detector(nn.Module):
    """Returns fixed detections per image (in call order)."""

    def __init__(self, detections: list[dict]) -> None:
        super().__init__()
        self.detections = detections

    def forward(self, images):
        out = self.detections[: len(images)]
        self.detections = self.detections[len(images) :]
        return [
            {
                "boxes": torch.tensor(d["boxes"], dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor(d["scores"], dtype=torch.float32),
                "labels": torch.ones(len(d["scores"]), dtype=torch.int64),
            }
            for d in out
        ]


def test_accuracy_of_several_models_is_the_mean_of_their_accuracies():
    # Prepare: 8 images of mean 0.1..0.8, labels 1 from 0.5 up
    images = np.stack([np.full((8, 8), v, np.float32) for v in np.linspace(0.1, 0.8, 8)])
    labels = (images.mean(axis=(1, 2)) > 0.45).astype(np.int64)
    inputs = TaskInputs("density", images=images, labels=labels)
    models = [_Classifier(0.45), _Classifier(0.65)]
    # Execute
    both = evaluate_task("density", models, inputs, FT, n_boot=50)
    singles = [evaluate_task("density", [m], inputs, FT)[0]["value"] for m in models]
    # Assert
    assert singles == [1.0, 0.75]
    assert both[0]["metric"] == "density_accuracy"
    assert both[0]["value"] == pytest.approx(np.mean(singles))
    assert both[0]["ci_low"] <= both[0]["value"] <= both[0]["ci_high"]


def test_the_ci_resamples_patients_when_the_inputs_name_them():
    # Prepare: 12 patients of 4 identical crops each; a classifier right on 8 of them
    images = np.repeat(np.linspace(0.1, 0.8, 12), 4)[:, None, None] * np.ones((1, 8, 8))
    images = images.astype(np.float32)
    labels = (np.repeat(np.arange(12), 4) % 3 != 0).astype(np.int64)
    patients = np.repeat([f"p{k}" for k in range(12)], 4)
    model = [_Classifier(0.3)]
    # Execute
    by_patient = evaluate_task(
        "birads",
        model,
        TaskInputs("birads", images=images, labels=labels, patients=patients),
        FT,
        n_boot=300,
    )[0]
    by_crop = evaluate_task(
        "birads", model, TaskInputs("birads", images=images, labels=labels), FT, n_boot=300
    )[0]
    # Assert: same value; the crops of a patient are not four cases, so the CI is wider
    assert by_patient["value"] == by_crop["value"]
    width = {k: r["ci_high"] - r["ci_low"] for k, r in (("p", by_patient), ("c", by_crop))}
    assert width["p"] > 1.5 * width["c"]


def test_unlabelled_samples_are_left_out():
    images = np.zeros((4, 8, 8), np.float32)
    inputs = TaskInputs("birads", images=images, labels=np.array([0, 0, -1, 1]))
    (record,) = evaluate_task("birads", [_Classifier(0.5)], inputs, FT)
    assert record["value"] == pytest.approx(2 / 3)


def test_detection_ap_of_several_models_is_the_mean_of_the_reference_aps():
    # Prepare: 3 images with one mass each; two detectors of different quality
    gt = [np.array([[10, 10, 20, 20]], np.float32)] * 3
    good = [{"boxes": [[10, 10, 20, 20]], "scores": [0.9]}] * 3
    poor = [
        {"boxes": [[10, 10, 20, 20], [30, 30, 40, 40]], "scores": [0.2, 0.8]},
        {"boxes": [[40, 40, 50, 50]], "scores": [0.7]},
        {"boxes": [[11, 11, 21, 21]], "scores": [0.6]},
    ]
    inputs = TaskInputs("detection", images=np.zeros((3, 64, 48), np.float32), boxes=gt)
    # Execute
    (record,) = evaluate_task(
        "detection", [_Detector(good), _Detector(poor)], inputs, FT, fraction=0.5, n_boot=20
    )
    # Assert
    reference = [detection_ap(good, gt), detection_ap(poor, gt)]
    assert reference[0] == 1.0 and reference[1] < 1.0
    assert record["metric"] == "detection_ap50@0.5"
    assert record["value"] == pytest.approx(np.mean(reference))


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(n)],
            "patient_id": [f"p{k // 4}" for k in range(n)],
            "laterality": ["L", "L", "R", "R"] * (n // 4),
            "view": ["CC", "MLO"] * (n // 2),
            "malignant": [0, 1] * (n // 2),
        }
    )


def test_supervised_pretraining_fits_the_labels_and_is_seeded():
    # Prepare: malignant images are brighter
    rng = np.random.default_rng(0)
    frame = _frame(16)
    images = rng.uniform(0, 0.3, (16, 32, 24)).astype(np.float32)
    images[frame["malignant"].to_numpy() == 1] += 0.5
    p = PretrainParams(batch_size=8, steps_per_epoch=4, epochs=3, lr=1e-2, augment=False)

    def run():
        torch.manual_seed(0)
        enc = build_contrastive_encoder(
            arch="resnet_slim", width=4, projection_dim=2, norm="group"
        )  # no running statistics: eval mode predicts as training did
        result = pretrain(enc, images[:, None], frame, scheme="supervised", p=p, seed=1)
        return enc, result

    # Execute
    (enc, result), (_, again) = run(), run()
    records = {
        r["metric"]: r["value"]
        for r in validation_records(enc, images, frame, scheme="supervised", p=p, seed=0)
    }
    # Assert
    assert result.steps == 12 and result.history[-1]["loss"] < result.history[0]["loss"]
    assert all(torch.equal(result.state[k], again.state[k]) for k in result.state)
    assert records["val_accuracy"] == 1.0


def test_contrastive_validation_loss_is_seeded_and_positive():
    frame = _frame(8)
    images = np.random.default_rng(1).uniform(0, 1, (8, 32, 24)).astype(np.float32)
    enc = build_contrastive_encoder(arch="resnet_slim", width=4, projection_dim=8)
    p = PretrainParams(batch_size=4)
    # Execute
    a = validation_records(enc, images, frame, scheme="msvcl", p=p, seed=3)
    b = validation_records(enc, images, frame, scheme="msvcl", p=p, seed=3)
    # Assert: two batches of 4 images, 8 samples each: loss near log(7) for an untrained net
    assert a == b and a[0]["metric"] == "val_loss"
    assert 0 < a[0]["value"] < 2 * np.log(7)
