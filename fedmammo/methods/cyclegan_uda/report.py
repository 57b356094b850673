"""CycleGAN-UDA's section of results.md: the paper's Table 1 layout (per direction, the
source model tested at the target and at the source itself x arm x model, test AUROC with its
95 % CI, mean over seeds when there are several), and the figure of a source centre's images
next to their translations (drawn inside that centre)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from fedmammo.evaluation.report import to_markdown
from fedmammo.evaluation.results import RunRecorder
from fedmammo.methods.cyclegan_uda.params import same_domain_arm

__all__ = ["DIRECTIONS_META", "plot_translations", "section", "uda_table"]

DIRECTIONS_META = "uda_directions"  # results.json meta: the run's [source, target] pairs


def _cell(rows: pd.DataFrame) -> str:
    if rows.empty or rows["value"].isna().all():
        return ""
    value = rows["value"].mean()
    if len(rows) == 1 and pd.notna(rows["ci_low"].iloc[0]):
        return f"{value:.3f} [{rows['ci_low'].iloc[0]:.3f}, {rows['ci_high'].iloc[0]:.3f}]"
    return f"{value:.3f}" + (f" (n={len(rows)} seeds)" if len(rows) > 1 else "")


def uda_table(
    frame: pd.DataFrame, directions: list[list[str]], metric: str = "auc"
) -> pd.DataFrame:
    """Rows: per direction ``[source, target]``, ``source -> target (target)`` (arm records at
    the target) then ``source -> source (source)`` (their ``-same_domain`` records at the
    source); columns: arm; cells: the final test ``metric`` (``delta_auc``: the arm's paired
    gain over source_only). Rows without any value are left out."""
    test = frame[
        (frame["split"] == "test")
        & (frame["metric"] == metric)
        & frame["round"].isna()
        & frame["segment"].isna()
    ]
    if test.empty:
        return pd.DataFrame()
    same = {same_domain_arm(a) for a in test["arm"]}
    arms = [a for a in dict.fromkeys(test["arm"]) if a not in same]

    def cells(centre: str, records: list[str]) -> list[str]:
        return [_cell(test[(test["arm"] == r) & (test["centre"] == centre)]) for r in records]

    rows = {}
    for source, target in directions:
        rows[f"{source} -> {target} (target)"] = cells(target, arms)
        rows[f"{source} -> {source} (source)"] = cells(source, [same_domain_arm(a) for a in arms])
    table = pd.DataFrame.from_dict(rows, orient="index", columns=arms)
    return table[(table != "").any(axis=1)]


def _directions_of(frame: pd.DataFrame) -> list[list[str]]:
    """A run folder from before ``uda_directions`` was kept: each test centre is the target
    of the direction from the other (film and digital)."""
    centres = list(dict.fromkeys(frame.loc[frame["split"] == "test", "centre"]))
    return [[centres[1 - i], c] for i, c in enumerate(centres)] if len(centres) == 2 else []


def section(recorder: RunRecorder, console: Console) -> str:
    """The paper's layout: test AUROC [95 % CI] per direction (at the target and at the source
    itself) and arm."""
    frame = recorder.frame()
    directions = recorder.meta.get(DIRECTIONS_META) or _directions_of(frame)
    table = uda_table(frame, directions)
    if table.empty:
        return ""
    text = (
        "## CycleGAN-UDA (paper 004): test AUROC [95 % CI], trained at -> tested at\n\n"
        "source_only: trained at the source centre; in_domain: trained at the target (upper "
        "bound); uda: trained at the source on its images plus their translations into the "
        "target's style, the same epochs over twice the images, so (unless "
        "train.steps_per_epoch fixes them) twice the optimiser steps of source_only "
        "(`train_steps` records). Rows `A -> B (target)`: the models of direction A -> B "
        "tested at B (cross-domain); rows `A -> A (source)`: the same source_only and uda "
        "models tested on A's own test images (same domain: does UDA keep the source's "
        "performance?).\n\n" + to_markdown(table, index_name="trained -> tested")
    )
    gains = uda_table(frame, directions, "delta_auc")
    if not gains.empty:
        p_values = uda_table(frame, directions, "p_value").reindex_like(gains).fillna("")
        gains = gains.where(p_values == "", gains + ", p " + p_values)
        text += (
            "\n\n## Gain over source_only: ΔAUROC [95 % CI], p at the target and the source "
            "centre\n\nThe arm's test AUROC minus source_only's (same model and direction), "
            "on the same test images and bootstrap resamples of the testing centre's patients: "
            "a paired CI, and the paired permutation test's p, computed inside that centre. A "
            "gain is significant only when both hold (CI beside 0 and p < 0.05).\n\n"
            + to_markdown(gains, index_name="trained -> tested")
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
