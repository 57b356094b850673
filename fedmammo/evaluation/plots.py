"""Evaluation plots of periodic-sampling paper: ROC curves with operating points, learning curves,
histograms."""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedmammo.errors import DataError
from fedmammo.evaluation.figures import write_png
from fedmammo.evaluation.metrics import DEFAULT_THRESHOLDS, _check, operating_points

if TYPE_CHECKING:  # matplotlib and scikit-learn load where a plot or a curve is made
    from matplotlib.figure import Figure

__all__ = [
    "ROC_PANELS_PER_ROW",
    "histogram_xlabel",
    "learning_curve_series",
    "plot_learning_curves",
    "plot_prediction_histograms",
    "plot_roc_panels",
    "prediction_histogram_data",
    "roc_curve_data",
]

logger = logging.getLogger(__name__)

GLOBAL = "global"
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_COLOURS = ("tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple", "tab:brown")
#: ROC panels per row of :func:`plot_roc_panels`: more wrap to the next row, so a figure
#: shown at a page's width keeps its legends (the AUROCs) readable.
ROC_PANELS_PER_ROW = 4


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(fig, out, dpi)
    logger.debug("wrote %s", out)
    return out


def roc_curve_data(
    y_true: Any, y_score: Any, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, Any] | None:
    """Return what one ROC curve plots: fpr, tpr, auc and operating points (None if 1 class)."""
    y, score = _check(y_true, y_score)
    if not 0 < int(y.sum()) < y.size:
        return None
    from sklearn.metrics import roc_auc_score, roc_curve  # loaded where used

    fpr, tpr, _ = roc_curve(y, score, drop_intermediate=False)
    return {
        "fpr": fpr,
        "tpr": tpr,
        "auc": float(roc_auc_score(y, score)),
        "points": operating_points(y, score, thresholds),
    }


def _colour(label: str, k: int) -> str:
    return "black" if label.lower() in {GLOBAL, "all"} else _COLOURS[k % len(_COLOURS)]


