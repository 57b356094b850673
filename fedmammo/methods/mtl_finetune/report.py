"""Multi-task evaluation records and the multi-task paper result tables (Tables 2-5, 8-9 layouts).

:func:`mtl_records` turns one evaluation's predictions into metric records (what a centre may
send). The table builders read the run's records (``RunRecorder.frame()``): final test
figures, one cell per arm and evaluating centre, in percent, ``value (CI low, CI high)`` for a
single seed and ``mean (std)`` over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from fedmammo.evaluation.metrics import (
    MIN_UNITS_PER_CLASS,
    auc_ci,
    best_mcc,
    breast_level,
    mcc_at_threshold,
    paired_permutation_p,
    specificity_at_sensitivity,
    units_per_class,
)
from fedmammo.evaluation.results import RunRecorder
from fedmammo.evaluation.tables import format_auc, format_p_value
from fedmammo.methods.mtl_finetune.params import parse_arm, reference_arm

__all__ = [
    "section",
    "DENSITY_CLASSES",
    "PAPER_THRESHOLD",
    "ResultTable",
    "STRATA",
    "TRIAGE_SENSITIVITY",
    "VIEW_CLASSES",
    "build_mtl_tables",
    "mtl_records",
    "print_tables",
    "tables_markdown",
]

#: The multi-task paper's operating point (section 4): malignant when P(malignant) > 0.5.
PAPER_THRESHOLD = 0.5
#: Its triage operating point (section 4): the specificity at 95 % sensitivity.
TRIAGE_SENSITIVITY = 0.95

DENSITY_CLASSES: tuple[str, ...] = ("A", "B", "C", "D")
VIEW_CLASSES: tuple[str, ...] = ("CC", "MLO")
#: Segment keys of the density and view strata, in table order.
STRATA: tuple[str, ...] = (
    *(f"density={d}" for d in DENSITY_CLASSES),
    *(f"view={v}" for v in VIEW_CLASSES),
)
_MAIN_ARMS = ("single_task", "single_task_fusion", "mtl")
_TABLE4_ARMS = (
    "mtl",
    "single_task",
    "single_task_fusion",
    "mtl_rec",
    "mtl_acr",
    "mtl_density",
    "mtl_view",
)
_TASK_METRICS = (
    ("auc", "malignancy AUC"),
    ("acr_balanced_accuracy", "ACR bal. accuracy"),
    ("density_balanced_accuracy", "density bal. accuracy"),
    ("view_auc", "view AUC"),
)


# ---------------------------------------------------------------------------- records
def _record(segment: str | None, metric: str, value: float, lo=None, hi=None) -> dict[str, Any]:
    return {"segment": segment, "metric": metric, "value": value, "ci_low": lo, "ci_high": hi}


def _auc(
    y: np.ndarray, score: np.ndarray, with_ci: bool, patients: np.ndarray | None = None
) -> tuple[float, ...]:
    """AUC (and its CI over ``patients``, each image's) of the labelled images (``y`` >= 0)."""
    keep = y >= 0
    if not keep.any():  # none labelled (one class: auc_ci's NaN)
        return math.nan, math.nan, math.nan
    groups = None if patients is None else patients[keep]
    return auc_ci(y[keep], score[keep], groups=groups, with_ci=with_ci)


def _paired_p(
    y: np.ndarray,
    score: np.ndarray,
    reference: np.ndarray,
    n_boot: int,
    seed: int,
    groups: np.ndarray | None,
) -> float:
    """Two-sided p of AUC(score) != AUC(reference) on the same images: the paired permutation
    test every other method's gains use (``n_boot`` permutations, whole patients swapped with
    ``groups``). NaN with ``n_boot`` 0 or fewer than ``MIN_UNITS_PER_CLASS`` units of a class,
    as a CI. (DeLong's test with Obuchowski's variance, used here before, fell below 0.05 for
    7-10% of equally good pairs with 5-10 malignant test patients: docs/report.md.)"""
    if n_boot == 0 or units_per_class(y, groups) < MIN_UNITS_PER_CLASS:
        return math.nan
    return paired_permutation_p(y, reference, score, n_boot, seed, groups=groups)


def _balanced_accuracy(y: np.ndarray, prob: np.ndarray) -> float:
    keep = y >= 0
    if not keep.any():
        return math.nan
    pred = prob[keep].argmax(axis=1)
    labels = np.unique(y[keep])
    recalls = [np.mean(pred[y[keep] == k] == k) for k in labels]
    return float(np.mean(recalls))  # = sklearn's balanced_accuracy_score without warnings


def _patients(breasts) -> np.ndarray:
    """The patient part of ``patient|laterality`` breast keys (what a bootstrap resamples)."""
    return np.asarray([str(b).rsplit("|", 1)[0] for b in breasts], dtype=object)


def _two_classes(y: np.ndarray) -> bool:
    return len(np.unique(y)) == 2


def _malignancy_records(
    segment: str | None,
    y: np.ndarray,
    score: np.ndarray,
    breasts: np.ndarray | None,
    reference: np.ndarray | None,
    n_boot: int,
    seed: int,
    patients: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """The paper's fine-tuning metrics: operating points, breast-wise AUC, paired p-values
    (whole ``patients``, each image's, permuted when given)."""
    keep = y >= 0
    yk, sk = y[keep], score[keep]
    out: list[dict[str, Any]] = []
    if _two_classes(yk):
        if reference is not None:
            groups = None if patients is None else patients[keep]
            p = _paired_p(yk, sk, reference[keep], n_boot, seed, groups)
            ref_auc = _auc(yk, reference[keep], False)[0]
            out += [_record(segment, "auc_p", p), _record(segment, "reference_auc", ref_auc)]
        out += [
            _record(segment, k, v) for k, v in mcc_at_threshold(yk, sk, PAPER_THRESHOLD).items()
        ]
        mcc, sens, spec = best_mcc(yk, sk)
        out += [
            _record(segment, "mcc_best", mcc),
            _record(segment, "sensitivity_at_mcc_best", sens),
            _record(segment, "specificity_at_mcc_best", spec),
            _record(
                segment,
                "specificity_at_sens95",
                specificity_at_sensitivity(yk, sk, TRIAGE_SENSITIVITY),
            ),
        ]
    if breasts is not None:
        yb, sb = breast_level(breasts, y, score)
        # each breast's patient, in breast_level's order (labelled breasts by key)
        patients = _patients(sorted(set(breasts[y >= 0])))
        out.append(_record(segment, "n_breasts", float(len(yb))))
        out.append(_record(segment, "breast_auc", *_auc(yb, sb, n_boot > 0, patients)))
        if reference is not None and _two_classes(yb):
            _, rb = breast_level(breasts, y, reference)
            p = _paired_p(yb, sb, rb, n_boot, seed, patients)
            out.append(_record(segment, "breast_auc_p", p))
    return out


def _scope(
    segment: str | None,
    mask: np.ndarray,
    predictions,
    labels,
    n_boot,
    seed,
    *,
    full: bool,
    breasts: np.ndarray | None = None,
    reference: Mapping[str, np.ndarray] | None = None,
    patients: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    out = [_record(segment, "n", float(mask.sum()))]
    if "malignancy" in predictions and "malignancy" in labels:
        y = labels["malignancy"][mask]
        score = predictions["malignancy"][mask][:, 1]
        ref = None if reference is None else reference["malignancy"][mask][:, 1]
        out.append(_record(segment, "n_malignant", float((y == 1).sum())))
        mine = None if patients is None else patients[mask]
        out.append(_record(segment, "auc", *_auc(y, score, n_boot > 0, mine)))
        if full:
            where = None if breasts is None else breasts[mask]
            out += _malignancy_records(segment, y, score, where, ref, n_boot, seed, mine)
        elif ref is not None and _two_classes(y[y >= 0]):
            keep = y >= 0
            groups = None if mine is None else mine[keep]
            p = _paired_p(y[keep], score[keep], ref[keep], n_boot, seed, groups)
            out.append(_record(segment, "auc_p", p))
    if not full:
        return out
    if "view" in predictions and "view" in labels:
        auc = _auc(labels["view"][mask], predictions["view"][mask][:, 1], False)
        if math.isfinite(auc[0]):
            out.append(_record(segment, "view_auc", auc[0]))
    for task in ("acr", "density"):
        if task in predictions and task in labels:
            value = _balanced_accuracy(labels[task][mask], predictions[task][mask])
            if math.isfinite(value):
                out.append(_record(segment, f"{task}_balanced_accuracy", value))
    return out


def mtl_records(
    predictions: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    segments: Sequence[str] | None = None,
    *,
    n_boot: int = 0,
    seed: int = 0,
    breasts: Sequence[str] | None = None,
    reference: Mapping[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Metric records of one multi-task evaluation: whole set, strata and data segments.

    ``predictions[task]`` are (N, C) probabilities, ``labels[task]`` (N,) class indices with
    -1 for missing. Whole set (segment None) and each data segment: ``n``, ``n_malignant``,
    ``auc`` (malignancy, with bootstrap CI when ``n_boot`` > 0; NaN with one class),
    ``view_auc``, ``acr_balanced_accuracy`` and ``density_balanced_accuracy`` (where
    defined), and the paper's operating points on the labelled images: ``mcc``,
    ``sensitivity``, ``specificity`` at ``P(malignant) > 0.5``, ``mcc_best`` (with
    ``sensitivity_at_mcc_best``, ``specificity_at_mcc_best``) and ``specificity_at_sens95``.
    With ``breasts`` (a key per image, ``patient|laterality``) the ``auc`` and ``breast_auc``
    CIs are over whole patients; ``n_breasts`` and
    ``breast_auc`` (highest probability of the breast's images,
    :func:`fedmammo.evaluation.metrics.breast_level`).
    With ``reference`` (the reference arm's predictions on the same images): ``auc_p``
    (the paired permutation test of the two AUCs, ``n_boot`` permutations; with ``breasts``,
    whole patients swapped; NaN with ``n_boot`` 0), ``reference_auc`` and ``breast_auc_p``.
    Strata ``density=A..D`` and ``view=CC/MLO`` (by the true label): ``n``,
    ``n_malignant``, ``auc`` and, with ``reference``, ``auc_p``.
    """
    n = len(next(iter(labels.values())))
    keys = None if breasts is None else np.asarray([str(b) for b in breasts], dtype=object)
    # the image-level AUC's CI is over patients (the patient part of a breast key)
    patients = None if keys is None else _patients(keys)
    records = _scope(
        None,
        np.ones(n, bool),
        predictions,
        labels,
        n_boot,
        seed,
        full=True,
        breasts=keys,
        reference=reference,
        patients=patients,
    )
    for task, names in (("density", DENSITY_CLASSES), ("view", VIEW_CLASSES)):
        if task in labels:
            for k, name in enumerate(names):
                mask = np.asarray(labels[task]) == k
                if mask.any():
                    records += _scope(
                        f"{task}={name}",
                        mask,
                        predictions,
                        labels,
                        n_boot,
                        seed,
                        full=False,
                        reference=reference,
                        patients=patients,
                    )
    if segments is not None:
        text = np.asarray([str(s) for s in segments], dtype=object)
        for seg in sorted(set(text)):
            records += _scope(
                seg,
                text == seg,
                predictions,
                labels,
                n_boot,
                seed,
                full=True,
                breasts=keys,
                reference=reference,
                patients=patients,
            )
    return records


# ---------------------------------------------------------------------------- tables
@dataclass
class ResultTable:
    """One result table: a title, string cells (index = row labels) and a footnote."""

    title: str
    frame: pd.DataFrame
    note: str = ""

    def markdown(self) -> str:
        """The table as a titled GitHub pipe table."""
        cols = [self.frame.index.name or "", *map(str, self.frame.columns)]
        lines = [f"### {self.title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for idx, row in self.frame.iterrows():
            lines.append("| " + " | ".join([str(idx), *map(str, row.tolist())]) + " |")
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"

    def rich(self) -> Table:
        """The table for the terminal."""
        table = Table(title=self.title, caption=self.note or None)
        table.add_column(self.frame.index.name or "", overflow="fold")  # fold, never cut to "…"
        for c in self.frame.columns:
            table.add_column(str(c), justify="right", overflow="fold")
        for idx, row in self.frame.iterrows():
            table.add_row(str(idx), *map(str, row.tolist()))
        return table


def _final(df: pd.DataFrame, split: str) -> pd.DataFrame:
    return df[(df["split"] == split) & df["round"].isna()]


def _cell(rows: pd.DataFrame) -> str:
    values = pd.to_numeric(rows["value"], errors="coerce").dropna()
    if values.empty:
        return "n/a"
    if len(rows) == 1:
        r = rows.iloc[0]
        lo, hi = r["ci_low"], r["ci_high"]
        return format_auc(
            float(r["value"]),
            None if pd.isna(lo) else float(lo),
            None if pd.isna(hi) else float(hi),
        )
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean() * 100:.2f} ({std * 100:.2f})"


def _p_cell(rows: pd.DataFrame) -> str:
    """p-values, one per seed (``/``-separated in seed order; "n/a" where a stratum has too
    few patients of a class for one); ``""`` without any."""
    values = pd.to_numeric(rows.sort_values("seed")["value"], errors="coerce")
    return " / ".join(format_p_value(float(v)) for v in values)


def _number_cell(rows: pd.DataFrame) -> str:
    """A unitless value (MCC) with two decimals: ``value`` or ``mean (std)`` over seeds."""
    values = pd.to_numeric(rows["value"], errors="coerce").dropna()
    if values.empty:
        return "n/a"
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ({values.std(ddof=1):.2f})"


def _select(
    df: pd.DataFrame, *, arm: str, centre: str, metric: str, segment: str | None = None
) -> pd.DataFrame:
    sel = df[(df["arm"] == arm) & (df["centre"] == centre) & (df["metric"] == metric)]
    return sel[sel["segment"].isna()] if segment is None else sel[sel["segment"] == segment]


def _lookup(
    df: pd.DataFrame, *, arm: str, centre: str, metric: str, segment: str | None = None
) -> str:
    return _cell(_select(df, arm=arm, centre=centre, metric=metric, segment=segment))


def _with_p(df: pd.DataFrame, *, arm: str, centre: str, segment: str | None = None) -> str:
    """The arm's AUC cell, with the paired p against its reference arm when recorded."""
    cell = _lookup(df, arm=arm, centre=centre, metric="auc", segment=segment)
    p = _p_cell(_select(df, arm=arm, centre=centre, metric="auc_p", segment=segment))
    return f"{cell} p={p}" if p and cell != "n/a" else cell


def _ordered(values: Sequence[str], order: Sequence[str]) -> list[str]:
    return [v for v in order if v in set(values)]


def _frame(rows: dict[str, dict[str, str]], index_name: str) -> pd.DataFrame:
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = index_name
    return frame


def _strata_table(df: pd.DataFrame, centre: str, arms: list[str]) -> ResultTable:
    rows: dict[str, dict[str, str]] = {}
    for label, segment in (("overall", None), *((s, s) for s in STRATA)):
        rows[label] = {a: _with_p(df, arm=a, centre=centre, segment=segment) for a in arms}
    has_p = (df["metric"] == "auc_p").any()
    return ResultTable(
        f"Malignancy AUC (%) by density and view at {centre} (multi-task paper Tables 2-3)",
        _frame(rows, "stratum"),
        _P_NOTE if has_p else "",
    )


_P_NOTE = (
    "p: the paired permutation test of the arm's AUC against its reference arm's on the "
    "same test images (a fine-tuning arm against mtl, any other arm against the single-task "
    "baseline), one value per seed; it swaps the two models' scores of whole patients, whose "
    "images are not independent (docs/report.md). n/a, and an AUC without CI: fewer than "
    f"{MIN_UNITS_PER_CLASS} malignant or {MIN_UNITS_PER_CLASS} benign patients in the "
    "stratum, too few to estimate either (docs/report.md)."
)
_OPERATING_COLUMNS = (
    ("auc", "AUC", _cell),
    ("auc_p", "p (AUC)", _p_cell),
    ("breast_auc", "breast AUC", _cell),
    ("breast_auc_p", "p (breast AUC)", _p_cell),
    ("mcc", "MCC", _number_cell),
    ("sensitivity", "sens.", _cell),
    ("specificity", "spec.", _cell),
    ("mcc_best", "best MCC", _number_cell),
    ("sensitivity_at_mcc_best", "sens. @ best MCC", _cell),
    ("specificity_at_mcc_best", "spec. @ best MCC", _cell),
    ("specificity_at_sens95", "spec. @ 95% sens.", _cell),
)


def _operating_table(df: pd.DataFrame, centre: str, arms: list[str]) -> ResultTable:
    rows = {}
    for arm in arms:
        row = {"reference": reference_arm(arm, arms) or "-"}
        for metric, name, cell in _OPERATING_COLUMNS:
            row[name] = cell(_select(df, arm=arm, centre=centre, metric=metric)) or "-"
        rows[arm] = row
    return ResultTable(
        f"Malignancy at the paper's operating points at {centre} (multi-task paper section 4)",
        _frame(rows, "arm"),
        "Percent except MCC and p. MCC, sens. and spec. at P(malignant) > 0.5 (the paper's "
        "operating point); best MCC: the highest MCC over the thresholds of the test ROC, as "
        "the paper reports it: a threshold chosen on the test images, so an upper bound "
        "(above 0 even for a chance-level model); spec. @ 95% sens.: "
        "the triage point. Breast AUC: each breast scored by the highest probability of its "
        "images (the paper's breast-wise protocol). " + _P_NOTE,
    )


def _aux_table(
    df: pd.DataFrame, arms: list[str], centres: list[str], decoder_default: bool
) -> ResultTable:
    rows = {}
    for arm in arms:
        spec = parse_arm(arm)
        tasks = set(spec.tasks or ("malignancy", "acr", "density", "view"))
        rec = decoder_default if spec.decoder is None else spec.decoder
        row = {"fusion": "+" if spec.fusion else "-", "rec": "+" if rec else "-"}
        row |= {t: "+" if t in tasks else "-" for t in ("acr", "density", "view")}
        row |= {c: _lookup(df, arm=arm, centre=c, metric="auc") for c in centres}
        rows[arm] = row
    return ResultTable(
        "Contribution of each auxiliary task: malignancy AUC (%) (multi-task paper Table 4)",
        _frame(rows, "arm"),
        # not a leading "+ ": markdown would read it as a list marker and drop the key
        "Key: `+` enabled, `-` disabled; every arm trains the malignancy head.",
    )


def _drop_key(arm: str) -> tuple[int, float]:
    spec = parse_arm(arm)
    return (int(spec.drop_all_tasks), spec.drop_fraction)


def _drop_table(df: pd.DataFrame, arms: list[str], centres: list[str]) -> ResultTable:
    rows = {}
    for arm in arms:
        label = "reference (mtl)" if arm == "mtl" else arm
        rows[label] = {c: _lookup(df, arm=arm, centre=c, metric="auc") for c in centres}
    return ResultTable(
        "Training with fewer labels: malignancy AUC (%) (multi-task paper Table 5)",
        _frame(rows, "arm"),
        "drop_malignancy_P: P% of malignancy labels removed at every training "
        "centre; drop_all_P: P% of the images removed (all their labels).",
    )


def _finetune_table(df: pd.DataFrame, centre: str, arms: list[str]) -> ResultTable:
    rows = {}
    for arm in arms:
        label = "reference (mtl)" if arm == "mtl" else arm
        rows[label] = {
            name: _lookup(df, arm=arm, centre=centre, metric=m) for m, name in _TASK_METRICS
        }
        if (df["metric"] == "auc_p").any():
            p = _p_cell(_select(df, arm=arm, centre=centre, metric="auc_p"))
            rows[label]["p vs mtl (AUC)"] = p if arm != "mtl" and p else "-"
    return ResultTable(
        f"Fine-tuning on ACR-derived malignancy labels with uncertainty u1, "
        f"evaluated at {centre} (multi-task paper Tables 8-9)",
        _frame(rows, "arm"),
    )


def build_mtl_tables(
    df: pd.DataFrame, *, split: str = "test", decoder_default: bool = True
) -> list[ResultTable]:
    """The multi-task paper tables for the arms and centres present in ``df`` (a run's records).

    Tables 2-3 (per evaluating centre: single-task arms vs ``mtl``, whole set and strata),
    Table 4 (auxiliary tasks), Table 5 (label drops, with ``mtl`` as reference) and Tables 8-9
    (per centre: fine-tuning arms, all four task metrics). A table whose arms are absent is
    left out. ``decoder_default`` is the recipe's ``model.decoder`` (the ``rec`` column).
    """
    final = _final(df, split)
    if final.empty:
        return []
    arms = list(dict.fromkeys(final["arm"]))
    centres = list(dict.fromkeys(final["centre"]))
    tables: list[ResultTable] = []
    main = _ordered(arms, _MAIN_ARMS)
    if main:
        tables += [_strata_table(final, c, main) for c in centres]
    aux = _ordered(arms, _TABLE4_ARMS)
    if len(aux) > 1 or (aux and aux != ["mtl"]):
        tables.append(_aux_table(final, aux, centres, decoder_default))
    drops = sorted((a for a in arms if parse_arm(a).drop_fraction > 0), key=_drop_key)
    if drops:
        tables.append(_drop_table(final, _ordered(arms, ["mtl"]) + drops, centres))
    tuned = sorted(
        (a for a in arms if parse_arm(a).finetune_u1 is not None),
        key=lambda a: parse_arm(a).finetune_u1,
    )
    if tuned:
        ref = _ordered(arms, ["mtl"])
        tables += [_finetune_table(final, c, ref + tuned) for c in centres]
    if (final["metric"] == "mcc").any():
        order = [*_MAIN_ARMS, *_TABLE4_ARMS, *(drops or ()), *tuned]
        listed = list(dict.fromkeys(a for a in order if a in set(arms)))
        listed += [a for a in arms if a not in listed]
        tables += [_operating_table(final, c, listed) for c in centres]
    return tables


def tables_markdown(tables: Sequence[ResultTable], *, heading: str = "## Multi-task tables") -> str:
    """All tables as one markdown section (values in percent)."""
    if not tables:
        return f"{heading}\n\nNo final multi-task metrics were recorded.\n"
    intro = (
        "Values in percent: `value (95% CI)` for one seed, `mean (std)` over seeds. "
        "Balanced accuracy is the multi-task paper's weighted accuracy."
    )
    return "\n".join([heading, "", intro, "", *(t.markdown() for t in tables)])


def print_tables(tables: Sequence[ResultTable], console: Console | None = None) -> None:
    """Print every table with rich."""
    console = console or Console()
    for t in tables:
        console.print(t.rich())


def section(recorder: RunRecorder, console: Console) -> str:
    """The multi-task tables for results.md."""
    default = bool(recorder.meta.get("mtl_decoder_default", True))
    return tables_markdown(build_mtl_tables(recorder.frame(), decoder_default=default))
