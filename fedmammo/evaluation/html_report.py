"""report.html: one self-contained page per run folder, and a comparison page of several runs.

Everything comes from the run folder (results.json, metrics records, results.md, privacy.json,
scenario.resolved.yaml, plots/*.png, run.log, thumbnails/*.png); images are embedded as data
URIs and the CSS is inline, so the page opens offline and can be mailed as one file. A figure
that is a file of the run folder (plots/*.png, a sweep's figures) is also a link to that file,
by a path relative to the page, to open it full size beside the page.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from fedmammo.errors import ConfigError
from fedmammo.evaluation.html_parts import (
    NOT_RECORDED,
    Cell,
    esc,
    fmt_number,
    img_tag,
    markdown_html,
    page,
    table,
)
from fedmammo.evaluation.report import format_estimate
from fedmammo.evaluation.report_charts import (
    learning_curves_png,
    metric_bars_png,
    paired_differences_png,
)
from fedmammo.evaluation.run_folder import (
    RunFolder,
    expand_run_dirs,
    final_records,
    is_sweep,
    load_run,
)
from fedmammo.evaluation.run_sections import audit_section, centres_section, header_section
from fedmammo.files import replace_whole

__all__ = [
    "HEADLINE_METRICS",
    "check_metrics",
    "render_comparison",
    "render_report",
    "write_comparison",
    "write_report",
]

#: Final metrics shown as arm x centre tables, in this order (others go to the long table).
HEADLINE_METRICS = ("auc", "auprc", "accuracy", "f1", "wll")
_NAMES = {"auc": "AUROC", "auprc": "AUPRC", "accuracy": "accuracy", "f1": "F1", "wll": "WLL"}
#: results.md's headings go this many levels down: its ``#`` nests under the page's <h3>.
_RESULTS_MD_SHIFT = 3


def _is_count(metric: str) -> bool:
    """A metric that counts (``n``, ``n_pos``, ``n_breasts``, ``n-images``...)."""
    return metric == "n" or metric.startswith(("n_", "n-"))


def _file_href(path: Path, out_dir: Path) -> str | None:
    """``path`` relative to the page's folder, as a link; None where there is no such path
    (another drive)."""
    try:
        rel = os.path.relpath(path.resolve(), out_dir.resolve())
    except ValueError:
        return None
    return quote(Path(rel).as_posix(), safe="/=,+@")


def _atomic_write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return replace_whole(path, lambda t: t.write_text(text, encoding="utf-8"))


def _order(items: Sequence[str], preferred: Sequence[str] | None) -> list[str]:
    seen = list(dict.fromkeys(items))
    first = [c for c in (preferred or []) if c in seen]
    return first + [c for c in seen if c not in first]


def _value_cell(row: Mapping[str, Any] | None, *, count: bool = False, **attrs: Any) -> Cell:
    """A value with its CI or seed s.d.; with ``count``, a whole value is written as an
    integer (``48``, not ``48.000``)."""
    if row is None or row.get("value") is None or pd.isna(row.get("value")):
        return Cell("-", cls="missing")
    value = float(row["value"])
    lo, hi, sd = (row.get(k) for k in ("ci_low", "ci_high", "std"))
    lo, hi, sd = (None if x is None or pd.isna(x) else float(x) for x in (lo, hi, sd))
    text = format_estimate(value, lo, hi, sd)
    if count and value.is_integer() and lo is None and hi is None:
        text = f"{int(value)}" + (f" ({sd:.3f})" if sd else "")
    return Cell(
        text,
        cls="num",
        attrs={
            **attrs,
            "data-value": repr(value),
            "data-ci-low": None if lo is None else repr(lo),
            "data-ci-high": None if hi is None else repr(hi),
            "data-seeds": row.get("n_seeds"),
        },
    )


def _pivot(
    final: pd.DataFrame, metric: str, column: str, order: Sequence[str] | None, table_id: str
) -> str:
    sel = final[final["metric"] == metric]
    arms = list(dict.fromkeys(sel["arm"]))
    cols = _order(list(sel[column]), order)
    index = {(r["arm"], r[column]): r for r in sel.to_dict("records")}
    rows = []
    for arm in arms:
        cells = [
            _value_cell(
                index.get((arm, c)),
                **{"data-metric": metric, "data-arm": arm, f"data-{column}": c},
            )
            for c in cols
        ]
        rows.append([arm, *cells])
    return table(["arm", *cols], rows, table_id=table_id, cls="results")


def _results_section(run: RunFolder, out_dir: Path) -> str:
    frame = run.frame()
    order = run.meta.get("centre_order")
    final = final_records(frame, split="test")
    parts = ['<section id="results"><h2>Results</h2>']
    if final.empty:
        parts.append("<p class='muted'>No final test metrics were recorded (yet).</p>")
    else:
        metrics = [m for m in HEADLINE_METRICS if m in set(final["metric"])]
        seeds = int(final["n_seeds"].max())
        for i, metric in enumerate(metrics):
            if seeds > 1:
                spread = f"(s.d. over {seeds} seeds) "
            elif final.loc[final["metric"] == metric, "ci_low"].notna().any():
                spread = "[95% CI] "  # AUROC's: over patients (metrics.auc_ci)
            else:
                spread = ""
            title = f"Test {_NAMES.get(metric, metric)} {spread}per arm and evaluating centre"
            block = _pivot(final, metric, "centre", order, f"results-{metric}")
            if i == 0:
                parts.append(f"<h3>{esc(title)}</h3>{block}")
            else:
                parts.append(f"<details><summary>{esc(title)}</summary>{block}</details>")
        segments = final_records(frame, split="test", by_segment=True)
        if (segments.groupby("segment")["centre"].nunique() > 1).any():  # density=A, say
            where = segments["centre"].astype(str) + ": " + segments["segment"].astype(str)
            segments = segments.assign(segment=where)
        if not segments.empty and metrics:
            block = _pivot(segments, metrics[0], "segment", None, "results-segments")
            title = f"Test {_NAMES.get(metrics[0], metrics[0])} per data segment"
            parts.append(f"<details><summary>{esc(title)}</summary>{block}</details>")
        long = final[~final["metric"].isin(metrics)]
        if not long.empty:
            rows = [
                [r["arm"], r["centre"], r["metric"], _value_cell(r, count=_is_count(r["metric"]))]
                for r in long.to_dict("records")
            ]
            parts.append(
                "<details><summary>Other final test metrics</summary>"
                + table(["arm", "centre", "metric", "value"], rows, table_id="results-other")
                + "</details>"
            )
    figures = []
    if not run.plots and not final.empty:
        png = metric_bars_png(final, metric="auc", centres=order)
        if png:
            figures.append(
                img_tag(png, "test AUROC per arm", caption="test AUROC (drawn from the records)")
            )
    differences = paired_differences_png(final, final_records(frame, split="test", by_segment=True))
    if differences:
        figures.append(
            img_tag(
                differences,
                "paired AUROC differences",
                caption="paired test AUROC differences (drawn from the records)",
            )
        )
    curves = learning_curves_png(frame, centres=order)
    if curves:
        figures.append(
            img_tag(curves, "learning curves", caption="learning curves (drawn from the records)")
        )
    if figures:
        parts.append("<h3>Figures from the records</h3>" + "".join(figures))
    if run.results_md:
        parts.append(
            "<h3>Tables of results.md</h3>"
            + "<div id='results-md'>"
            + markdown_html(run.results_md, heading_shift=_RESULTS_MD_SHIFT)
            + "</div>"
        )
    if run.plots:
        parts.append("<h3>Plots of the run (plots/)</h3>")
        parts += [
            img_tag(p.read_bytes(), p.stem, caption=p.name, href=_file_href(p, out_dir))
            for p in run.plots
        ]
    parts.append("</section>")
    return "".join(parts)


def render_report(run: RunFolder, *, out_dir: str | Path | None = None) -> str:
    """The HTML of one run's report; its figures of plots/ link to their files relative to
    ``out_dir``, the page's folder (default: the run folder)."""
    scenario = run.meta.get("scenario") or run.scenario.get("name") or run.path.name
    body = "".join(
        [
            header_section(run),
            centres_section(run),
            _results_section(run, Path(out_dir) if out_dir else run.path),
            audit_section(run),
        ]
    )
    nav = [
        ("run", "Run"),
        ("centres", "Centres"),
        ("results", "Results"),
        ("audit", "Audit trail"),
    ]
    subtitle = run.scenario.get("description") or ""
    made = datetime.now().strftime("%Y-%m-%d %H:%M")
    return page(
        f"fedmammo report: {scenario}",
        subtitle,
        nav,
        body,
        f"Generated {made} by fedmammo.report from {run.path}",
    )


