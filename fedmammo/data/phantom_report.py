"""What the phantom shows a person: a per-segment summary table and a PNG contact sheet."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich import box
from rich.table import Table

from fedmammo.data.manifest import LABEL_TASKS, decode_lesions
from fedmammo.data.phantom_styles import AcquisitionStyle

__all__ = ["save_contact_sheet", "segment_summary", "summary_table"]

_TASK_COLUMN = {"malignancy": "malignant", "acr": "acr", "density": "density", "view": "view"}


def segment_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Per segment (and 'all'): images, patients, prevalence and label availability.

    Prevalence and malignant images come from the lesions (the truth), label availability
    from the label columns (a missing label is NA).
    """
    malignant = manifest["lesions"].map(lambda v: any(x["malignant"] for x in decode_lesions(v)))
    rows = []
    groups = [(str(seg), g.index) for seg, g in manifest.groupby("segment", sort=False)]
    for seg, idx in groups + [("all", manifest.index)]:
        g = manifest.loc[idx]
        cancer = malignant.loc[idx].groupby(g["patient_id"]).any()
        row: dict[str, Any] = {
            "segment": seg,
            "manufacturer": ", ".join(sorted(g["manufacturer"].dropna().astype(str).unique())),
            "vendors": int(g["manufacturer"].nunique()),
            "images": len(g),
            "patients": int(g["patient_id"].nunique()),
            "cancer patients": int(cancer.sum()),
            "prevalence": float(cancer.mean()),
            "malignant images": float(malignant.loc[idx].mean()),
        }
        for task in LABEL_TASKS:
            row[f"{task} labelled"] = float(g[_TASK_COLUMN[task]].notna().mean())
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(manifest: pd.DataFrame, *, title: str = "phantom centre") -> Table:
    """A rich table of :func:`segment_summary` (label availability as %, m/a/d/v)."""
    summary = segment_summary(manifest)
    table = Table(
        title=title,
        box=box.HORIZONTALS,
        show_edge=False,
        padding=(0, 1),
        collapse_padding=True,
        caption="labels: % of images with a malignancy / ACR / density / view label",
    )
    heads = ["segment", "vendor", "images", "patients", "cancer", "prev", "mal.img", "labels %"]
    for head in heads:
        table.add_column(
            head,
            justify="left" if head in ("segment", "vendor") else "right",
            no_wrap=True,
            min_width=9 if head == "vendor" else None,
        )
    for _, r in summary.iterrows():
        labelled = " ".join(f"{100 * r[f'{t} labelled']:.0f}" for t in LABEL_TASKS)
        table.add_row(
            r["segment"],
            r["manufacturer"] if r["vendors"] == 1 else f"{r['vendors']} vendors",
            str(r["images"]),
            str(r["patients"]),
            str(r["cancer patients"]),
            f"{r['prevalence']:.1%}",
            f"{r['malignant images']:.1%}",
            labelled,
            style="bold" if r["segment"] == "all" else None,
        )
    return table


def _display(stored: np.ndarray, style: AcquisitionStyle) -> np.ndarray:
    """Stored values -> [0, 1] for display (linear window, MONOCHROME1 inverted)."""
    centre, width = style.window()
    img = np.clip((stored.astype(np.float32) - (centre - width / 2)) / width, 0, 1)
    return 1.0 - img if style.photometric == "MONOCHROME1" else img


def save_contact_sheet(
    exams: Sequence[tuple[list[dict], list[dict], list[np.ndarray], AcquisitionStyle]],
    path: str | Path,
    *,
    title: str = "",
) -> None:
    """Save a PNG with one row per exam (4 views), manufacturer and labels in the titles."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Polygon, Rectangle

    n = max(1, len(exams))
    fig = Figure(figsize=(8, 2.9 * n), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 4, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for r, (rows, records, pixels, style) in enumerate(exams):
        for c, (row, rec, pix) in enumerate(zip(rows, records, pixels, strict=True)):
            ax = axes[r, c]
            ax.imshow(_display(pix, style), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            label = "malignant" if row["malignant"] else "benign" if rec["lesions"] else "normal"
            ax.set_title(
                f"{row['manufacturer']} ({style.name}) {row['laterality']}-{row['view']}\n"
                f"{label}, ACR {row['acr']}, density {row['density']}",
                fontsize=7,
            )
            for les in rec["lesions"]:
                color = "red" if les["malignant"] else "yellow"
                x0, y0, x1, y1 = les["box"]
                ax.add_patch(
                    Rectangle(
                        (x0 - 0.5, y0 - 0.5),
                        x1 - x0,
                        y1 - y0,
                        fill=False,
                        edgecolor=color,
                        linewidth=0.8,
                    )
                )
                if les["kind"] == "mass":
                    ax.add_patch(
                        Polygon(
                            les["outline"],
                            closed=True,
                            fill=False,
                            edgecolor=color,
                            linewidth=0.4,
                            alpha=0.6,
                        )
                    )
        axes[r, 0].text(
            -0.05,
            0.5,
            rows[0]["patient_id"],
            transform=axes[r, 0].transAxes,
            rotation=90,
            va="center",
            ha="right",
            fontsize=7,
        )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(
        left=0.04, right=0.99, bottom=0.01, top=1 - 0.35 / n, wspace=0.05, hspace=0.25
    )
    fig.savefig(Path(path), format="png", metadata={"Software": None})
