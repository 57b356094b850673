"""The periodic-sampling paper's report: Tables 2-4 (AUC, delta-AUC vs baseline), ROC, histogram,
learning curves.

The tables are read from a run's metric records (``results.json``): per test segment, one row
per arm with the baseline's AUC, the arm's AUC, delta-AUC (paired bootstrap CI) and its
p-value, all computed inside the test centre (``evaluate.periodic``). Arms are described by
``meta`` entries ``{arm: {"experiment", "setting", "method", "weighting", "label"}}``.
The figures that need per-image scores (:func:`draw_centre_plots`) are drawn where the scores
are, i.e. inside a centre; learning curves (:func:`plot_arm_learning_curves`) only need the
validation records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from fedmammo.evaluation.plots import (
    _save,
    histogram_xlabel,
    plot_learning_curves,
    plot_roc_panels,
    prediction_histogram_data,
)
from fedmammo.evaluation.results import RunRecorder
from fedmammo.evaluation.tables import P_VALUE_NOTE, comparison_row, markdown_table

__all__ = [
    "BUDGET_NOTE",
    "section",
    "TABLE_COLUMNS",
    "comparison_table",
    "draw_centre_plots",
    "figures_note",
    "learning_history",
    "plot_arm_learning_curves",
    "plot_histogram_grid",
    "print_tables",
    "tables_markdown",
]

#: Columns of the Tables 2-4 layout (``Setting`` added: pooled or federated).
TABLE_COLUMNS: tuple[str, ...] = ("AUC baseline", "Setting", "Method", "AUC", "ΔAUC", "p-value")
_SETTING_ORDER = {"pooled": 0, "federated": 1}
_METHOD_ORDER = {"balanced_labels": 0, "balanced_segments": 1, "periodic": 2}
_WEIGHT_ORDER = {"quota": 0, "images": 1, "labelled": 2, "uniform": 3}


#: What each arm trains on per round: the arms of one table do not share a training budget.
BUDGET_NOTE = (
    "Training budgets differ between the arms of a table: in each round the baseline, a pooled "
    "arm and federated P. sampling take `batches_per_round` batches in all (P. sampling splits "
    "them between the centres by quota), while federated Bal. labels and Bal. segments take "
    "`batches_per_round` batches at each centre: with two centres, twice the optimiser steps "
    "and images. Each centre's steps and images per round are in results.json "
    "(`train_steps`, `train_examples`)."
)


def figures_note(where: str) -> str:
    """The run's note on its figures in ``where``; file patterns in backticks, so that
    results.md's markdown (report.html) keeps their underscores."""
    return (
        f"figures in {where}: `<split>_<experiment>_<setting>_<centre>_seed<s>_roc.png` "
        "(Figure 4: global and per-segment ROC with operating points) and `..._hist.png` "
        "(Figure 1 right: prediction distributions per segment and label), drawn inside the "
        "centres; `learning_curves_<experiment>_<setting>_seed<s>.png` (Figure 3) from "
        "validation records"
    )


def draw_centre_plots(
    y: np.ndarray,
    scores: Mapping[str, np.ndarray],
    segments: Sequence[str],
    out_dir: str | Path,
    stem: str,
    *,
    title: str = "",
    bins: int = 20,
) -> list[Path]:
    """Draw ROC panels (one per model; global + per segment, with OPs) and histograms here.

    Writes ``<out_dir>/<stem>_roc.png`` and ``<out_dir>/<stem>_hist.png``; meant to run where
    the per-image scores are (inside a centre).
    """
    y = np.asarray(y)
    seg = np.asarray([str(s) for s in segments], dtype=object)
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for arm, score in scores.items():
        curves = {"global": (y, np.asarray(score))}
        for s in sorted(set(seg)):
            mask = seg == s
            curves[s] = (y[mask], np.asarray(score)[mask])
        panels[arm] = curves
    out = Path(out_dir)
    roc = plot_roc_panels(panels, out / f"{stem}_roc.png", title=title or None)
    hist = plot_histogram_grid(
        y, scores, seg, out / f"{stem}_hist.png", bins=bins, title=title or None
    )
    return [roc, hist]


