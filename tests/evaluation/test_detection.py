"""Detection AP at IoU 0.5 against hand-computed cases, and its bootstrap over images or
patients."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmammo.evaluation.detection import (
    average_precision,
    bootstrap_detection_ap,
    box_iou,
    detection_ap,
    match_image,
)


def test_box_iou_by_hand():
    iou = box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert np.allclose(iou, [[1.0, 50 / 150, 0.0]])


def test_ap_of_a_hand_computed_case():
    # Prepare: two images with one mass each; image 1: a hit (0.9) and a miss (0.8),
    # image 2: a hit (0.7). Ranked: TP, FP, TP -> recall .5 .5 1, precision 1 .5 .667
    predictions = [
        {"boxes": np.array([[0, 0, 10, 10], [30, 30, 40, 40]]), "scores": np.array([0.9, 0.8])},
        {"boxes": np.array([[1, 1, 11, 11]]), "scores": np.array([0.7])},
    ]
    targets = [np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10]])]
    # Execute
    ap = detection_ap(predictions, targets)
    # Assert: 0.5 * 1 + 0.5 * 2/3 (envelope of precision over recall)
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_duplicates_count_as_false_positives_and_iou_threshold_applies():
    # a second box on the same mass is a false positive; a box with IoU 1/3 misses at 0.5
    scores, tp = match_image([[0, 0, 10, 10], [0, 0, 10, 9]], [0.6, 0.9], [[0, 0, 10, 10]])
    assert scores.tolist() == [0.9, 0.6] and tp.tolist() == [True, False]
    _, tp = match_image([[5, 0, 15, 10]], [0.9], [[0, 0, 10, 10]])
    assert tp.tolist() == [False]
    _, tp = match_image([[5, 0, 15, 10]], [0.9], [[0, 0, 10, 10]], iou_threshold=0.3)
    assert tp.tolist() == [True]


def test_ap_edge_cases():
    assert average_precision([0.9, 0.5], [True, True], 2) == pytest.approx(1.0)
    assert average_precision([0.9], [True], 4) == pytest.approx(0.25)  # recall stops at 1/4
    assert average_precision([], [], 3) == 0.0
    assert math.isnan(average_precision([0.9], [False], 0))
    # an image without masses only adds its false positives
    pred = [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0)}]
    assert detection_ap(pred * 2, [np.array([[0, 0, 5, 5]]), np.zeros((0, 4))]) == 0.0


def test_bootstrap_resamples_images_and_brackets_the_estimate():
    # Prepare: 20 images, half detected perfectly, half with a miss ranked first
    rng = np.random.default_rng(0)
    predictions, targets = [], []
    for k in range(20):
        gt = np.array([[10, 10, 20, 20]], dtype=float)
        if k % 2:
            boxes, scores = gt, np.array([rng.uniform(0.5, 1)])
        else:
            boxes, scores = np.array([[40, 40, 50, 50]]), np.array([rng.uniform(0, 1)])
        predictions.append({"boxes": boxes, "scores": scores})
        targets.append(gt)
    # Execute
    ap, low, high = bootstrap_detection_ap(predictions, targets, n_boot=300, seed=0)
    again = bootstrap_detection_ap(predictions, targets, n_boot=300, seed=0)
    # Assert
    assert ap == pytest.approx(detection_ap(predictions, targets))
    assert low < ap < high and (ap, low, high) == again
    assert math.isnan(bootstrap_detection_ap(predictions, targets, n_boot=0)[1])


def test_copies_of_a_patients_images_do_not_narrow_the_patient_bootstrap_of_ap():
    # Prepare: 30 images (one per patient), then each image three times under its patient
    rng = np.random.default_rng(1)
    predictions, targets = [], []
    for _ in range(30):
        gt = np.array([[10, 10, 20, 20]], dtype=float)
        hit = rng.random() < 0.6
        boxes = gt if hit else np.array([[40, 40, 50, 50]], dtype=float)
        predictions.append({"boxes": boxes, "scores": np.array([rng.random()])})
        targets.append(gt)
    patients = np.arange(30)
    # Execute
    once = bootstrap_detection_ap(predictions, targets, n_boot=300, seed=2, groups=patients)
    copies = bootstrap_detection_ap(
        predictions * 3, targets * 3, n_boot=300, seed=2, groups=np.tile(patients, 3)
    )
    as_images = bootstrap_detection_ap(predictions * 3, targets * 3, n_boot=300, seed=2)
    # Assert: AP of a doubled-up set is the set's AP, so the patient CI is the same; counting
    # the copies as images makes it much narrower
    assert copies == pytest.approx(once, rel=1e-12)
    assert as_images[2] - as_images[1] < 0.7 * (once[2] - once[1])
