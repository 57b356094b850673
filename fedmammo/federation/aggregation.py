"""How a federated round combines the centres' updates (``strategy.params.aggregation``).

- ``mean`` (default): FedAvg's weighted mean, each update weighted by the count its centre
  reports (``weighting``); Flower's ``aggregate_arrayrecords``.
- ``median``: the coordinate-wise median of the updates (Yin et al. 2018, "Byzantine-robust
  distributed learning"; Flower's ``FedMedian``).
- ``trimmed_mean``: per coordinate, the mean after dropping the ``trim_fraction`` largest and
  smallest values (the same paper; Flower's ``FedTrimmedAvg`` and its ``trim_mean``).

The two robust rules count every centre once: a weighting does not apply to them. They need
each centre's update, so they cannot run under secure aggregation (SecAgg+ reveals only the
sum). With few centres they are little different from the mean: the median of two updates is
their mean, and a trimmed mean drops ``floor(trim_fraction x centres)`` from each end, none
below ``1 / trim_fraction`` centres (:func:`rule_note` says so in the run's notes).
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

__all__ = ["AGGREGATIONS", "aggregate", "rule_note", "trimmed_per_end"]

#: The aggregation rules, the default first.
AGGREGATIONS = ("mean", "median", "trimmed_mean")


def trimmed_per_end(n_centres: int, trim_fraction: float) -> int:
    """How many updates a trimmed mean drops from each end of ``n_centres`` (Flower's rule)."""
    return int(trim_fraction * n_centres)


def aggregate(
    contents: list[RecordDict], rule: str, *, weight_key: str, trim_fraction: float = 0.2
) -> ArrayRecord:
    """The replies' arrays combined by ``rule`` (:data:`AGGREGATIONS`); ``weight_key`` names
    each reply's weight in its metrics (the mean's only)."""
    if rule == "mean":
        return aggregate_arrayrecords(contents, weight_key)
    if rule not in AGGREGATIONS:
        raise ValueError(f"aggregation {rule!r}: valid are {', '.join(AGGREGATIONS)}")
    per_key: dict[str, list[np.ndarray]] = {}
    for content in contents:
        for record in content.array_records.values():
            for key, value in record.items():
                per_key.setdefault(key, []).append(value.numpy())
    out = ArrayRecord()
    for key, values in per_key.items():
        if len(values) != len(contents):
            raise ValueError(
                f"aggregation {rule}: array {key!r} is in {len(values)} of {len(contents)} "
                "replies (every centre must send the same arrays)"
            )
        stacked = np.stack(values)
        combined = (
            np.median(stacked, axis=0) if rule == "median" else trim_mean(stacked, trim_fraction)
        )
        out[key] = Array(np.asarray(combined))
    return out


def rule_note(rule: str, n_centres: int, trim_fraction: float) -> str | None:
    """A run note when ``rule`` over ``n_centres`` is the plain mean of equal weights (None
    otherwise, and for the mean itself)."""
    if rule == "median" and n_centres <= 2:
        return f"aggregation median over {n_centres} centres is their unweighted mean"
    if rule == "trimmed_mean" and trimmed_per_end(n_centres, trim_fraction) == 0:
        need = math.ceil(1 / trim_fraction) if trim_fraction > 0 else math.inf
        return (
            f"aggregation trimmed_mean over {n_centres} centres drops none "
            f"(trim_fraction {trim_fraction:g} drops one from each end from {need} centres): "
            "it is their unweighted mean"
        )
    return None
