"""Figures the HTML report draws itself from the records: metric bars with CIs, learning
curves per round and centre, the paired AUROC differences as a forest plot, a thumbnail grid;
returned as PNG bytes (nothing is written).

Above :data:`MAX_CENTRE_PANELS` evaluating centres the bars and curves summarise the centres
per arm (a box of the centres' values, a mean curve with a band) instead of one panel per
centre: at 300 centres the per-centre figure had 600 panels and took minutes to lay out
(BENCHMARKS.md, "Scale")."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedmammo.evaluation.figures import write_png
from fedmammo.evaluation.metrics import is_significant_decrease, is_significant_increase

__all__ = [
    "MAX_CENTRE_PANELS",
    "MAX_FOREST_ROWS",
    "learning_curves_figure",
    "learning_curves_png",
    "metric_bars_figure",
    "metric_bars_png",
    "paired_differences_figure",
    "paired_differences_png",
    "thumbnail_grid_png",
    "write_thumbnail_grid",
]

#: Most evaluating centres drawn one panel each; more are summarised per arm.
MAX_CENTRE_PANELS = 12

#: Most paired differences drawn in the forest plot, a row each; with more it is not drawn
#: (the tables and metrics.csv hold them all).
MAX_FOREST_ROWS = 120

#: Most rounds given a tick each on a learning curve's x axis; with more, integer ticks.
MAX_ROUND_TICKS = 12

#: A paired difference's colour: its CI above 0, below 0, holding 0 (or no CI).
_ABOVE, _BELOW, _HOLDS = "tab:green", "tab:red", "tab:grey"

_COLOURS = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:grey",
    "tab:olive",
    "tab:cyan",
)
_LABELS = {"auc": "AUROC", "auprc": "AUPRC", "wll": "weighted log loss", "f1": "F1"}


def _png(fig: Figure, dpi: int) -> bytes:
    buf = io.BytesIO()
    write_png(fig, buf, dpi)
    return buf.getvalue()


def _label(metric: str) -> str:
    return _LABELS.get(metric, metric)


def _centre_order(present: Sequence[str], centres: Sequence[str] | None) -> list[str]:
    """``centres``' order first (those present), then the others as they come."""
    first = [c for c in (centres or []) if c in present]
    return first + [c for c in present if c not in first]


def metric_bars_png(
    final: pd.DataFrame,
    *,
    metric: str = "auc",
    centres: Sequence[str] | None = None,
    dpi: int = 90,
) -> bytes | None:
    """:func:`metric_bars_figure` as PNG bytes (None when there is nothing to draw)."""
    fig = metric_bars_figure(final, metric=metric, centres=centres)
    return None if fig is None else _png(fig, dpi)