def write_report(run_dir: str | Path, *, out: str | Path | None = None) -> Path:
    """Write ``<run_dir>/report.html`` (or ``out``) and return its path.

    Thumbnail grids (``<run_dir>/thumbnails/<centre>.png``) are shown for synthetic centres
    only: real images stay out of a report, which is made to be passed around.
    """
    run = load_run(run_dir)
    path = Path(out) if out else run.path / "report.html"
    return _atomic_write(path, render_report(run, out_dir=path.parent))


# ---------------------------------------------------------------------- comparison page
def _labels(runs: Sequence[RunFolder]) -> list[str]:
    """Column names: a run's name, a sweep point's settings (after its sweep's folder when
    several sweeps are compared), primed if still taken."""
    sweeps = {r.path.parent.parent for r in runs if r.path.parent.name == "points"}
    labels = []
    for run in runs:
        label = run.name
        if run.path.parent.name == "points":
            sweep = run.path.parent.parent
            label = f"{sweep.name}/{run.path.name}" if len(sweeps) > 1 else run.path.name
        while label in labels:
            label += "'"
        labels.append(label)
    return labels


def _fact_rows(runs: Sequence[RunFolder]) -> list[list[Any]]:
    def sets(run: RunFolder) -> str:
        return ", ".join(run.settings) or "-"

    def eps(run: RunFolder) -> str:
        if run.privacy is None:
            return NOT_RECORDED
        summary = run.privacy.get("summary") or {}
        spent = [f"{c}: {fmt_number(v.get('max_epsilon'))}" for c, v in summary.items()]
        return ", ".join(spent) or "none (no DP)"

    def wall(run: RunFolder) -> str:
        w = run.meta.get("wall_seconds")
        return NOT_RECORDED if w is None else f"{float(w):.1f} s"

    facts = [
        ("scenario", lambda r: r.meta.get("scenario") or r.scenario.get("name") or "-"),
        ("method", lambda r: r.meta.get("kind") or r.meta.get("strategy") or "-"),
        ("settings", sets),
        ("seeds", lambda r: ", ".join(map(str, r.meta.get("seeds", []))) or NOT_RECORDED),
        ("quick", lambda r: fmt_number(r.meta.get("quick"))),
        ("wall time", wall),
        ("git commit", lambda r: str(r.meta.get("git_commit") or NOT_RECORDED)[:12]),
        ("max epsilon spent", eps),
    ]
    return [[Cell(name, cls="fact"), *[f(r) for r in runs]] for name, f in facts]


