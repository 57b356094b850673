"""Result tables in the style of the periodic-sampling paper's Tables 2-4 (AUC with CI, delta-AUC,
p-value)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fedmammo.evaluation.metrics import (
    bootstrap_auc,
    delta_auc,
    is_significant_decrease,
    is_significant_increase,
)

__all__ = [
    "COMPARISON_COLUMNS",
    "comparison_row",
    "comparison_rows",
    "format_auc",
    "format_p_value",
    "markdown_table",
]

#: Columns of :func:`comparison_rows` shown by :func:`markdown_table` by default.
COMPARISON_COLUMNS: tuple[str, ...] = ("AUC baseline", "Method", "AUC", "ΔAUC", "p-value")


def format_auc(value: float, low: float | None, high: float | None, *, scale: float = 100.0) -> str:
    """Return ``"84.05 (82.64, 85.41)"`` (AUC in percent with its CI); ``"n/a"`` for NaN."""
    if value is None or not math.isfinite(value):
        return "n/a"
    text = f"{value * scale:.2f}"
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        text += f" ({low * scale:.2f}, {high * scale:.2f})"
    return text


def format_p_value(p: float) -> str:
    """Return a p-value as in periodic-sampling paper: four decimals, ``"< 0.0001"`` below."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def comparison_row(
    method: str,
    auc: Sequence[float],
    baseline: Sequence[float],
    delta: Sequence[float],
    p_value: float,
) -> dict[str, Any]:
    """One Tables 2-4 row from (value, low, high) triples: raw numbers and formatted columns."""
    return {
        "auc": auc[0],
        "auc_low": auc[1],
        "auc_high": auc[2],
        "baseline_auc": baseline[0],
        "baseline_low": baseline[1],
        "baseline_high": baseline[2],
        "delta": delta[0],
        "delta_low": delta[1],
        "delta_high": delta[2],
        "p_value": p_value,
        "AUC baseline": format_auc(*baseline),
        "Method": method,
        "AUC": format_auc(*auc),
        "ΔAUC": format_auc(*delta),
        "p-value": format_p_value(p_value),
    }


def comparison_rows(
    y_true: Any,
    baseline_score: Any,
    method_scores: Mapping[str, Any],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    groups: Any = None,
) -> list[dict[str, Any]]:
    """Return one row per method: raw numbers plus the formatted columns of Tables 2-4
    (bootstrap CIs by patient with ``groups``, one key per sample).

    Raw keys: method, auc, auc_low, auc_high, baseline_auc, baseline_low, baseline_high,
    delta, delta_low, delta_high, p_value, significance (``increase`` / ``decrease`` / ``""``).
    """
    boot = {"n_boot": n_boot, "seed": seed, "groups": groups}
    base = bootstrap_auc(y_true, baseline_score, **boot)
    rows = []
    for method, score in method_scores.items():
        auc = bootstrap_auc(y_true, score, **boot)
        delta = delta_auc(y_true, baseline_score, score, **boot)
        if is_significant_increase(delta[1], delta[3]):
            significance = "increase"
        elif is_significant_decrease(delta[2], delta[3]):
            significance = "decrease"
        else:
            significance = ""
        rows.append(
            {
                "method": method,
                "significance": significance,
                **comparison_row(method, auc, base, delta[:3], delta[3]),
            }
        )
    return rows


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = COMPARISON_COLUMNS
) -> str:
    """Return rows as a GitHub markdown table with the given columns (missing cells empty)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = [str(row.get(c, "")).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
