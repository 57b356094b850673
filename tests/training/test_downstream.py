"""Downstream tasks of Li et al.: crops and pairs from a phantom centre, training, evaluation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fedmammo.config import CentreProfile
from fedmammo.data.prepare import materialise_centre
from fedmammo.errors import DataError
from fedmammo.evaluation.bootstrap import accuracy_ci
from fedmammo.evaluation.detection import bootstrap_detection_ap, box_iou
from fedmammo.models.contrastive import build_contrastive_encoder
from fedmammo.models.detection import build_fcos
from fedmammo.privacy.accounting import CentreAccountant, PrivacyBudget
from fedmammo.privacy.engine import DPIncompatibleModelError, DPSession
from fedmammo.training.downstream import (
    MatchPairs,
    birads_class,
    density_labels,
    detection_targets,
    downstream_frame,
    evaluate_classifier,
    evaluate_detector,
    evaluate_matching,
    mass_crop_box,
    mass_crops,
    matching_pairs,
    pair_distances,
    predict_detections,
    train_detector,
    train_encoder_classifier,
    train_matching,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def centre(tmp_path_factory):
    profile = CentreProfile.model_validate(
        {
            "name": "dg",
            "data": {
                "synthetic": {
                    "image_height": 64,
                    "calcification_fraction": 0.0,
                    "segments": [
                        {
                            "manufacturer": "Ma",
                            "patients": 6,
                            "prevalence": 0.5,
                            "lesion_prevalence": 1.0,
                        }
                    ],
                }
            },
        }
    )
    data = materialise_centre(profile, tmp_path_factory.mktemp("dg"), image_size=(64, 48))
    return data, downstream_frame(data, None)


def _encoder(norm: str = "batch"):
    torch.manual_seed(0)
    return build_contrastive_encoder(arch="resnet_slim", width=8, norm=norm)


# ---- inputs -----------------------------------------------------------------------------
def test_mass_crop_is_the_long_side_plus_twenty_percent_inside_the_image():
    # a 10 x 6 box centred at (15, 13): side 12, centred
    assert mass_crop_box([10, 10, 20, 16], (64, 48)) == (9, 7, 21, 19)
    # a box at the corner is moved inside the image
    assert mass_crop_box([0, 0, 10, 10], (64, 48)) == (0, 0, 12, 12)


def test_birads_and_density_classes():
    assert [birads_class(v) for v in (1, 2, 3, 4, 5, 6, pd.NA)] == [0, 0, 0, 1, 2, 2, -1]
    frame = pd.DataFrame({"density": pd.array([1, 2, 3, 4, pd.NA], dtype="Int8")})
    assert density_labels(frame).tolist() == [0, 0, 1, 1, -1]
    assert density_labels(frame, binary=False).tolist() == [0, 1, 2, 3, -1]


def test_crops_and_targets_follow_the_masses_of_the_phantom(centre):
    # Prepare
    data, frame = centre
    # Execute
    crops = mass_crops(data.cache.get, frame, out_size=32)
    birads = mass_crops(data.cache.get, frame, out_size=32, label="birads")
    targets = detection_targets(frame)
    # Assert: one crop per mass box, labelled by that lesion, and the crop holds its mass
    assert len(crops) == sum(len(t) for t in targets) > 0
    assert crops.crops.shape == (len(crops), 32, 32)
    by_id = dict(zip(frame["image_id"], frame["malignant"], strict=True))
    assert crops.labels.tolist() == [int(by_id[i]) for i in crops.image_ids]  # one mass per image
    acr = dict(zip(frame["image_id"], frame["acr"], strict=True))
    assert birads.labels.tolist() == [birads_class(acr[i]) for i in birads.image_ids]
    rows = {i: k for k, i in enumerate(frame["image_id"])}
    for image_id, box in zip(crops.image_ids, crops.boxes, strict=True):
        (mass,) = targets[rows[image_id]]
        assert box[0] <= mass[0] and box[1] <= mass[1] and box[2] >= mass[2] and box[3] >= mass[3]


def test_matching_pairs_are_one_breast_and_negatives_avoid_the_mass(centre):
    # Prepare
    data, frame = centre
    # Execute
    pairs = matching_pairs(data.cache.get, frame, out_size=32, seed=0)
    # Assert: every breast with a mass in both views gives one positive (and one negative)
    with_mass = frame[[len(t) == 1 for t in detection_targets(frame)]]
    breasts = with_mass.groupby(["patient_id", "laterality"])["view"].nunique()
    assert int(pairs.match.sum()) == int((breasts == 2).sum()) > 0
    assert len(pairs) == 2 * int(pairs.match.sum())
    assert set(pairs.patient_ids) <= set(with_mass["patient_id"])
    for k in np.flatnonzero(pairs.match == 0):
        positive = k - 1  # the negative follows its breast's positive and differs in one crop
        same = [
            np.array_equal(pairs.cc[k], pairs.cc[positive]),
            np.array_equal(pairs.mlo[k], pairs.mlo[positive]),
        ]
        assert sorted(same) == [False, True]


# ---- classification ---------------------------------------------------------------------
def _bright_dark(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = 0.1 + 0.6 * y[:, None, None] + 0.2 * rng.random((n, 32, 32))
    return x.astype(np.float32), y


def test_classifier_learns_an_easy_task_and_reports_accuracy_and_auc_with_cis():
    # Prepare
    x, y = _bright_dark(32, 0)
    x_test, y_test = _bright_dark(16, 1)
    # Execute
    result = train_encoder_classifier(
        _encoder("group"), x, y, num_classes=2, epochs=3, batch_size=8, optimizer="adam", seed=0
    )
    records = evaluate_classifier(result.model, x_test, y_test, ["a", "b"] * 8, n_boot=200)
    # Assert
    table = {(r["segment"], r["metric"]): r for r in records}
    assert set(table) == {(s, m) for s in (None, "a", "b") for m in ("accuracy", "auc")}
    overall = table[(None, "accuracy")]
    assert overall["value"] >= 0.9 and overall["ci_low"] <= overall["value"] <= overall["ci_high"]
    assert table[(None, "auc")]["value"] >= 0.9
    assert result.steps == 12 and result.num_examples == 96


class _Brightness(nn.Module):
    """Two-class logits from a crop's mean intensity (bright = class 1), no training."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(m), 20 * (m - 0.45)], dim=1)