def check_metrics(
    run_dirs: Sequence[str | Path], metrics: Sequence[str], *, split: str = "test"
) -> None:
    """ConfigError naming the metrics no run holds (final ``split`` records), e.g. a typo."""
    runs = [load_run(p) for p in expand_run_dirs(list(run_dirs))]
    held = sorted({m for r in runs for m in final_records(r.frame(), split=split)["metric"]})
    unknown = [m for m in metrics if m not in held]
    if unknown:
        raise ConfigError(
            f"--metric {', '.join(map(repr, unknown))}: not a final {split} metric of "
            f"{', '.join(map(str, run_dirs))}; fix: one of the metrics held there: "
            f"{', '.join(held) or '(none)'}"
        )


def render_comparison(
    run_dirs: Sequence[str | Path],
    *,
    metrics: Sequence[str] = ("auc",),
    split: str = "test",
    out_dir: str | Path | None = None,
) -> str:
    """The HTML of a comparison page: one table, one column per run (sweeps expanded).

    Links to the runs' own report.html files are relative to ``out_dir`` (default: cwd).
    """
    runs = [load_run(p) for p in expand_run_dirs(list(run_dirs))]
    labels = _labels(runs)
    page_dir = Path(out_dir or ".")
    finals = [final_records(r.frame(), split=split) for r in runs]
    keys: list[tuple[str, str, str]] = []
    for f in finals:
        sel = f[f["metric"].isin(list(metrics))]
        keys += [(m, a, c) for m, a, c in zip(sel["metric"], sel["arm"], sel["centre"])]
    keys = sorted(dict.fromkeys(keys), key=lambda k: list(metrics).index(k[0]))
    index = [
        {(r["metric"], r["arm"], r["centre"]): r for r in f.to_dict("records")} for f in finals
    ]
    rows = _fact_rows(runs)
    for metric, arm, centre in keys:
        label = f"{split} {_NAMES.get(metric, metric)}: {arm} @ {centre}"
        cells = [
            _value_cell(
                ix.get((metric, arm, centre)),
                count=_is_count(metric),
                **{"data-run": lab, "data-metric": metric, "data-arm": arm, "data-centre": centre},
            )
            for ix, lab in zip(index, labels)
        ]
        if any(c.cls != "missing" for c in cells):  # a row of dashes says nothing
            rows.append([label, *cells])
    parts = [
        '<section id="comparison-section"><h2>Comparison</h2>',
        f"<p>{len(runs)} runs; values are {esc(split)} metrics of the whole evaluating centre, "
        "with the 95% CI of one seed or the s.d. over seeds.</p>",
        table(["", *labels], rows, table_id="comparison", cls="results"),
    ]
    for f, label in zip(finals, labels):
        if not f[f["metric"].isin(list(metrics)) & f["value"].notna()].empty:
            continue
        own = sorted(set(f.loc[f["value"].notna(), "metric"]))
        shown = ", ".join(own[:8]) + (", ..." if len(own) > 8 else "")
        held = (
            f"its {split} metrics: {shown} (choose with --metric)" if own else f"no {split} metric"
        )
        parts.append(
            f"<p class='muted'>{esc(label)} holds none of the metrics shown "
            f"({esc(', '.join(metrics))}); {esc(held)}.</p>"
        )
    links = []
    for run, label in zip(runs, labels):
        report = run.path / "report.html"
        if report.is_file():
            href = _file_href(report, page_dir)
            if href:
                links.append(f'<li><a href="{esc(href)}">{esc(label)}</a></li>')
    if links:
        parts.append(f"<h3>Reports of the runs</h3><ul>{''.join(links)}</ul>")
    sweep_pngs = [p for d in map(Path, run_dirs) if is_sweep(d) for p in sorted(d.glob("*.png"))]
    if sweep_pngs:
        parts.append("<h3>Sweep figures</h3>")
        parts += [
            img_tag(p.read_bytes(), p.stem, caption=p.name, href=_file_href(p, page_dir))
            for p in sweep_pngs
        ]
    parts.append("</section>")
    made = datetime.now().strftime("%Y-%m-%d %H:%M")
    title = "fedmammo comparison: " + ", ".join(
        dict.fromkeys(r.meta.get("scenario", "?") for r in runs)
    )
    return page(
        title,
        " | ".join(str(Path(d)) for d in run_dirs),
        [("comparison-section", "Comparison")],
        "".join(parts),
        f"Generated {made} by fedmammo.report",
    )


def write_comparison(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    metrics: Sequence[str] = ("auc",),
    split: str = "test",
) -> Path:
    """Write a comparison page of several runs (a sweep folder counts as its points)."""
    out = Path(out)
    html = render_comparison(run_dirs, metrics=metrics, split=split, out_dir=out.parent.resolve())
    return _atomic_write(out, html)
