"""Does a run agree with a paper's headline? One claim, checked against one run's records.

A :class:`Claim` names an arm, a reference arm (or none, when the metric is already a paired
difference such as ``delta_auc``), a metric and the test cells (centre, segment) it is read
on, and the direction the paper found. :func:`check_claim` compares the arm with its
reference in every (seed, centre, segment, metric) cell of a run's final test records and
gives a :class:`Finding`: the mean difference, how many cells separate significantly in
either direction, and a verdict.

The verdict rule (the same for every claim, written in ``docs/reproduction.md``):

- With confidence intervals (a paired difference's CI, or each arm's own CI), a cell counts
  *for* the paper when the difference's CI excludes 0 on the paper's side (or the two arms'
  CIs do not overlap, the arm on the paper's side), *against* in the mirror case. A
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

__all__ = ["MIN_SEEDS_WITHOUT_CI", "Claim", "Finding", "check_claim", "finite_number"]

#: Seeds needed to call a direction from the seeds' signs alone (no CI in the records).
MIN_SEEDS_WITHOUT_CI = 3


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
    metrics = set(claim.metrics) | ({"delta_auc"} if claim.paired else set())
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


def _cell(arm: dict, reference: dict | None) -> tuple[float, float | None, float | None]:
    """The cell's difference and the bounds its significance is judged by: the difference's
    own CI (paired), or (arm low - reference high, arm high - reference low) for two CIs."""
    lo, hi = finite_number(arm.get("ci_low")), finite_number(arm.get("ci_high"))
    if reference is None:
        return finite_number(arm["value"]), lo, hi
    rlo, rhi = finite_number(reference.get("ci_low")), finite_number(reference.get("ci_high"))
    diff = finite_number(arm["value"]) - finite_number(reference["value"])
    if None in (lo, hi, rlo, rhi):
        return diff, None, None
    return diff, lo - rhi, hi - rlo  # > 0 everywhere: the CIs do not overlap, arm above


def check_claim(claim: Claim, records: Iterable[dict[str, Any]]) -> Finding:
    """The claim's :class:`Finding` in one run's metric records (``results.json`` metrics)."""
    found = _final_test(records, claim)
    cells = []  # (seed, difference, low, high)
    unpaired = 0  # cells judged by two arms' CIs
    for (arm, seed, centre, segment, metric), record in sorted(found.items(), key=str):
        if arm != claim.arm or metric not in claim.metrics:
            continue
        paired = found.get((arm, seed, centre, segment, "delta_auc"))
        if claim.paired and metric == "auc" and paired is not None:
            cells.append((seed, *_cell(paired, None)))
            continue
        unpaired += claim.reference is not None
        reference = None
        if claim.reference is not None:
            reference = found.get((claim.reference, seed, centre, segment, metric))
            if reference is None:
                continue
        cells.append((seed, *_cell(record, reference)))
    if not cells:
        against = f" vs {claim.reference}" if claim.reference else ""
        return Finding(
            "no data", why=f"no final test {'/'.join(claim.metrics)} of {claim.arm}{against}"
        )
    sign = 1 if claim.direction >= 0 else -1
    diffs = [d for _, d, _, _ in cells]
    mean = sum(diffs) / len(diffs)
    seeds = tuple(sorted({s for s, *_ in cells}, key=str))
    with_ci = [(lo, hi) for _, _, lo, hi in cells if lo is not None and hi is not None]
    if with_ci:
        n_for = sum(1 for lo, hi in with_ci if (lo > 0 if sign > 0 else hi < 0))
        n_against = sum(1 for lo, hi in with_ci if (hi < 0 if sign > 0 else lo > 0))
        if n_for and not n_against and mean * sign > 0:
            verdict, why = "yes", ""
        elif n_against and not n_for and mean * sign < 0:
            verdict, why = "no", f"{n_against} of {len(with_ci)} cells significantly the other way"
        elif not n_for and not n_against:
            what = "the CIs overlap" if unpaired else "the paired CI holds 0"
            verdict, why = "inconclusive", f"{what} in all {len(with_ci)} cells"
        else:
            verdict = "inconclusive"
            why = f"mixed: {n_for} cells for, {n_against} against"
        return Finding(verdict, mean, seeds, len(cells), n_for, n_against, with_ci=True, why=why)
    per_seed = defaultdict(list)
    for seed, d, _, _ in cells:
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
