"""CycleGAN-UDA's section of results.md: the paper's Table 1 layout (direction x arm x model,
test AUROC with its 95 % CI, mean over seeds when there are several), and the figure of a
source centre's images next to their translations (drawn inside that centre)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from fedmammo.evaluation.report import to_markdown
from fedmammo.evaluation.results import RunRecorder

__all__ = ["plot_translations", "section", "uda_table"]


def _cell(rows: pd.DataFrame) -> str:
    if rows.empty or rows["value"].isna().all():
        return ""
    value = rows["value"].mean()
    if len(rows) == 1 and pd.notna(rows["ci_low"].iloc[0]):
        return f"{value:.3f} [{rows['ci_low'].iloc[0]:.3f}, {rows['ci_high'].iloc[0]:.3f}]"
    return f"{value:.3f}" + (f" (n={len(rows)} seeds)" if len(rows) > 1 else "")


def uda_table(frame: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Rows: the target centre (tested there: the direction other -> it); columns: arm;
    cells: the final test ``metric`` (``delta_auc``: the arm's paired gain over source_only)."""
    test = frame[
        (frame["split"] == "test")
        & (frame["metric"] == metric)
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
    frame = recorder.frame()
    table = uda_table(frame)
    if table.empty:
        return ""
    text = (
        "## CycleGAN-UDA (paper 004): test AUROC [95 % CI] at the target centre\n\n"
        "source_only: trained at the other centre; in_domain: trained here (upper bound); "
        "uda: trained at the other centre on its images plus their translations into this "
        "centre's style.\n\n" + to_markdown(table, index_name="target")
    )
    gains = uda_table(frame, "delta_auc")
    if not gains.empty:
        text += (
            "\n\n## Gain over source_only: ΔAUROC [95 % CI] at the target centre\n\n"
            "The arm's test AUROC minus source_only's (same model), on the same test images "
            "and bootstrap resamples of the target's patients: a paired CI, computed inside "
            "the target centre.\n\n" + to_markdown(gains, index_name="target")
        )
    return text


def plot_translations(
    images: np.ndarray, translated: np.ndarray, path: str | Path, *, title: str, n: int = 8
) -> Path:
    """Two rows: images ``(N, H, W)`` in [0, 1] above their translations."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = min(n, len(images))
    fig = Figure(figsize=(1.1 * n + 1.4, 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, n, squeeze=False)
    for r, (label, arr) in enumerate((("own", images), ("translated", translated))):
        for c in range(n):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(arr[c], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        axes[r][0].set_ylabel(label, fontsize=9)
    fig.suptitle(title, fontsize=9)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, bbox_inches="tight")
    return out
