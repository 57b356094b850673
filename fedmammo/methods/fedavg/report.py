"""FedAvg's section of results.md: validation AUROC and time per round, per arm."""

from __future__ import annotations

import pandas as pd
from rich.console import Console

from fedmammo.evaluation.report import to_markdown
from fedmammo.evaluation.results import RunRecorder

__all__ = ["round_table", "section"]


def round_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per arm and round: mean validation AUROC over centres, round wall time, slowest centre.

    Averaged over seeds; empty when the run recorded no rounds.
    """
    rounds = frame[frame["round"].notna()]
    val = rounds[(rounds["split"] == "val") & (rounds["metric"] == "auc")]
    val = val[val["segment"].isna()]
    timing = rounds[rounds["split"] == "timing"]
    parts = {
        "val AUROC (mean over centres)": val.groupby(["arm", "round"])["value"].mean(),
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
    """Per-round validation AUROC and timings (mean over seeds) for results.md."""
    table = round_table(recorder.frame())
    if table.empty:
        return ""
    return "## Rounds\n\n" + to_markdown(table.astype(object).fillna(""), index_name="arm, round")
