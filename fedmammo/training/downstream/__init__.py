"""Downstream tasks of Li et al. from a pre-trained backbone: detection, matching, BI-RADS,
density (each a short training function and an evaluation with bootstrap CIs)."""

from __future__ import annotations

from fedmammo.training.downstream._common import DownstreamResult
from fedmammo.training.downstream.classification import (
    EncoderClassifier,
    evaluate_classifier,
    predict_proba,
    train_encoder_classifier,
)
from fedmammo.training.downstream.crops import (
    CropSet,
    MatchPairs,
    birads_class,
    density_labels,
    downstream_frame,
    mass_boxes,
    mass_crop_box,
    mass_crops,
    matching_pairs,
)
from fedmammo.training.downstream.detection import (
    detection_targets,
    evaluate_detector,
    predict_detections,
    train_detector,
)
from fedmammo.training.downstream.matching import (
    MatchingNet,
    evaluate_matching,
    pair_distances,
    train_matching,
)

__all__ = [
    "CropSet",
    "DownstreamResult",
    "EncoderClassifier",
    "MatchPairs",
    "MatchingNet",
    "birads_class",
    "density_labels",
    "detection_targets",
    "downstream_frame",
    "evaluate_classifier",
    "evaluate_detector",
    "evaluate_matching",
    "mass_boxes",
    "mass_crop_box",
    "mass_crops",
    "matching_pairs",
    "pair_distances",
    "predict_detections",
    "predict_proba",
    "train_detector",
    "train_encoder_classifier",
    "train_matching",
]