def metric_bars_figure(
    final: pd.DataFrame, *, metric: str = "auc", centres: Sequence[str] | None = None
) -> Figure | None:
    """Horizontal bars of a final metric per arm, one panel per centre, CI whiskers; above
    :data:`MAX_CENTRE_PANELS` centres one panel with a box of the centres' values per arm.

    ``final`` has the columns of :func:`fedmammo.evaluation.run_folder.final_records`;
    None when it holds no value of ``metric``.
    """
    sel = final[(final["metric"] == metric) & final["value"].notna()]
    if sel.empty:
        return None
    order = _centre_order(list(dict.fromkeys(sel["centre"])), centres)
    arms = list(dict.fromkeys(sel["arm"]))
    if len(order) > MAX_CENTRE_PANELS:
        return _metric_boxes_figure(sel, metric, arms, len(order))
    cols = min(len(order), 4)
    rows = math.ceil(len(order) / cols)
    fig = Figure(figsize=(3.4 * cols + 1.6, (0.32 * len(arms) + 1.0) * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True).ravel()
    y = np.arange(len(arms))
    for ax, centre in zip(axes, order):
        by_arm = sel[sel["centre"] == centre].set_index("arm")
        values = np.array([by_arm["value"].get(a, np.nan) for a in arms], dtype=float)
        lo = np.array([by_arm["ci_low"].get(a, np.nan) for a in arms], dtype=float)
        hi = np.array([by_arm["ci_high"].get(a, np.nan) for a in arms], dtype=float)
        sd = np.array([by_arm["std"].get(a, np.nan) for a in arms], dtype=float)
        # the interval itself: a percentile CI (patients resampled) need not hold the value;
        # none (NaN, nothing drawn) where there is neither a CI nor a seed s.d.
        lower = np.where(np.isnan(lo), values - sd, lo)
        upper = np.where(np.isnan(hi), values + sd, hi)
        colours = [_COLOURS[i % len(_COLOURS)] for i in range(len(arms))]
        ax.barh(y, np.nan_to_num(values), color=colours, alpha=0.8)
        ok = np.isfinite(lower) & np.isfinite(upper)
        ax.hlines(y[ok], lower[ok], upper[ok], colors="black", lw=1)
        ax.plot(np.r_[lower[ok], upper[ok]], np.r_[y[ok], y[ok]], "|", color="black", ms=6)
        if metric in {"auc", "auprc", "accuracy", "f1"}:
            ax.set_xlim(0, 1.0)
        if metric == "auc":
            ax.axvline(0.5, color="lightgrey", ls="--", lw=0.8)
        ax.set_title(str(centre))
        ax.set_xlabel(_label(metric))
        ax.set_yticks(y, arms)
        ax.set_ylim(len(arms) - 0.5, -0.5)  # first arm on top, as in the tables
    for ax in axes[len(order) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"Test {_label(metric)} per arm and evaluating centre (whiskers: 95% CI or seed s.d., "
        "where there is one)"
    )
    return fig


def paired_differences_png(
    final: pd.DataFrame, by_segment: pd.DataFrame, *, dpi: int = 90
) -> bytes | None:
    """:func:`paired_differences_figure` as PNG bytes (None when there is nothing to draw)."""
    fig = paired_differences_figure(final, by_segment)
    return None if fig is None else _png(fig, dpi)


def _paired_rows(final: pd.DataFrame, by_segment: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per paired-difference metric (``delta_auc``, ``delta_auc_vs_<arm>``), its rows: over
    each centre's test images, or per data segment where the run recorded it only so."""
    out = {}
    metrics = pd.concat([final["metric"], by_segment["metric"]]).astype(str)
    for metric in dict.fromkeys(m for m in metrics if m.startswith("delta_auc")):
        rows = final[(final["metric"] == metric) & final["value"].notna()]
        if rows.empty:
            rows = by_segment[(by_segment["metric"] == metric) & by_segment["value"].notna()]
        if not rows.empty:
            out[metric] = rows
    return out


def _p_values(
    final: pd.DataFrame, by_segment: pd.DataFrame, metric: str, rows: pd.DataFrame
) -> np.ndarray:
    """The p-value of each row's difference (``p_value`` beside ``delta_auc``,
    ``p_value_vs_<arm>`` beside ``delta_auc_vs_<arm>``); NaN where none was recorded."""
    both = pd.concat([final, by_segment])
    named = both[both["metric"] == "p_value" + metric.removeprefix("delta_auc")]

    def key(r: dict) -> tuple:
        return r["arm"], r["centre"], r["segment"] if isinstance(r["segment"], str) else ""

    found = {key(r): r["value"] for r in named.to_dict("records")}
    return np.array([found.get(key(r), np.nan) for r in rows.to_dict("records")], dtype=float)


def paired_differences_figure(final: pd.DataFrame, by_segment: pd.DataFrame) -> Figure | None:
    """A forest plot of the run's paired test AUROC differences: a panel per difference
    (``delta_auc``: each arm against its reference; ``delta_auc_vs_<arm>``: against that
    arm), a row per arm and centre (and data segment, where the run recorded the difference
    only per segment), the difference with its paired 95% CI, or +- the s.d. over seeds. Colours
    follow the tables' rule (:func:`~fedmammo.evaluation.metrics.is_significant_increase`):
    green, a significant gain (the CI above 0 and p < 0.05); red, a significant loss; grey,
    neither (a CI beside 0 with p >= 0.05 from a skewed CI, no CI, or a seed s.d.).

    ``final`` and ``by_segment`` are :func:`fedmammo.evaluation.run_folder.final_records` of
    the test split, without and with segments. None when there is no difference, or more than
    :data:`MAX_FOREST_ROWS`."""
    panels = _paired_rows(final, by_segment)
    heights = [len(rows) for rows in panels.values()]
    if not panels or sum(heights) > MAX_FOREST_ROWS:
        return None
    fig = Figure(figsize=(7.5, 0.24 * sum(heights) + 1.1 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights).ravel()
    for ax, (metric, rows) in zip(axes, panels.items()):
        value = rows["value"].to_numpy(dtype=float)
        lo, hi = (
            pd.to_numeric(rows[c], errors="coerce").to_numpy(float) for c in ("ci_low", "ci_high")
        )
        sd = pd.to_numeric(rows["std"], errors="coerce").to_numpy(float)
        spread = ~np.isnan(sd) & np.isnan(lo)
        lo, hi = np.where(spread, value - sd, lo), np.where(spread, value + sd, hi)
        p = _p_values(final, by_segment, metric, rows)
        gain = [is_significant_increase(a, q) for a, q in zip(lo, p, strict=True)]
        loss = [is_significant_decrease(b, q) for b, q in zip(hi, p, strict=True)]
        # a seed s.d. is no CI: its rows stay grey
        colours = np.select([~spread & gain, ~spread & loss], [_ABOVE, _BELOW], _HOLDS)
        y = np.arange(len(rows))
        ax.hlines(y, lo, hi, colors=colours, lw=1.5)
        ax.scatter(value, y, c=colours, s=18, zorder=3)
        ax.axvline(0.0, color="black", lw=0.8)
        labels = [
            f"{r['arm']} @ {r['centre']}" + (f" ({r['segment']})" if r["segment"] else "")
            for r in rows.to_dict("records")
        ]
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top, as in the tables
        reference = metric.removeprefix("delta_auc").removeprefix("_vs_")
        ax.set_title(f"against {reference}" if reference else "against each arm's reference")
        ax.set_xlabel("ΔAUROC (arm - reference)")
    fig.suptitle("Paired test AUROC differences (95% CI, or seed s.d.)")
    return fig


def _metric_boxes_figure(sel: pd.DataFrame, metric: str, arms: list[str], n: int) -> Figure:
    """One box per arm of its centres' final values (seeds averaged per centre)."""
    per_centre = sel.groupby(["arm", "centre"], sort=False)["value"].mean()
    fig = Figure(figsize=(7.0, 0.45 * len(arms) + 1.4), layout="constrained")
    ax = fig.subplots()
    ax.boxplot(
        [per_centre.loc[arm].to_numpy(dtype=float) for arm in arms],
        orientation="horizontal",
        tick_labels=arms,
        patch_artist=True,
        boxprops={"facecolor": "tab:blue", "alpha": 0.5},
        medianprops={"color": "black", "gid": "median"},
        flierprops={"markersize": 3},
    )
    if metric in {"auc", "auprc", "accuracy", "f1"}:
        ax.set_xlim(0, 1.0)
    if metric == "auc":
        ax.axvline(0.5, color="lightgrey", ls="--", lw=0.8)
    ax.set_ylim(len(arms) + 0.5, 0.5)  # first arm on top, as in the tables
    ax.set_xlabel(_label(metric))
    fig.suptitle(f"Test {_label(metric)} per arm across {n} evaluating centres (box: quartiles)")
    return fig


def learning_curves_png(
    frame: pd.DataFrame,
    *,
    metrics: Sequence[str] = ("auc", "wll"),
    centres: Sequence[str] | None = None,
    dpi: int = 90,
) -> bytes | None:
    """:func:`learning_curves_figure` as PNG bytes (None when there is nothing to draw)."""
    fig = learning_curves_figure(frame, metrics=metrics, centres=centres)
    return None if fig is None else _png(fig, dpi)


def learning_curves_figure(
    frame: pd.DataFrame,
    *,
    metrics: Sequence[str] = ("auc", "wll"),
    centres: Sequence[str] | None = None,
) -> Figure | None:
    """Per-round metrics, one row per metric and one column per centre, one line per arm;
    above :data:`MAX_CENTRE_PANELS` centres one column per arm: the mean over centres and
    the band of their 10th-90th percentiles.

    Uses validation records (whole centre, seeds averaged), else per-round test records;
    None when the records have no per-round values of ``metrics``.
    """
    rounds = frame[frame["round"].notna() & frame["segment"].isna()]
    for split in ("val", "test"):
        sel = rounds[(rounds["split"] == split) & rounds["metric"].isin(list(metrics))]
        if not sel.empty:
            break
    else:
        return None
    sel = sel.assign(value=pd.to_numeric(sel["value"], errors="coerce")).dropna(subset=["value"])
    if sel.empty:  # only values that could not be computed (e.g. one class at every centre)
        return None
    mean = sel.groupby(["metric", "centre", "arm", "round"])["value"].mean().sort_index()
    rounds_drawn = sorted(int(r) for r in set(sel["round"]))
    order = _centre_order(list(dict.fromkeys(sel["centre"])), centres)
    rows = [m for m in metrics if m in set(sel["metric"])]
    arms = list(dict.fromkeys(sel["arm"]))
    if len(order) > MAX_CENTRE_PANELS:
        return _curve_bands_figure(mean, rows, arms, split, len(order), rounds_drawn)
    legend_width = 0.9 + 0.065 * max(len(a) for a in arms)
    width = max(3.3 * len(order), 4.5) + legend_width
    fig = Figure(figsize=(width, 2.7 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), len(order), squeeze=False)
    for i, metric in enumerate(rows):
        for j, centre in enumerate(order):
            ax = axes[i][j]
            for k, arm in enumerate(arms):
                try:
                    series = mean.loc[(metric, centre, arm)].sort_index()
                except KeyError:
                    continue
                ax.plot(
                    series.index.to_numpy(dtype=float),
                    series.to_numpy(dtype=float),
                    marker="o",
                    ms=3,
                    color=_COLOURS[k % len(_COLOURS)],
                    ls=("-", "--", ":")[(k // len(_COLOURS)) % 3],
                    label=arm,
                )
            ax.set_title(f"{centre}" if i == 0 else "")
            _round_axis(ax, rounds_drawn)
            ax.set_ylabel(f"{split} {_label(metric)}" if j == 0 else "")
    legend = {}
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        ordered = [a for a in arms if a in legend]
        fig.legend(
            [legend[a] for a in ordered], ordered, loc="outside right upper", fontsize="small"
        )
    fig.suptitle(f"Learning curves per evaluating centre ({split} split)", x=0.02, ha="left")
    return fig


def _curve_bands_figure(
    mean: pd.Series, rows: list[str], arms: list[str], split: str, n: int, rounds: list[int]
) -> Figure:
    """One column per arm: per round, the mean over centres and their 10-90th percentiles."""
    fig = Figure(figsize=(max(3.3 * len(arms), 4.5), 2.7 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), len(arms), squeeze=False, sharey="row")
    for i, metric in enumerate(rows):
        for j, arm in enumerate(arms):
            ax = axes[i][j]
            try:
                by_round = mean.loc[metric].xs(arm, level="arm").groupby(level="round")
            except KeyError:
                continue
            x = np.array(sorted(by_round.groups), dtype=float)
            centre_mean = by_round.mean().to_numpy(dtype=float)
            low, high = (by_round.quantile(q).to_numpy(dtype=float) for q in (0.1, 0.9))
            colour = _COLOURS[j % len(_COLOURS)]
            ax.fill_between(x, low, high, color=colour, alpha=0.25, lw=0)
            ax.plot(x, centre_mean, marker="o", ms=3, color=colour)
            ax.set_title(arm if i == 0 else "")
            _round_axis(ax, rounds)
            ax.set_ylabel(f"{split} {_label(metric)}" if j == 0 else "")
    fig.suptitle(
        f"Learning curves across {n} evaluating centres ({split} split): mean and 10-90th "
        "percentile band",
        x=0.02,
        ha="left",
    )
    return fig


def _round_axis(ax, rounds: list[int]) -> None:
    """A learning curve's x axis: a tick at each round drawn (a run of one round included),
    integer ticks chosen by matplotlib beyond :data:`MAX_ROUND_TICKS` rounds."""
    ax.set_xlabel("round")
    if len(rounds) <= MAX_ROUND_TICKS:
        ax.set_xticks(rounds)
        ax.set_xlim(rounds[0] - 0.5, rounds[-1] + 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def thumbnail_grid_png(images: np.ndarray, *, cols: int = 8, dpi: int = 80) -> bytes:
    """A grid of grey images ``(n, h, w)`` (any numeric dtype, each scaled to its own range)."""
    arr = np.asarray(images, dtype=float)
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise ValueError(f"images must have shape (n, h, w) with n > 0, got {arr.shape}")
    n, h, w = arr.shape
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(cols * 1.1 * w / max(h, w) + 0.2, rows * 1.1 * h / max(h, w) + 0.2))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, img in zip(axes, arr):
        lo, hi = float(img.min()), float(img.max())
        ax.imshow((img - lo) / (hi - lo) if hi > lo else img * 0, cmap="gray", vmin=0, vmax=1)
    for ax in axes:
        ax.set_axis_off()
    fig.subplots_adjust(0.01, 0.01, 0.99, 0.99, 0.05, 0.05)
    return _png(fig, dpi)


def write_thumbnail_grid(images: np.ndarray, path: str | Path, *, cols: int = 8) -> Path:
    """Write :func:`thumbnail_grid_png` to ``path`` (a centre's ``thumbnails/<centre>.png``)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(thumbnail_grid_png(images, cols=cols))
    return out
