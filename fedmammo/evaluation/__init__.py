"""Evaluation: AUC with bootstrap CIs, delta-AUC p-values, WLL, operating points, tables.

Plots live in :mod:`fedmammo.evaluation.plots` (imported on demand: it loads matplotlib).
"""

from __future__ import annotations

from fedmammo.evaluation.metrics import (
    DEFAULT_THRESHOLDS,
    bootstrap_auc,
    classification_metrics,
    delta_auc,
    is_significant_decrease,
    is_significant_increase,
    metrics_by_segment,
    operating_points,
    p_value_from_ci,
    weighted_log_loss,
)
from fedmammo.evaluation.tables import comparison_rows, format_auc, format_p_value, markdown_table

__all__ = [
    "DEFAULT_THRESHOLDS",
    "bootstrap_auc",
    "classification_metrics",
    "comparison_rows",
    "delta_auc",
    "format_auc",
    "format_p_value",
    "is_significant_decrease",
    "is_significant_increase",
    "markdown_table",
    "metrics_by_segment",
    "operating_points",
    "p_value_from_ci",
    "weighted_log_loss",
]