def plot_roc_panels(
    panels: Mapping[str, Mapping[str, tuple[Any, Any]]],
    path: str | Path,
    *,
    operating_thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Plot one ROC panel per model (``{panel: {curve label: (y, score)}}``), Figure 4 style.

    A curve labelled ``global`` is black; operating points share one marker per threshold.
    Panels fill rows of at most :data:`ROC_PANELS_PER_ROW`; unused axes of the last row are
    hidden.
    """
    from matplotlib.figure import Figure  # matplotlib loads where a plot is drawn

    n = max(1, len(panels))
    cols = min(n, ROC_PANELS_PER_ROW)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 4.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax, (panel, curves) in zip(axes, panels.items()):
        colour_index = 0
        for label, (y, score) in curves.items():
            data = roc_curve_data(y, score, operating_thresholds)
            if data is None:
                logger.info("ROC %r / %r skipped: a single class", panel, label)
                continue
            colour = _colour(str(label), colour_index)
            colour_index += colour != "black"
            ax.plot(data["fpr"], data["tpr"], color=colour, label=f"{label} ({data['auc']:.3f})")
            for point, marker in zip(data["points"], _MARKERS):
                ax.plot(point["fpr"], point["tpr"], marker=marker, color=colour, ls="none")
        for t, marker in zip(operating_thresholds, _MARKERS):
            ax.plot([], [], marker=marker, color="grey", ls="none", label=f"t = {t:g}")
        ax.plot([0, 1], [0, 1], color="lightgrey", lw=0.8, ls="--")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (FPR)", title=panel)
        ax.set_ylabel("sensitivity (TPR)")
        ax.legend(loc="lower right", fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def _scope(value: Any) -> str:
    return (
        GLOBAL if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)
    )


def learning_curve_series(
    history: pd.DataFrame, *, metrics: Sequence[str] = ("wll", "auc"), hue: str = "arm"
) -> dict[tuple[str, str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Return ``{(metric, scope): {line: (steps, values)}}`` sorted by step; scope ``global``.

    ``history`` has columns step, segment (None/NA = global), metric, value and optionally
    ``hue`` (one line per value, e.g. the arm).
    """
    missing = {"step", "segment", "metric", "value"} - set(history.columns)
    if missing:
        raise DataError(
            f"history lacks columns {sorted(missing)}; it needs step, segment, metric, value"
        )
    frame = history[history["metric"].isin(list(metrics))].copy()
    frame["_scope"] = [_scope(v) for v in frame["segment"]]
    frame["_line"] = frame[hue].astype(str) if hue in frame.columns else "value"
    series: dict[tuple[str, str], dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for (metric, scope, line), group in frame.groupby(["metric", "_scope", "_line"], sort=True):
        group = group.sort_values("step")
        steps = group["step"].to_numpy(dtype=float)
        series.setdefault((str(metric), str(scope)), {})[str(line)] = (
            steps,
            group["value"].to_numpy(dtype=float),
        )
    return series


def plot_learning_curves(
    history: pd.DataFrame,
    path: str | Path,
    *,
    metrics: Sequence[str] = ("wll", "auc"),
    hue: str = "arm",
    xlabel: str = "step",
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Plot validation metrics over steps: one row per metric, columns global then segments."""
    series = learning_curve_series(history, metrics=metrics, hue=hue)
    rows = [m for m in metrics if any(key[0] == m for key in series)] or list(metrics)[:1]
    scopes = sorted({key[1] for key in series}, key=lambda s: (s != GLOBAL, s)) or [GLOBAL]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.8 * len(scopes), 2.8 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(scopes), squeeze=False)
    lines = sorted({line for by_line in series.values() for line in by_line})
    for i, metric in enumerate(rows):
        for j, scope in enumerate(scopes):
            ax = axes[i][j]
            for k, line in enumerate(lines):
                if line in series.get((metric, scope), {}):
                    steps, values = series[(metric, scope)][line]
                    ax.plot(steps, values, color=_COLOURS[k % len(_COLOURS)], label=line)
            ax.set_title("global metrics" if scope == GLOBAL else f"local metrics: {scope}")
            ax.set_ylabel(metric.upper())
            ax.set_xlabel(xlabel)
    if len(lines) > 1:
        axes[0][0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def prediction_histogram_data(
    y_true: Any, y_score: Any, segments: Sequence[Hashable], *, bins: int = 20
) -> tuple[np.ndarray, dict[str, dict[int, np.ndarray]]]:
    """Return (bin edges, ``{segment: {label: counts}}``) of the scores per segment and label.

    Edges span [0, 1] when scores are probabilities, else the score range.
    """
    y, score = _check(y_true, y_score)
    keys = np.asarray([str(s) for s in segments], dtype=object)
    if keys.shape != y.shape:
        raise DataError(f"segments has {keys.size} entries for {y.size} scores")
    low, high = (0.0, 1.0) if score.min() >= 0 and score.max() <= 1 else (score.min(), score.max())
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    data = {}
    for segment in sorted(set(keys)):
        mask = keys == segment
        data[segment] = {
            label: np.histogram(score[mask & (y == label)], bins=edges)[0] for label in (0, 1)
        }
    return edges, data


def histogram_xlabel(edges: np.ndarray) -> str:
    """The x label of a score histogram, saying what its bins span (fixed [0, 1] for
    probabilities: scores packed near 0.5 then fill one bin, which is what they are)."""
    low, high = float(edges[0]), float(edges[-1])
    name = "predicted probability" if 0 <= low and high <= 1 else "score"
    return f"{name} ({len(edges) - 1} bins over [{low:.3g}, {high:.3g}])"


def plot_prediction_histograms(
    y_true: Any,
    y_score: Any,
    segments: Sequence[Hashable],
    path: str | Path,
    *,
    bins: int = 20,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Plot the score distribution per segment, benign vs malignant (densities), Figure 1."""
    edges, data = prediction_histogram_data(y_true, y_score, segments, bins=bins)
    n = len(data)
    cols = min(n, 4)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6 * cols, 2.8 * math.ceil(n / cols)), layout="constrained")
    axes = fig.subplots(math.ceil(n / cols), cols, squeeze=False).ravel()
    for ax, (segment, by_label) in zip(axes, data.items()):
        for label, colour, name in ((0, "tab:blue", "benign"), (1, "tab:red", "malignant")):
            counts = by_label[label]
            if counts.sum():
                density = counts / (counts.sum() * np.diff(edges))
                ax.stairs(density, edges, color=colour, fill=True, alpha=0.45)
            ax.plot([], [], color=colour, lw=6, alpha=0.45, label=f"{name} (n={counts.sum()})")
        ax.set(title=segment, xlabel=histogram_xlabel(edges), ylabel="density")
        ax.legend(fontsize="small")
    for ax in axes[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)