def test_classifier_cis_resample_patients_and_copies_of_a_patient_do_not_narrow_them():
    # Prepare: 24 images of 24 patients (two segments); the same set with every image 4 times
    x, y = _bright_dark(24, 2)
    y[::5] = 1 - y[::5]  # some mistakes, so accuracy has a CI
    y[3] = -1  # an unlabelled image is left out with its patient key
    patients = np.array([f"p{k}" for k in range(24)])
    segments = np.where(np.arange(24) < 12, "a", "b")
    x4, y4, segments4 = np.tile(x, (4, 1, 1)), np.tile(y, 4), np.tile(segments, 4)
    model = _Brightness()
    # Execute
    once = evaluate_classifier(model, x, y, segments, n_boot=300, patients=patients)
    copies = evaluate_classifier(
        model, x4, y4, segments4, n_boot=300, patients=np.tile(patients, 4)
    )
    as_images = evaluate_classifier(model, x4, y4, segments4, n_boot=300)
    # Assert: the same records by patient; about half as wide when the copies count as cases
    for a, b in zip(once, copies, strict=True):
        assert (a["segment"], a["metric"]) == (b["segment"], b["metric"])
        assert [a["value"], a["ci_low"], a["ci_high"]] == pytest.approx(
            [b["value"], b["ci_low"], b["ci_high"]], rel=1e-12
        )
    width = {(r["segment"], r["metric"]): r["ci_high"] - r["ci_low"] for r in once}
    for r in as_images:
        if r["segment"] is None:
            assert r["ci_high"] - r["ci_low"] < 0.7 * width[(None, r["metric"])]
    with pytest.raises(DataError, match="patients has 3 keys for 24 samples"):
        evaluate_classifier(model, x, y, patients=["p0", "p1", "p2"])


def test_frozen_backbone_keeps_the_pretrained_weights_and_missing_labels_are_dropped():
    # Prepare
    encoder = _encoder()
    x, y = _bright_dark(8, 0)
    y[:2] = -1
    # Execute
    result = train_encoder_classifier(
        encoder, x, y, num_classes=2, freeze_backbone=True, batch_size=4, optimizer="adam", seed=0
    )
    # Assert
    for name, value in encoder.backbone.state_dict().items():
        if value.is_floating_point() and "running" not in name:
            assert torch.equal(result.model.backbone.state_dict()[name], value)
    assert result.num_examples == 6
    with pytest.raises(DataError, match="labels in 0..1"):
        train_encoder_classifier(encoder, x, y + 2, num_classes=2)


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_classifier_under_dp_needs_group_norm_and_spends_epsilon():
    # Prepare
    x, y = _bright_dark(16, 0)

    def session():
        budget = PrivacyBudget(target_epsilon=None, noise_multiplier=1.0, delta=1e-5)
        return DPSession(
            budget, CentreAccountant("rdp"), planned_steps=4, phase="density", centre="A", seed=0
        )

    # Execute
    result = train_encoder_classifier(
        _encoder("group"), x, y, num_classes=2, batch_size=8, seed=0, privacy=session()
    )
    # Assert
    assert result.epsilon is not None and 0 < result.epsilon < math.inf
    with pytest.raises(DPIncompatibleModelError):
        train_encoder_classifier(_encoder("batch"), x, y, num_classes=2, privacy=session())


