"""Does a run agree with a paper's headline? One claim, checked against one run's records.

A :class:`Claim` names an arm, a reference arm (or none, when the metric is already a paired
difference such as ``delta_auc``), a metric and the test cells (centre, segment) it is read
on, and the direction the paper found. :func:`check_claim` compares the arm with its
reference in every (seed, centre, segment, metric) cell of a run's final test records and
gives a :class:`Finding`: the mean difference, how many cells separate significantly in
either direction, and a verdict.

The verdict rule (the same for every claim, written in ``docs/reproduction.md``):

- With confidence intervals (a paired difference's CI, or each arm's own CI), every cell gets
  a one-sided p-value on each side: from the paired permutation p the run recorded beside a
  paired difference (``p_value``), else from the CIs by a normal approximation (the
  difference's CI, or the two arms' CIs as independent: conservative, they share the test
  images; so for mtl_finetune's claims, which compare two arms' AUROC records, though the
  run records the paired permutation p of the pair as ``auc_p``: not used yet). Holm's
  step-down procedure over the claim's cells at a family-wise 2.5% per side
  (5% for the two sides together) says which cells count *for* the paper and which *against*:
  without it, "some cell's 95% CI on the paper's side" said yes for an arm no better than its
  reference in 10% of 3-cell claims and 21% of 12-cell ones (simulated, docs/report.md). A
  ``paired`` claim reads the arm's paired ``delta_auc`` where the run recorded one. ``yes``: at
  least one cell for, none against, and the mean difference on the paper's side; ``no``: the
  mirror; otherwise ``inconclusive``.
- Without any CI (arms reported as mean (std) over seeds, as the GAN-sharing paper does):
  ``yes`` when at least 3 seeds were run and every seed's mean difference is on the paper's
  side, ``no`` in the mirror case, otherwise ``inconclusive``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FAMILY_ALPHA",
    "MIN_SEEDS_WITHOUT_CI",
    "Claim",
    "Finding",
    "check_claim",
    "finite_number",
    "holm_rejections",
]

#: Seeds needed to call a direction from the seeds' signs alone (no CI in the records).
MIN_SEEDS_WITHOUT_CI = 3
#: Holm's family-wise level per side (one-sided; 5% for the two sides together).
FAMILY_ALPHA = 0.025
#: z of a 95% CI's ends (a CI's half-width / this = its standard error).
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class Claim:
    """One headline of a paper, and where a fedmammo run of ``kind`` can test it.

    ``metrics`` are averaged over as cells (the contrastive paper's four-task average);
    ``centres`` / ``segments`` restrict the cells (empty: every one the run has; a segment of
    ``None`` is the whole-centre record). ``reference`` None: the metric is itself the
    difference to a baseline (periodic sampling's ``delta_auc`` with its paired CI).
    ``direction`` is +1 when the paper found the arm above its reference, -1 below.
    """

    paper: str
    claim: str
    paper_result: str
    kind: str
    arm: str
    reference: str | None
    metrics: tuple[str, ...]
    centres: tuple[str, ...] = ()
    segments: tuple[str | None, ...] = ()
    direction: int = 1
    note: str = ""
    #: The arm's ``delta_auc`` records are its paired AUROC difference to ``reference`` (on
    #: the same images and resamples): an ``auc`` cell reads them, with their CI, where the
    #: run has them (share_gans' gain over the receiver alone, cyclegan_uda's over
    #: source_only), and compares the two arms' CIs where it has not (older runs).
    paired: bool = False


@dataclass(frozen=True)
class Finding:
    """What one run says about a claim (differences in the metric's own unit)."""

    verdict: str  # yes | no | inconclusive | no data
    mean_difference: float | None = None
    seeds: tuple[int, ...] = ()
    cells: int = 0
    cells_for: int = 0
    cells_against: int = 0
    with_ci: bool = False
    why: str = ""

    def summary(self, *, scale: float = 100.0) -> str:
        """``Δ +1.2 (3/9 cells for, 0 against; 3 seeds)``, differences times ``scale``."""
        if self.mean_difference is None:
            return self.why or "no data"
        seeds = f"{len(self.seeds)} seed{'s' if len(self.seeds) != 1 else ''}"
        if self.with_ci:
            detail = f"{self.cells_for}/{self.cells} cells for, {self.cells_against} against"
        else:
            detail = f"{self.cells} cells, no CI"
        return f"Δ {self.mean_difference * scale:+.1f} ({detail}; {seeds})"


def finite_number(value: Any) -> float | None:
    """``value`` as a float; None for None, NaN or what is not a number."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _final_test(records: Iterable[dict[str, Any]], claim: Claim) -> dict[tuple, dict]:
    """(arm, seed, centre, segment, metric) -> record, for the claim's final test records."""
    out = {}
    arms = {claim.arm, claim.reference} - {None}
    metrics = set(claim.metrics) | {_p_metric(m) for m in claim.metrics} - {""}
    if claim.paired:
        metrics |= {"delta_auc", "p_value"}
    for r in records:
        if r.get("split") != "test" or r.get("round") is not None:
            continue
        if r.get("arm") not in arms or r.get("metric") not in metrics:
            continue
        if claim.centres and r.get("centre") not in claim.centres:
            continue
        if claim.segments and r.get("segment") not in claim.segments:
            continue
        if finite_number(r.get("value")) is None:
            continue
        out[(r["arm"], r.get("seed"), r.get("centre"), r.get("segment"), r["metric"])] = r
    return out


def _p_metric(metric: str) -> str:
    """The metric of the p-value recorded beside a paired difference (``delta_auc`` ->
    ``p_value``, ``delta_auc_vs_pooled`` -> ``p_value_vs_pooled``); "" for another metric."""
    return "p_value" + metric.removeprefix("delta_auc") if metric.startswith("delta_auc") else ""


def _half_width(record: dict) -> float | None:
    lo, hi = finite_number(record.get("ci_low")), finite_number(record.get("ci_high"))
    return None if lo is None or hi is None else (hi - lo) / 2.0


def _cell(arm: dict, reference: dict | None, p: dict | None) -> tuple[float, float | None]:
    """The cell's difference and its two-sided p-value: the recorded paired p (``p``), else
    from the difference's own CI (paired) or the two arms' CIs, by a normal approximation;
    None without CIs."""
    diff = finite_number(arm["value"])
    widths = [_half_width(arm)]
    if reference is not None:
        diff -= finite_number(reference["value"])
        widths.append(_half_width(reference))
    recorded = None if p is None else finite_number(p.get("value"))
    if recorded is not None:
        return diff, recorded
    if None in widths:
        return diff, None
    se = math.sqrt(sum(w * w for w in widths)) / _Z95
    if se <= 0.0:
        return diff, 1.0 if diff == 0.0 else 0.0
    return diff, math.erfc(abs(diff) / se / math.sqrt(2.0))


def _one_sided(diff: float, p: float, side: int) -> float:
    """A two-sided p turned one-sided: of the difference lying on ``side`` (+1 / -1)."""
    return p / 2.0 if _sign(diff) == side else 1.0 - p / 2.0


def holm_rejections(p_values: list[float], alpha: float = FAMILY_ALPHA) -> int:
    """How many of ``p_values`` Holm's step-down procedure rejects at family-wise ``alpha``:
    the smallest against ``alpha / k``, the next against ``alpha / (k - 1)``, ... until one
    is not below its level."""
    k = len(p_values)
    for i, p in enumerate(sorted(p_values)):
        if p > alpha / (k - i):
            return i
    return k


def check_claim(claim: Claim, records: Iterable[dict[str, Any]]) -> Finding:
    """The claim's :class:`Finding` in one run's metric records (``results.json`` metrics)."""
    found = _final_test(records, claim)
    cells = []  # (seed, difference, two-sided p)
    for (arm, seed, centre, segment, metric), record in sorted(found.items(), key=str):
        if arm != claim.arm or metric not in claim.metrics:
            continue
        paired = found.get((arm, seed, centre, segment, "delta_auc"))
        if claim.paired and metric == "auc" and paired is not None:
            p = found.get((arm, seed, centre, segment, "p_value"))
            cells.append((seed, *_cell(paired, None, p)))
            continue
        reference = None
        if claim.reference is not None:
            reference = found.get((claim.reference, seed, centre, segment, metric))
            if reference is None:
                continue
        p = found.get((arm, seed, centre, segment, _p_metric(metric)))  # None: not paired
        cells.append((seed, *_cell(record, reference, p)))
    if not cells:
        against = f" vs {claim.reference}" if claim.reference else ""
        return Finding(
            "no data", why=f"no final test {'/'.join(claim.metrics)} of {claim.arm}{against}"
        )
    sign = 1 if claim.direction >= 0 else -1
    diffs = [d for _, d, _ in cells]
    mean = sum(diffs) / len(diffs)
    seeds = tuple(sorted({s for s, *_ in cells}, key=str))
    with_ci = [(d, p) for _, d, p in cells if p is not None]
    if with_ci:
        n_for = holm_rejections([_one_sided(d, p, sign) for d, p in with_ci])
        n_against = holm_rejections([_one_sided(d, p, -sign) for d, p in with_ci])
        if n_for and not n_against and mean * sign > 0:
            verdict, why = "yes", ""
        elif n_against and not n_for and mean * sign < 0:
            verdict, why = "no", f"{n_against} of {len(with_ci)} cells significantly the other way"
        elif not n_for and not n_against:
            verdict = "inconclusive"
            why = f"no cell of {len(with_ci)} significant (Holm)"
        else:
            verdict = "inconclusive"
            why = f"mixed: {n_for} cells for, {n_against} against"
        return Finding(verdict, mean, seeds, len(cells), n_for, n_against, with_ci=True, why=why)
    per_seed = defaultdict(list)
    for seed, d, _ in cells:
        per_seed[seed].append(d)
    signs = [_sign(sum(v) / len(v)) * sign for v in per_seed.values()]
    if len(signs) < MIN_SEEDS_WITHOUT_CI:
        verdict = "inconclusive"
        why = f"no CIs and {len(signs)} seed(s) (at least {MIN_SEEDS_WITHOUT_CI} needed)"
    elif all(s > 0 for s in signs):
        verdict, why = "yes", ""
    elif all(s < 0 for s in signs):
        verdict, why = "no", f"every seed ({len(signs)}) the other way"
    else:
        verdict = "inconclusive"
        why = f"{sum(s > 0 for s in signs)} of {len(signs)} seeds in the paper's direction"
    return Finding(verdict, mean, seeds, len(cells), why=why)
