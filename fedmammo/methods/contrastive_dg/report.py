"""``contrastive_dg``'s part of results.md: the paper's Table II/III layouts with bootstrap CIs,
the label-fraction table and plot, and the headline comparison on unseen vendors.

Rows are pre-training methods (arms); columns the seen vendors (training centres, each
testing the model it fine-tuned), their average, the unseen vendors (test-only centres,
testing every labelled centre's model: the metric is averaged over those models) and their
average. Cells are ``value [95% CI]`` for one seed, ``mean (sd)`` over several; averages
are means of the cells (no CI).
"""

from __future__ import annotations

import math
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from fedmammo.evaluation.figures import write_png
from fedmammo.evaluation.report import format_estimate, to_markdown
from fedmammo.evaluation.results import RunRecorder
from fedmammo.methods.contrastive_dg.params import ARMS, TASKS, metric_name, parse_metric

__all__ = [
    "FRACTIONS_PLOT",
    "META_KEY",
    "fraction_table",
    "headline",
    "plot_label_fractions",
    "section",
    "summary_table",
    "task_table",
    "vendor_of",
]

META_KEY = "contrastive_dg"
FRACTIONS_PLOT = "plots/label_fractions.png"
SEEN_AVG, UNSEEN_AVG = "seen avg", "unseen avg"


def vendor_of(scenario: Any, centre: str) -> str:
    """The vendor(s) of a centre's images, from its profile (phantom segments), else its source."""
    profile = scenario.resolved_profiles[centre]
    synthetic = profile.data.synthetic
    if synthetic is None:
        return profile.source
    return "+".join(s.manufacturer for s in synthetic.segments)


def _final(frame: pd.DataFrame) -> pd.DataFrame:
    sel = frame[(frame["split"] == "test") & frame["round"].isna() & frame["segment"].isna()]
    return sel.assign(value=sel["value"].astype(float))


def _cells(frame: pd.DataFrame, metric: str) -> dict[tuple[str, str], tuple]:
    """(arm, centre) -> (value, ci_low, ci_high, n_seeds): one seed keeps its CI."""
    sel = frame[frame["metric"] == metric]
    out = {}
    for (arm, centre), g in sel.groupby(["arm", "centre"], sort=False):
        v = g["value"].dropna()
        if v.empty:
            continue
        if len(g) == 1:
            r = g.iloc[0]
            out[(arm, centre)] = (float(r["value"]), r["ci_low"], r["ci_high"], 1)
        else:
            out[(arm, centre)] = (float(v.mean()), float(v.std(ddof=1)), None, len(v))
    return out


def _fmt(cell: tuple | None) -> str:
    if cell is None:
        return ""
    value, a, b, n = cell
    return format_estimate(value, std=a) if n > 1 else format_estimate(value, a, b)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _arms(meta: dict, frame: pd.DataFrame) -> list[str]:
    present = set(frame["arm"])
    order = meta.get("arms") or list(ARMS)
    return [a for a in order if a in present]


def _label(meta: dict, centre: str) -> str:
    vendor = meta.get("vendors", {}).get(centre)
    return f"{centre} ({vendor})" if vendor and vendor != centre else centre


def task_table(frame: pd.DataFrame, meta: dict, metric: str) -> pd.DataFrame:
    """Table II layout for one metric: arms x (seen vendors, seen avg, unseen, unseen avg)."""
    final = _final(frame)
    cells = _cells(final, metric)
    if not cells:
        return pd.DataFrame()
    rows = {}
    for arm in _arms(meta, final):
        row: dict[str, str] = {}
        for group, avg in ((meta.get("seen", []), SEEN_AVG), (meta.get("unseen", []), UNSEEN_AVG)):
            for c in group:
                row[_label(meta, c)] = _fmt(cells.get((arm, c)))
            if group:
                mean = _mean([cells[(arm, c)][0] for c in group if (arm, c) in cells])
                row[avg] = "" if math.isnan(mean) else f"{mean:.3f}"
        rows[arm] = row
    return pd.DataFrame(rows).T