# ---- matching ---------------------------------------------------------------------------
class _MeanTimes(nn.Module):
    """Embeds a crop as 100 x its mean intensity (distances known by hand)."""

    def forward(self, x):
        return 100 * x.mean(dim=(1, 2, 3))[:, None]


def test_matching_accuracy_thresholds_the_embedding_distance_at_half_the_margin():
    # Prepare: distances 2, 4, 6, 8 (means differ by 0.02 .. 0.08)
    cc = np.zeros((4, 8, 8), np.float32)
    mlo = np.stack([np.full((8, 8), d, np.float32) for d in (0.02, 0.04, 0.06, 0.08)])
    pairs = MatchPairs(cc, mlo, np.array([1, 0, 0, 0]), np.array(["p"] * 4), np.array(["s"] * 4))
    # Execute
    distances = pair_distances(_MeanTimes(), pairs)
    records = evaluate_matching(_MeanTimes(), pairs, margin=10.0, n_boot=0)
    # Assert: predicted match = distance < 5 -> (1, 1, 0, 0) vs truth (1, 0, 0, 0)
    assert np.allclose(distances, [2, 4, 6, 8], atol=1e-4)
    assert records[0] == {
        "segment": None,
        "metric": "accuracy",
        "value": 0.75,
        "ci_low": None,
        "ci_high": None,
    }


def test_matching_cis_resample_the_pairs_patients():
    # Prepare: 10 patients with 3 pairs each, distances such that a patient is all right or not
    rng = np.random.default_rng(0)
    patients = np.repeat([f"p{k}" for k in range(10)], 3)
    match = np.tile([1, 0, 0], 10)
    wrong = np.repeat(rng.random(10) < 0.3, 3)
    distance = np.where((match == 1) ^ wrong, 0.02, 0.08)  # x 100: 2 (match) or 8
    cc = np.zeros((30, 8, 8), np.float32)
    mlo = (np.ones((30, 8, 8)) * distance[:, None, None]).astype(np.float32)
    pairs = MatchPairs(cc, mlo, match, patients, np.array(["s"] * 30))
    # Execute
    records = evaluate_matching(_MeanTimes(), pairs, margin=10.0, n_boot=300, seed=1)
    # Assert: the CI of the correct flags resampled by patient
    expected = accuracy_ci(
        match, (distance < 0.05).astype(int), n_boot=300, seed=1, groups=patients
    )
    got = records[0]
    assert [got["value"], got["ci_low"], got["ci_high"]] == pytest.approx(list(expected))
    assert got["value"] == pytest.approx(1 - wrong.mean())


def test_matching_trains_on_phantom_pairs(centre):
    data, frame = centre
    pairs = matching_pairs(data.cache.get, frame, out_size=32, seed=0)
    result = train_matching(_encoder(), pairs, epochs=2, batch_size=4, optimizer="adam", seed=0)
    assert result.steps == 2 * math.ceil(len(pairs) / 4)
    assert all(math.isfinite(h["loss"]) for h in result.history)
    records = evaluate_matching(result.model, pairs, n_boot=50)
    assert 0.0 <= records[0]["value"] <= 1.0


# ---- detection --------------------------------------------------------------------------
def test_detector_trains_and_reports_ap_per_segment(centre):
    # Prepare
    data, frame = centre
    images = np.stack([data.cache.get(i) for i in frame["image_id"]])
    boxes = detection_targets(frame)
    detector = build_fcos(image_size=(64, 48), encoder=_encoder())
    # Execute
    result = train_detector(detector, images[:8], boxes[:8], batch_size=4, seed=0)
    records = evaluate_detector(detector, images[:8], boxes[:8], frame["segment"][:8], n_boot=20)
    patients = frame["patient_id"].to_numpy()[:8]
    by_patient = evaluate_detector(
        detector, images[:8], boxes[:8], frame["segment"][:8], n_boot=20, patients=patients
    )
    # Assert
    assert result.steps == 2 and math.isfinite(result.loss)
    assert [r["segment"] for r in records] == [None, "S-Ma"] and records[0]["metric"] == "ap50"
    assert 0.0 <= records[0]["value"] <= 1.0 and records[0]["value"] == records[1]["value"]
    assert box_iou(boxes[1], boxes[1])[0, 0] == pytest.approx(1.0)
    predictions = predict_detections(detector, images[:8])
    expected = bootstrap_detection_ap(predictions, boxes[:8], n_boot=20, groups=patients)
    got = by_patient[0]
    assert got["value"] == pytest.approx(expected[0])
    # the 8 images are 2 patients: too few for a CI (fewer than 5), by either path
    assert len(set(patients)) < 5 and math.isnan(expected[1]) and math.isnan(expected[2])
    assert got["ci_low"] is None and got["ci_high"] is None
    eight = bootstrap_detection_ap(predictions, boxes[:8], n_boot=20)  # 8 images, no patients
    assert eight[1] <= eight[0] <= eight[2]
