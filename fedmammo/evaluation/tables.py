"""Result tables in the style of the periodic-sampling paper's Tables 2-4 (AUC with CI, delta-AUC,
p-value)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedmammo.evaluation.metrics import (
    MIN_UNITS_PER_CLASS,
    auc_ci,
    delta_auc,
    is_significant_decrease,
    is_significant_increase,
)

__all__ = [
    "COMPARISON_COLUMNS",
    "comparison_records",
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


#: Under every table giving a paired difference's p-value.
P_VALUE_NOTE = (
    "The two-sided p-value is a paired permutation test's (at random, a patient's scores from "
    "one model are exchanged with the other's, each model's scores as ranks; Bandos et al. "
    "2005), which holds its 5% level for two equally good models (measured: docs/report.md). "
    "The periodic-sampling paper reads p from the CI's width instead (Altman & Bland); the "
    "paired bootstrap CI alone is a little too narrow with few patients, so a difference is "
    "significant only when both hold (CI beside 0 and p < 0.05). A value without a CI and p "
    f"n/a: fewer than {MIN_UNITS_PER_CLASS} malignant or {MIN_UNITS_PER_CLASS} benign test "
    "patients, too few for a CI (docs/report.md)."
)


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
    (CIs over patients with ``groups``, one key per sample: each AUC's :func:`~fedmammo.
    evaluation.metrics.auc_ci`, the difference's paired bootstrap; none with ``n_boot`` 0).

    Raw keys: method, auc, auc_low, auc_high, baseline_auc, baseline_low, baseline_high,
    delta, delta_low, delta_high, p_value, significance (``increase`` / ``decrease`` / ``""``).
    """
    boot = {"n_boot": n_boot, "seed": seed, "groups": groups}
    base = auc_ci(y_true, baseline_score, groups=groups, with_ci=n_boot > 0)
    rows = []
    for method, score in method_scores.items():
        auc = auc_ci(y_true, score, groups=groups, with_ci=n_boot > 0)
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


def comparison_records(
    y: Any,
    baseline: Any,
    method: Any,
    segments: Any,
    compare: Sequence[str | None],
    *,
    n_boot: int,
    seed: int,
    patients: Any = None,
) -> list[dict[str, Any]]:
    """Metric records (``segment, metric, value, ci_low, ci_high``) comparing ``method`` with
    ``baseline`` scores of the same images: ``baseline_auc``, ``delta_auc`` (method - baseline,
    paired bootstrap CI) and ``p_value`` for each of ``compare``'s segments (None: all the
    images; a segment without images is skipped). CIs resample ``patients`` when given, and
    are None with ``n_boot=0``."""
    y, baseline, method = np.asarray(y), np.asarray(baseline), np.asarray(method)
    segments = np.array([str(s) for s in segments], dtype=object)
    records: list[dict[str, Any]] = []
    for segment in compare:
        mask = np.ones(y.shape, dtype=bool) if segment is None else segments == segment
        if not mask.any():
            continue
        row = comparison_rows(
            y[mask],
            baseline[mask],
            {"method": method[mask]},
            n_boot=n_boot,
            seed=seed,
            groups=None if patients is None else np.asarray(patients)[mask],
        )[0]
        ci = n_boot > 0
        for metric, value, low, high in (
            ("baseline_auc", "baseline_auc", "baseline_low", "baseline_high"),
            ("delta_auc", "delta", "delta_low", "delta_high"),
        ):
            records.append(
                {
                    "segment": segment,
                    "metric": metric,
                    "value": row[value],
                    "ci_low": row[low] if ci else None,
                    "ci_high": row[high] if ci else None,
                }
            )
        records.append({"segment": segment, "metric": "p_value", "value": row["p_value"]})
    return records


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = COMPARISON_COLUMNS
) -> str:
    """Return rows as a GitHub markdown table with the given columns (missing cells empty)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = [str(row.get(c, "")).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