def _group_mean(cells: dict, arm: str, centres: list[str]) -> float:
    return _mean([cells[(arm, c)][0] for c in centres if (arm, c) in cells])


def summary_table(frame: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """Table III layout: arms x (seen: each task's vendor average, avg; unseen: same).

    Detection is at the largest label fraction.
    """
    final = _final(frame)
    tasks = [t for t in meta.get("tasks", TASKS)]
    top = max(meta.get("fractions") or [1.0])
    rows = {}
    for arm in _arms(meta, final):
        row = {}
        for group, label in ((meta.get("seen", []), "seen"), (meta.get("unseen", []), "unseen")):
            if not group:
                continue
            means = []
            for task in tasks:
                cells = _cells(final, metric_name(task, top))
                means.append(_group_mean(cells, arm, group))
                row[f"{label} {task}"] = "" if math.isnan(means[-1]) else f"{means[-1]:.3f}"
            avg = _mean(means)
            row[f"{label} avg"] = "" if math.isnan(avg) else f"{avg:.3f}"
        rows[arm] = row
    return pd.DataFrame(rows).T if rows else pd.DataFrame()


def fraction_series(frame: pd.DataFrame, meta: dict, group: str) -> pd.DataFrame:
    """Arms x fractions: detection AP50 averaged over the ``seen`` or ``unseen`` centres."""
    final = _final(frame)
    centres = meta.get(group, [])
    out: dict[str, dict[float, float]] = {}
    for metric in sorted(set(final["metric"])):
        parsed = parse_metric(metric)
        if parsed is None or parsed[0] != "detection":
            continue
        cells = _cells(final, metric)
        for arm in _arms(meta, final):
            out.setdefault(arm, {})[parsed[1]] = _group_mean(cells, arm, centres)
    table = pd.DataFrame(out).T
    return table.reindex(columns=sorted(table.columns)) if not table.empty else table


def fraction_table(frame: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """Markdown-ready label-fraction table (unseen average AP50 per fraction)."""
    table = fraction_series(frame, meta, "unseen")
    if table.empty:
        return table
    table.columns = [f"{f:.0%}" for f in table.columns]
    return table.map(lambda v: "" if pd.isna(v) else f"{v:.3f}")


def plot_label_fractions(frame: pd.DataFrame, meta: dict, run_dir: str | Path) -> Path | None:
    """Fig. 6 layout: detection AP50 against the labelled fraction, per arm (seen, unseen)."""
    panels = [(g, fraction_series(frame, meta, g)) for g in ("seen", "unseen") if meta.get(g)]
    panels = [(g, t) for g, t in panels if not t.empty]
    if not panels:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (group, table) in zip(axes, panels, strict=True):
        for arm, row in table.iterrows():
            ax.plot(row.index * 100, row.values, marker="o", label=arm)
        ax.set_xscale("log")
        ticks = [100 * f for f in table.columns]
        ax.set_xticks(ticks, [f"{t:g}%" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("labelled detection training data (%)")
        ax.set_ylabel("AP@0.5 (mean over vendors)")
        ax.set_title(f"{group} vendors", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Mass detection by label fraction (the paper's Fig. 6)", fontsize=9)
    out = Path(run_dir) / FRACTIONS_PLOT
    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(fig, out, 100)
    return out


def _above(a: tuple | None, b: tuple | None) -> bool | None:
    """True when a's CI lies above b's, False when below, None when they overlap or lack CIs."""
    if a is None or b is None or a[3] > 1 or b[3] > 1 or None in (a[1], a[2], b[1], b[2]):
        return None
    if a[1] > b[2]:
        return True
    if a[2] < b[1]:
        return False
    return None


def headline(frame: pd.DataFrame, meta: dict, arm: str = "msvcl") -> str:
    """Does ``arm`` beat SimCLR and random init on the unseen vendors? Mean differences and
    how often the 95% CIs separate, cell by cell: one cell per (task, unseen vendor, seed),
    each seed's value with its own bootstrap CI."""
    final = _final(frame)
    unseen, present = meta.get("unseen", []), set(final["arm"])
    if arm not in present or not unseen:
        return ""
    top = max(meta.get("fractions") or [1.0])
    seeds = sorted(final["seed"].dropna().unique())
    per_seed = [_final_cells(final[final["seed"] == s], meta, top) for s in seeds]
    lines = []
    for other in ("simclr", "random"):
        if other not in present:
            continue
        wins = losses = ties = 0
        deltas = []
        for cells, task, c in product(per_seed, meta.get("tasks", TASKS), unseen):
            a, b = cells.get((arm, task, c)), cells.get((other, task, c))
            if a is not None and b is not None:
                deltas.append(a[0] - b[0])
                verdict = _above(a, b)
                wins, losses, ties = (
                    wins + (verdict is True),
                    losses + (verdict is False),
                    ties + (verdict is None),
                )
        if deltas:
            several = f"(task, vendor, seed) cells of {len(seeds)} seeds"
            where = several if len(seeds) > 1 else "(task, vendor) cells"
            lines.append(
                f"- {arm} vs {other} on unseen vendors: mean difference {np.mean(deltas):+.3f} "
                f"over {len(deltas)} {where}; 95% CIs separate in {wins} "
                f"({arm} higher) and {losses} ({other} higher), overlap in {ties}"
            )
    return "\n".join(lines)


def _final_cells(final: pd.DataFrame, meta: dict, top: float) -> dict[tuple, tuple]:
    """(arm, task, centre) -> cell of :func:`_cells`, for one seed's records."""
    tasks = meta.get("tasks", TASKS)
    return {
        (a, task, c): cell
        for task in tasks
        for (a, c), cell in _cells(final, metric_name(task, top)).items()
    }


def section(recorder: RunRecorder, console: Console) -> str:
    """Tables II/III, the label-fraction table and the headline, for results.md."""
    meta = recorder.meta.get(META_KEY)
    frame = recorder.frame()
    if not meta or frame.empty:
        return ""
    top = max(meta.get("fractions") or [1.0])
    parts = ["## Contrastive pre-training for unseen vendors (Li et al.)"]
    labelled = ", ".join(meta.get("labelled", []))
    if meta.get("downstream") == "federated":
        parts.append(
            f"Downstream: federated: {meta.get('downstream_rounds')} FedAvg rounds of each task "
            f"model across the labelled centres ({labelled}); every centre, seen or unseen, "
            "tests the one averaged model."
        )
    elif labelled:
        parts.append(
            f"Downstream: local: each labelled centre ({labelled}) fine-tunes its own task "
            "model and tests it; unseen vendors average over those models."
        )
    summary = summary_table(frame, meta)
    if not summary.empty:
        parts += [
            f"### Table III layout: vendor average per task (detection at {top:.0%} labels)",
            to_markdown(summary.fillna(""), index_name="pre-training"),
        ]
    seeds = frame.loc[frame["split"] == "test", "seed"].nunique()
    spread = f"mean (s.d.) over {seeds} seeds" if seeds > 1 else "95% bootstrap CI"
    for task in meta.get("tasks", TASKS):
        name = metric_name(task, top)
        table = task_table(frame, meta, name)
        if not table.empty:
            parts += [
                f"### Table II layout: {name} per vendor [{spread}]",
                to_markdown(table.fillna(""), index_name="pre-training"),
            ]
    fractions = fraction_table(frame, meta)
    if not fractions.empty and len(fractions.columns) > 1:
        parts += [
            "### Label fractions: detection AP50, unseen-vendor average",
            to_markdown(fractions.fillna(""), index_name="pre-training"),
        ]
    text = headline(frame, meta)
    if text:
        parts += ["### Headline", text]
    console.print(f"[bold]contrastive_dg[/]: {len(summary)} arms tabulated in results.md")
    return "\n\n".join(parts)
