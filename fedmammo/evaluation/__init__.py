"""Evaluation: AUC with CIs, paired delta-AUC with CIs and p-values, WLL, operating points, tables.

Plots live in :mod:`fedmammo.evaluation.plots` (imported on demand: it loads matplotlib).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names are imported on first use (PEP 562): ``import fedmammo.evaluation.<module>`` (a centre
# recording results, a report) does not load scikit-learn through this package.
_WHERE = {
    "DEFAULT_THRESHOLDS": "metrics",
    "auc_ci": "metrics",
    "bootstrap_auc": "metrics",
    "classification_metrics": "metrics",
    "comparison_rows": "tables",
    "delta_auc": "metrics",
    "format_auc": "tables",
    "format_p_value": "tables",
    "is_significant_decrease": "metrics",
    "is_significant_increase": "metrics",
    "markdown_table": "tables",
    "metrics_by_segment": "metrics",
    "operating_points": "metrics",
    "paired_permutation_p": "metrics",
    "weighted_log_loss": "metrics",
}

if TYPE_CHECKING:
    from fedmammo.evaluation.metrics import (
        DEFAULT_THRESHOLDS,
        auc_ci,
        bootstrap_auc,
        classification_metrics,
        delta_auc,
        is_significant_decrease,
        is_significant_increase,
        metrics_by_segment,
        operating_points,
        paired_permutation_p,
        weighted_log_loss,
    )
    from fedmammo.evaluation.tables import (
        comparison_rows,
        format_auc,
        format_p_value,
        markdown_table,
    )

__all__ = [
    "DEFAULT_THRESHOLDS",
    "auc_ci",
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
    "paired_permutation_p",
    "weighted_log_loss",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
