"""Summaries of a run: the terminal table and results.md."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
from rich.console import Console
from rich.table import Table

from fedmammo.evaluation.claims import finite_number
from fedmammo.evaluation.metrics import MIN_UNITS_PER_CLASS
from fedmammo.evaluation.results import RunRecorder

__all__ = [
    "final_table",
    "format_estimate",
    "format_reference",
    "reference_caveat",
    "reference_table",
    "share_table",
    "to_markdown",
    "write_summary",
]

#: Under a table of AUROCs with CIs.
NO_CI_NOTE = (
    "95% CIs over the centre's test patients (logit interval, Obuchowski's variance, t "
    "quantile: docs/report.md); a value alone where the centre tests "
    f"fewer than {MIN_UNITS_PER_CLASS} malignant or {MIN_UNITS_PER_CLASS} benign patients, "
    "too few for a CI (docs/report.md)."
)


def format_estimate(
    value: float | None,
    lo: float | None = None,
    hi: float | None = None,
    std: float | None = None,
) -> str:
    """``0.821 [0.593, 0.984]`` with a CI, ``0.821 (0.019)`` with a seed s.d. instead, else
    ``0.821`` (a None or NaN bound is no CI); ``n/a`` without a value. Every table of a run
    (terminal, results.md, report.html) writes an estimate this way."""
    if value is None or pd.isna(value):
        return "n/a"
    if not (lo is None or pd.isna(lo) or hi is None or pd.isna(hi)):
        return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"
    if std is not None and not pd.isna(std):
        return f"{value:.3f} ({std:.3f})"
    return f"{value:.3f}"


def final_table(
    df: pd.DataFrame, metric: str = "auc", split: str = "test", centres: list[str] | None = None
) -> pd.DataFrame:
    """Arms x centres table of a final metric (whole centre, mean over seeds with the CI of
    the first seed when there is one seed)."""
    sel = df[
        (df["metric"] == metric)
        & (df["split"] == split)
        & df["segment"].isna()
        & df["round"].isna()
    ]
    if sel.empty:
        return pd.DataFrame()
    rows = {}
    for (arm, centre), g in sel.groupby(["arm", "centre"], sort=False):
        if len(g) == 1:
            r = g.iloc[0]
            rows.setdefault(arm, {})[centre] = format_estimate(
                r["value"], r["ci_low"], r["ci_high"]
            )
        else:
            v = g["value"].astype(float)
            rows.setdefault(arm, {})[centre] = f"{v.mean():.3f} ({v.std(ddof=1):.3f})"
    table = pd.DataFrame(rows).T
    order = [c for c in (centres or []) if c in table.columns]
    return table[order + [c for c in table.columns if c not in order]]


def write_summary(
    recorder: RunRecorder,
    console: Console | None = None,
    *,
    section: Callable[[RunRecorder, Console], str] | None = None,
) -> str:
    """Print the final AUROC table (rich) and write results.md, with the method's
    ``section`` appended; return the markdown."""
    console = console or Console()
    df = recorder.frame()
    table = final_table(df, centres=recorder.meta.get("centre_order"))
    lines = [f"# Results: {recorder.meta.get('scenario', '')}", ""]
    if not table.empty:
        seeds = df["seed"].nunique()
        what = "[95% CI]" if seeds <= 1 else f"mean (std) over {seeds} seeds"
        rt = Table(title=f"Test AUROC {what}")
        rt.add_column("arm", overflow="fold")  # fold, never cut to "…", on a narrow console
        for c in table.columns:
            rt.add_column(str(c), overflow="fold")
        for arm, row in table.iterrows():
            rt.add_row(str(arm), *[str(v) if isinstance(v, str) else "" for v in row])
        console.print(rt)
        lines += [
            f"Test AUROC {what} per arm (rows) and evaluating centre (columns)"
            + (f": {NO_CI_NOTE}" if seeds <= 1 else "."),
            "",
            to_markdown(table.fillna("")),
        ]
    if not (reference := reference_table(recorder.meta)).empty:
        lines += ["", REFERENCE_TITLE, "", REFERENCE_NOTE, "", to_markdown(reference, "")]
    if not (shares := share_table(df, recorder.meta.get("centre_order"))).empty:
        lines += ["", SHARES_TITLE, "", SHARES_NOTE, "", to_markdown(shares.fillna(""))]
    if rules := recorder.meta.get("aggregation"):
        each = "; ".join(f"{arm}: {rule}" for arm, rule in rules.items())
        lines += ["", f"{AGGREGATION_NOTE} {each}."]
    extra = section(recorder, console) if section is not None else ""
    if extra:  # the method's own tables (a method without AUROC records has only these)
        lines += ([] if table.empty else [""]) + [extra]
    elif table.empty:
        lines.append("No final test metrics were recorded.")
    if recorder.failures:
        lines += ["", f"{len(recorder.failures)} centre failures recorded (see results.json)."]
    for note in recorder.notes:
        lines += ["", f"- {note}"]
    text = "\n".join(lines) + "\n"
    (recorder.run_dir / "results.md").write_text(text)
    return text


REFERENCE_TITLE = "## Reference: the brightest pixel, no model"
REFERENCE_NOTE = (
    "Each centre's test images scored by their brightest pixel (the image cache's), no model: "
    "malignancy AUROC [95% CI over patients], computed inside the centre when it "
    "connected. An image-level malignancy AUROC at or below it has learned no more than "
    '"something bright is in this image". How high it is depends on the centres: README, '
    "\"What the phantom's malignancy task measures\", measured 0.96-0.97 at `fedavg_quick`'s "
    "s3 and s4 at that scenario's full settings (128x96 images, `lesion_contrast` 2.5), where "
    "the task is mostly lesion detection; it is lower on smaller images, at lower contrast and "
    "with more benign findings. This run's own values are the row below."
)
#: Methods whose test AUROCs score lesion patches, not whole images: the image-level
#: brightest-pixel reference measures another task there (README: patches have their own
#: shortcut, counting specks).
PATCH_AUROC_KINDS = frozenset({"share_gans"})
#: What the reference row (results.md) and column (report.html) say for those methods.
REFERENCE_NOT_COMPARABLE = "image-level: not comparable with this run's lesion-patch AUROCs"


def reference_caveat(kind: str | None) -> str:
    """Why a run's brightest-pixel reference cannot be read against its AUROCs (the run's
    ``meta["kind"]`` scores lesion patches); empty for image-level methods."""
    return REFERENCE_NOT_COMPARABLE if kind in PATCH_AUROC_KINDS else ""


def reference_table(meta: dict) -> pd.DataFrame:
    """One row: each centre's brightest-pixel reference AUROC (``meta.centres.<c>.
    brightest_pixel``), in the centre order; empty when no centre has one. For a method
    whose AUROCs score lesion patches (:data:`PATCH_AUROC_KINDS`) the row's label says it
    is not comparable with them."""
    centres = meta.get("centres") or {}
    order = [c for c in meta.get("centre_order") or [] if c in centres]
    row = {}
    for centre in order + [c for c in centres if c not in order]:
        estimate = format_reference((centres[centre] or {}).get("brightest_pixel"))
        if estimate is not None:
            row[centre] = estimate
    caveat = reference_caveat(meta.get("kind"))
    label = f"brightest pixel ({caveat})" if caveat else "brightest pixel"
    return pd.DataFrame([row], index=[label]) if row else pd.DataFrame()


def format_reference(ref: dict | None) -> str | None:
    """A centre's brightest-pixel reference as an estimate (:func:`format_estimate`); None
    when there is none or it has no value."""
    ref = ref or {}
    auc = finite_number(ref.get("brightest_pixel_auc"))
    return None if auc is None else format_estimate(auc, ref.get("ci_low"), ref.get("ci_high"))


AGGREGATION_NOTE = (
    "Arms whose rounds combined the centres' updates by a robust rule instead of FedAvg's "
    "weighted mean (`strategy.params.aggregation`; every centre counts once, no shares):"
)
SHARES_TITLE = "## Each centre's share of the federated average"
SHARES_NOTE = (
    "The normalised FedAvg weight of each training centre (`fedavg_share`), mean over the "
    "arm's rounds that averaged two or more centres (a round a centre missed records no "
    "share) and seeds, under the arm's `weighting` (results.json `meta.weighting`). "
    "Arms whose shares differ were averaged from different mixes of the centres' updates as "
    "well as trained differently: `labelled` counts the images labelled for the arm's tasks."
)


def share_table(df: pd.DataFrame, centres: list[str] | None = None) -> pd.DataFrame:
    """Arms x centres: each centre's mean ``fedavg_share`` over the arm's rounds and seeds,
    two decimals (empty without such records)."""
    sel = df[(df["metric"] == "fedavg_share") & (df["split"] == "train")]
    if sel.empty:
        return pd.DataFrame()
    means = sel.groupby(["arm", "centre"], sort=False)["value"].mean().unstack("centre")
    order = [c for c in (centres or []) if c in means.columns]
    means = means[order + [c for c in means.columns if c not in order]]
    return means.map(lambda v: "" if pd.isna(v) else f"{v:.2f}")


def to_markdown(df: pd.DataFrame, index_name: str = "arm") -> str:
    """A pipe table of ``df`` (index as the first column), without extra dependencies."""
    header = [index_name, *map(str, df.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join([str(idx), *map(str, row.tolist())]) + " |")
    return "\n".join(lines)