def plot_histogram_grid(
    y: np.ndarray,
    scores: Mapping[str, np.ndarray],
    segments: Sequence[str],
    path: str | Path,
    *,
    bins: int = 20,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Prediction distributions, benign vs malignant: one row per model, one column per segment.

    Densities over the bins of :func:`prediction_histogram_data` (fixed [0, 1] for
    probabilities), which the x label states.
    """
    data = {arm: prediction_histogram_data(y, s, segments, bins=bins) for arm, s in scores.items()}
    cols = sorted({seg for _, by_seg in data.values() for seg in by_seg})
    from matplotlib.figure import Figure  # here: a centre imports this module

    fig = Figure(figsize=(3.2 * max(1, len(cols)), 2.4 * max(1, len(data))), layout="constrained")
    axes = fig.subplots(max(1, len(data)), max(1, len(cols)), squeeze=False)
    for i, (arm, (edges, by_seg)) in enumerate(data.items()):
        for j, seg in enumerate(cols):
            ax = axes[i][j]
            for label, colour, name in ((0, "tab:blue", "benign"), (1, "tab:red", "malignant")):
                counts = by_seg.get(seg, {}).get(label, np.zeros(len(edges) - 1))
                if counts.sum():
                    density = counts / (counts.sum() * np.diff(edges))
                    ax.stairs(density, edges, color=colour, fill=True, alpha=0.45)
                ax.plot([], [], color=colour, lw=6, alpha=0.45, label=f"{name} ({counts.sum()})")
            ax.set_title(f"{arm}: {seg}", fontsize="small")
            ax.set_xlabel(histogram_xlabel(edges), fontsize="small")
            ax.set_ylabel("density", fontsize="small")
            ax.legend(fontsize="x-small")
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def _final_test(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["split"] == "test") & frame["round"].isna() & frame["segment"].notna()]


def _value(rows: pd.DataFrame, metric: str) -> tuple[float, float | None, float | None]:
    sel = rows[rows["metric"] == metric]
    if sel.empty:
        return math.nan, None, None
    r = sel.iloc[0]

    def num(v: Any) -> float | None:
        return None if v is None or pd.isna(v) else float(v)

    value = num(r["value"])
    return (math.nan if value is None else value), num(r["ci_low"]), num(r["ci_high"])


def _arm_key(arm: str, meta: Mapping[str, Any]) -> tuple:
    m = meta[arm]
    return (
        _SETTING_ORDER.get(m["setting"], 9),
        _METHOD_ORDER.get(m["method"], 9),
        _WEIGHT_ORDER.get(m.get("weighting") or "", 9),
        arm,
    )


def comparison_table(
    frame: pd.DataFrame,
    arms: Mapping[str, Mapping[str, Any]],
    *,
    experiment: str,
    seed: int,
    segments: Sequence[str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Return ``{test segment: rows}`` of one experiment and seed in the Tables 2-4 layout.

    ``frame`` holds metric records (``RunRecorder.frame()``); ``arms`` describes every arm.
    Each row has the formatted ``TABLE_COLUMNS`` plus raw numbers (``auc``, ``auc_low``, ...,
    ``delta``, ``delta_low``, ``delta_high``, ``p_value``, ``arm``, ``centre``).
    """
    test = _final_test(frame)
    test = test[test["seed"] == seed]
    mine = sorted(
        (a for a, m in arms.items() if m.get("experiment") == experiment),
        key=lambda a: _arm_key(a, arms),
    )
    order = list(segments) if segments is not None else sorted(test["segment"].dropna().unique())
    tables: dict[str, list[dict[str, Any]]] = {}
    for segment in order:
        rows = []
        for arm in mine:
            sel = test[(test["arm"] == arm) & (test["segment"] == segment)]
            if sel.empty:
                continue
            auc, base, delta = (_value(sel, m) for m in ("auc", "baseline_auc", "delta_auc"))
            p = _value(sel, "p_value")[0]
            rows.append(
                {
                    "arm": arm,
                    "centre": str(sel["centre"].iloc[0]),
                    "Setting": arms[arm]["setting"],
                    **comparison_row(arms[arm]["label"], auc, base, delta, p),
                }
            )
        if rows:
            tables[segment] = rows
    return tables


def _segment_title(segment: str) -> str:
    source, _, manufacturer = segment.partition("-")
    return f"({source}, {manufacturer})" if manufacturer else segment


def tables_markdown(
    tables: Mapping[str, Mapping[int, Mapping[str, list[dict[str, Any]]]]],
    experiments: Mapping[str, Sequence[str]],
    stopped: Sequence[str] = (),
) -> str:
    """Markdown of ``{experiment: {seed: {segment: rows}}}``, one section per experiment;
    ``stopped``: the lines of arms that stopped early (listed: their rows are missing)."""
    lines = [
        "## periodic-sampling paper tables: AUC (95% CI) and ΔAUC vs baseline per test segment",
        "",
        "AUC in percent; ΔAUC = AUC(method) - AUC(baseline) on the same images, paired "
        "bootstrap CI. Computed inside each test centre. " + P_VALUE_NOTE,
        "",
        BUDGET_NOTE,
        "",
    ]
    if stopped:
        lines += [
            "Arms that stopped early, untested: their rows are missing, and a stopped "
            "baseline leaves its segments' baseline, ΔAUC and p-value n/a:",
            "",
            *(f"- {line}" for line in stopped),
            "",
        ]
    for exp, by_seed in tables.items():
        segs = " + ".join(_segment_title(s) for s in experiments.get(exp, []))
        lines += [f"### Experiment {exp} (training segments {segs})", ""]
        for seed, by_segment in by_seed.items():
            if len(by_seed) > 1:
                lines += [f"Seed {seed}", ""]
            for segment, rows in by_segment.items():
                lines += [f"**{_segment_title(segment)}**", "", markdown_table(rows, TABLE_COLUMNS)]
    return "\n".join(lines) + "\n"


def print_tables(
    tables: Mapping[str, Mapping[int, Mapping[str, list[dict[str, Any]]]]],
    console: Console | None = None,
) -> None:
    """Print every table with rich."""
    console = console or Console()
    for exp, by_seed in tables.items():
        for seed, by_segment in by_seed.items():
            for segment, rows in by_segment.items():
                table = Table(title=f"{exp} seed {seed}: {_segment_title(segment)}")
                for column in TABLE_COLUMNS:
                    table.add_column(column, overflow="fold")  # fold, never cut to "…"
                for row in rows:
                    table.add_row(*(str(row[c]) for c in TABLE_COLUMNS))
                console.print(table)


def learning_history(
    frame: pd.DataFrame,
    arms: Mapping[str, Mapping[str, Any]],
    *,
    seed: int,
    steps_per_round: int,
) -> pd.DataFrame:
    """Validation records of ``arms`` as columns step, segment, metric, value, arm (its label).

    Validated at one site (the pooled node), an arm keeps its global and per-segment records;
    validated at several sites (the centres, in deployment), only the per-segment ("local")
    records are kept: a centre's whole-split metric is not the global one.
    """
    sel = frame[
        (frame["split"] == "val")
        & frame["round"].notna()
        & (frame["seed"] == seed)
        & frame["arm"].isin(list(arms))
        & frame["metric"].isin(["wll", "auc"])
    ]
    parts = []
    for arm, group in sel.groupby("arm", sort=False):
        kept = group if group["centre"].nunique() == 1 else group[group["segment"].notna()]
        kept = kept.copy()
        kept["arm"] = arms[arm]["label"]
        kept["step"] = kept["round"].astype(float) * steps_per_round
        parts.append(kept)
    columns = ["step", "segment", "metric", "value", "arm"]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts)[columns].reset_index(drop=True)


def plot_arm_learning_curves(
    frame: pd.DataFrame,
    arms: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    *,
    seed: int,
    steps_per_round: int,
    title: str | None = None,
) -> Path | None:
    """Global vs local validation WLL and AUC over learning steps (Figure 3); None if empty."""
    history = learning_history(frame, arms, seed=seed, steps_per_round=steps_per_round)
    history = history[history["value"].notna()]
    if history.empty:
        return None
    xlabel = "rounds x batches_per_round (federated Bal. arms: at each centre)"
    return plot_learning_curves(history, path, xlabel=xlabel, title=title)


def section(recorder: RunRecorder, console: Console) -> str:
    """The Tables 2-4 layout for results.md (already printed by the runner)."""
    return str(recorder.meta.get("periodic_tables_markdown", ""))
