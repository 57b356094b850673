"""CycleGAN-UDA's section of results.md: the paper's Table 1 layout (direction x arm x model,
test AUROC with its 95 % CI, mean over seeds when there are several)."""

from __future__ import annotations

import pandas as pd
from rich.console import Console

from fedmammo.evaluation.report import to_markdown
from fedmammo.evaluation.results import RunRecorder

__all__ = ["section", "uda_table"]


def _cell(rows: pd.DataFrame) -> str:
    if rows.empty or rows["value"].isna().all():
        return ""
    value = rows["value"].mean()
    if len(rows) == 1 and pd.notna(rows["ci_low"].iloc[0]):
        return f"{value:.3f} [{rows['ci_low'].iloc[0]:.3f}, {rows['ci_high'].iloc[0]:.3f}]"
    return f"{value:.3f}" + (f" (n={len(rows)} seeds)" if len(rows) > 1 else "")


def uda_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows: the target centre (tested there: the direction other -> it); columns: arm."""
    test = frame[
        (frame["split"] == "test")
        & (frame["metric"] == "auc")
        & frame["round"].isna()
        & frame["segment"].isna()
    ]
    if test.empty:
        return pd.DataFrame()
    arms = list(dict.fromkeys(test["arm"]))
    centres = list(dict.fromkeys(test["centre"]))
    table = pd.DataFrame(
        [[_cell(test[(test["arm"] == a) & (test["centre"] == c)]) for a in arms] for c in centres],
        index=[f"-> {c} (tested at {c})" for c in centres],
        columns=arms,
    )
    return table


def section(recorder: RunRecorder, console: Console) -> str:
    """The paper's layout: test AUROC [95 % CI] per target centre and arm."""
    table = uda_table(recorder.frame())
    if table.empty:
        return ""
    return (
        "## CycleGAN-UDA (paper 004): test AUROC [95 % CI] at the target centre\n\n"
        "source_only: trained at the other centre; in_domain: trained here (upper bound); "
        "uda: trained at the other centre on its images plus their translations into this "
        "centre's style.\n\n" + to_markdown(table, index_name="target")
    )
