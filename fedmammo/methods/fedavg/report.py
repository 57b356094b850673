"""FedAvg's section of results.md: each training centre's gain from federating, each centre's
federated model against the pooled one, validation AUROC and time per round, per arm."""

from __future__ import annotations

import pandas as pd
from rich.console import Console

from fedmammo.evaluation.report import format_estimate, to_markdown
from fedmammo.evaluation.results import RunRecorder
from fedmammo.evaluation.tables import P_VALUE_NOTE, format_p_value

__all__ = ["VS_POOLED", "gain_table", "round_table", "section"]

#: How the federated arm's records of its comparison with the pooled arm are named; those with
#: ``local-c`` keep the comparison's own names (the keys).
VS_POOLED = {
    "baseline_auc": "pooled_auc",
    "delta_auc": "delta_auc_vs_pooled",
    "p_value": "p_value_vs_pooled",
}

GAIN_NOTE = (
    "At each training centre, the federated model (under FedBN with the centre's own "
    "BatchNorm state) against the centre's local model, on its test images, compared inside "
    "the centre. "
    "ΔAUROC = federated - local, with a paired bootstrap CI over the centre's test patients "
    "(both models scored on the same resamples) and its p-value (below): each cell "
    "`value [95% CI]`; with several seeds, per centre also `mean (s.d.)` over seeds. Per data "
    "segment in metrics.csv (`delta_auc` records of the federated arm). " + P_VALUE_NOTE
)

POOLED_NOTE = (
    "At every centre, test-only ones too, the federated model against the `pooled` arm (one "
    "model trained on every training centre's images in one place: a simulation-only what-if), "
    "on the centre's test images, compared inside the centre as above. ΔAUROC = federated - "
    "pooled: below 0, what keeping the images at their centres costs. Per data segment in "
    "metrics.csv (`delta_auc_vs_pooled` records of the federated arm). " + P_VALUE_NOTE
)


def gain_table(frame: pd.DataFrame, reference: str = "local") -> pd.DataFrame:
    """Per centre: the ``reference`` arm's (``local``: the centre's own, ``pooled``) and the
    federated test AUROC, their difference with its paired CI and p-value, from the federated
    arm's comparison records (``baseline_auc``, ``delta_auc``, ``p_value``, or their
    :data:`VS_POOLED` names); empty without them. With several seeds, a row per centre and
    seed, then per centre the mean (s.d.) over seeds and in how many seeds the difference's
    CI lies above / below 0."""
    names = VS_POOLED if reference == "pooled" else {m: m for m in VS_POOLED}
    sel = frame[
        (frame["arm"] == "federated")
        & (frame["split"] == "test")
        & frame["segment"].isna()
        & frame["round"].isna()
    ]
    several = frame["seed"].nunique() > 1
    rows, per_centre = {}, {}
    for (seed, centre), group in sel.groupby(["seed", "centre"], sort=False):
        found = {r["metric"]: r for r in group.to_dict("records")}
        if names["delta_auc"] not in found:
            continue
        by = {m: found[name] for m, name in names.items() if name in found}
        by["auc"] = found.get("auc")
        per_centre.setdefault(centre, []).append(by)
        cell = {
            m: format_estimate(r["value"], r["ci_low"], r["ci_high"]) if r else "n/a"
            for m, r in by.items()
        }
        rows[f"{centre} seed {seed}" if several else centre] = {
            f"{reference} AUROC": cell["baseline_auc"],
            "federated AUROC": cell["auc"],
            "ΔAUROC": cell["delta_auc"],
            "p-value": format_p_value(by["p_value"]["value"]),
        }
    if several:
        for centre, seeds in per_centre.items():
            rows[f"{centre}, {len(seeds)} seeds"] = _over_seeds(seeds, reference)
    return pd.DataFrame(rows).T.fillna("")


def _over_seeds(seeds: list[dict], reference: str) -> dict[str, str]:
    """A centre's mean (s.d.) over seeds and its seeds whose paired CI excludes 0."""

    def spread(metric: str) -> str:
        values = pd.Series([by[metric]["value"] for by in seeds if by.get(metric)], dtype=float)
        return f"{values.mean():.3f} ({values.std(ddof=1):.3f})" if len(values) else "n/a"

    deltas = [by["delta_auc"] for by in seeds]
    with_ci = [d for d in deltas if pd.notna(d["ci_low"]) and pd.notna(d["ci_high"])]
    above = sum(d["ci_low"] > 0 for d in with_ci)
    below = sum(d["ci_high"] < 0 for d in with_ci)
    return {
        f"{reference} AUROC": spread("baseline_auc"),
        "federated AUROC": spread("auc"),
        "ΔAUROC": spread("delta_auc"),
        "seeds with the CI above / below 0": f"{above} / {below} of {len(with_ci)}",
    }


def round_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per arm and round: mean validation AUROC over the centres that validated it (the arm's
    own training centres: all for ``federated``, one for ``local-<c>``, none for ``pooled``),
    round wall time, slowest centre.

    Averaged over seeds; empty when the run recorded no rounds.
    """
    rounds = frame[frame["round"].notna()]
    val = rounds[(rounds["split"] == "val") & (rounds["metric"] == "auc")]
    val = val[val["segment"].isna()]
    timing = rounds[rounds["split"] == "timing"]
    parts = {
        "val AUROC (mean over the arm's own training centres)": val.groupby(["arm", "round"])[
            "value"
        ].mean(),
        "round wall s": timing[timing["metric"] == "round_wall_seconds"]
        .groupby(["arm", "round"])["value"]
        .mean(),
        "slowest centre s": timing[timing["metric"] == "centre_compute_seconds_max"]
        .groupby(["arm", "round"])["value"]
        .mean(),
    }
    table = pd.DataFrame({k: v for k, v in parts.items() if not v.empty})
    if table.empty:
        return table
    table.index = [f"{arm} r{int(rnd)}" for arm, rnd in table.index]
    return table.round(3)


def section(recorder: RunRecorder, console: Console) -> str:
    """Each centre's gain from federating, its federated model against the pooled one, and
    per-round validation AUROC and timings (mean over seeds) for results.md."""
    frame = recorder.frame()
    parts = []
    gains = gain_table(frame)
    if not gains.empty:
        table = to_markdown(gains, index_name="centre")
        parts.append(f"## What each centre gains from federating\n\n{GAIN_NOTE}\n\n{table}")
    costs = gain_table(frame, "pooled")
    if not costs.empty:
        table = to_markdown(costs, index_name="centre")
        parts.append(f"## Federated against pooled\n\n{POOLED_NOTE}\n\n{table}")
    rounds = round_table(frame)
    if not rounds.empty:
        table = to_markdown(rounds.astype(object).fillna(""), index_name="arm, round")
        parts.append(f"## Rounds\n\n{table}")
    return "\n\n".join(parts)
