"""The GAN-sharing paper's result tables and sample grids for the generator-sharing scenario.

Records of the federation core (``results.json``) name each classifier run
``<arm>@<subset>-<percent>`` (:func:`record_arm`), e.g. ``A+synth_B_dcgan@masses-50``: arm
``A+synth_B_dcgan``, lesion subset ``masses``, 50% of the receiver's training images. Tables
are laid out like the GAN-sharing paper's Tables 1-2: arms (rows) x accuracy, F1, AUROC, AUPRC
(mean (std)
over seeds), one block per lesion subset and data fraction, best value per column in bold,
and a column flagging the arms that moved real pixels (the simulation-only upper bound).
Generator records (``split == "generator"``) give the shared generators' quality table; with
the run's privacy.json it also gives each sharing centre's epsilon over all the DP generators
it released (:func:`~fedmammo.evaluation.privacy_report.generator_composition`: each is
within its target alone, but they were trained on the same patches and the receiver holds
them all).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from fedmammo.errors import DataError
from fedmammo.evaluation.privacy_report import (
    PRIVACY_FILE,
    composed_generators_note,
    generator_composition,
)
from fedmammo.evaluation.report import to_markdown
from fedmammo.evaluation.results import RunRecorder

__all__ = [
    "section",
    "GAIN",
    "GAIN_CI",
    "GENERATOR_METRICS",
    "TOGETHER",
    "composed_markdown",
    "METRICS",
    "MOVED",
    "GanTable",
    "build_gan_tables",
    "classifier_arm",
    "generator_table",
    "moves_pixels",
    "plot_sample_grid",
    "print_tables",
    "record_arm",
    "split_record_arm",
    "tables_markdown",
]

#: Record metric -> column title (``auc`` is the AUROC, as in every fedmammo record).
METRICS: dict[str, str] = {"accuracy": "Accuracy", "f1": "F1", "auc": "AUROC", "auprc": "AUPRC"}
#: Generator record metric -> column title.
GENERATOR_METRICS: dict[str, str] = {
    "frechet_distance": "Frechet",
    "frechet_real_floor": "real floor",
    "n_training_patches": "patches",
    "epochs": "epochs",
    "n_snapshots": "snapshots",
    "epsilon": "DP epsilon",  # only for generators trained with a DP discriminator
}
FRECHET_COLUMN = GENERATOR_METRICS["frechet_distance"]
#: Column of the generator table: the sharing centre's epsilon over all its DP generators.
TOGETHER = "centre's DP epsilon, its generators together"
#: Columns of the arms' paired AUROC gain over the receiver alone (``delta_auc`` records).
GAIN, GAIN_CI = "ΔAUROC vs alone", "CI above / below 0"
#: Flag of the arms that moved real pixels between centres.
MOVED = "YES (simulation only)"
_SUBSET_TITLES = {
    "all": "all lesion types (GAN-sharing paper Table 1)",
    "masses": "masses (Table 2)",
}


def classifier_arm(arm: str, model: str = "") -> str:
    """An arm as trained by an extra classifier (label ``model``): ``<arm>~<model>``; the
    recipe's own classifier keeps the arm's name."""
    return f"{arm}~{model}" if model else arm


def record_arm(arm: str, subset: str, fraction: float, model: str = "") -> str:
    """The arm name of the results records: ``<arm>@<subset>-<percent>``, or
    ``<arm>~<model>@<subset>-<percent>`` for an extra classifier (:func:`classifier_arm`; in
    the tables its rows follow the first classifier's, as the paper's Swin rows its CNN's)."""
    return f"{classifier_arm(arm, model)}@{subset}-{round(fraction * 100):d}"


def split_record_arm(name: str) -> tuple[str, str, float] | None:
    """Inverse of :func:`record_arm`; None for names it did not make."""
    arm, sep, rest = name.rpartition("@")
    subset, dash, pct = rest.rpartition("-")
    if not sep or not arm or not dash or not pct.isdigit() or not subset:
        return None
    return arm, subset, int(pct) / 100.0


def moves_pixels(arm: str) -> bool:
    """Whether an arm adds another centre's real patches (``+real_<centre>``)."""
    return any(t.startswith("real_") for t in arm.split("+")[1:])


@dataclass
class GanTable:
    """One block of Table 1/2: a lesion subset at one fraction of the receiver's data."""

    subset: str
    fraction: float
    frame: pd.DataFrame  # arms x (metric titles, seeds, added lesions, pixels moved); text
    best: dict[str, tuple[str, ...]]  # metric title -> the arms with the best mean (all tied)

    @property
    def title(self) -> str:
        subset = _SUBSET_TITLES.get(self.subset, self.subset)
        return f"{subset}, {round(self.fraction * 100)}% of the receiver's training data"


def _cell(values: pd.Series) -> tuple[str, float]:
    v = values.dropna().astype(float)
    if v.empty:
        return "n/a", math.nan
    if len(v) == 1:
        return f"{v.iloc[0]:.3f}", float(v.iloc[0])
    return f"{v.mean():.3f} ({v.std(ddof=1):.3f})", float(v.mean())


def _gain_cells(gains: pd.DataFrame) -> tuple[str, str]:
    """An arm's paired AUROC gain over the receiver alone (mean (std) over seeds) and in how
    many seeds its CI lies above / below 0; "-" for the receiver-alone arm itself."""
    if gains.empty:
        return "-", "-"
    text, _ = _cell(gains["value"])
    with_ci = gains.dropna(subset=["ci_low", "ci_high"])
    above, below = int((with_ci["ci_low"] > 0).sum()), int((with_ci["ci_high"] < 0).sum())
    return text, f"{above} / {below} of {len(with_ci)}" if len(with_ci) else "-"


def build_gan_tables(df: pd.DataFrame, *, arm_order: Sequence[str] | None = None) -> list[GanTable]:
    """Tables of final test metrics, one per (subset, fraction); arms in ``arm_order`` first."""
    if df.empty:
        return []
    sel = df[(df["split"] == "test") & df["round"].isna() & df["segment"].isna()]
    sel = sel[sel["metric"].isin([*METRICS, "delta_auc"])]
    # lesion patches an arm added (the real-patch arm: at most what the sharer has)
    added = df[(df["split"] == "val") & (df["metric"] == "n_added_lesion")]
    added = added.groupby("arm")["value"].mean()
    parsed = sel["arm"].map(split_record_arm)
    sel = sel[parsed.notna()].assign(
        base=[p[0] for p in parsed.dropna()],
        subset=[p[1] for p in parsed.dropna()],
        fraction=[p[2] for p in parsed.dropna()],
    )
    order = list(arm_order or [])
    order += [a for a in dict.fromkeys(sel["base"]) if a not in order]
    subsets = [s for s in ("all", "masses") if s in set(sel["subset"])]
    subsets += [s for s in dict.fromkeys(sel["subset"]) if s not in subsets]
    tables = []
    for subset in subsets:
        part = sel[sel["subset"] == subset]
        for fraction in sorted(set(part["fraction"]), reverse=True):
            block = part[part["fraction"] == fraction]
            rows: dict[str, dict[str, str]] = {}
            means: dict[str, dict[str, float]] = {}
            for arm in [a for a in order if a in set(block["base"])]:
                g = block[block["base"] == arm]
                row, mean = {}, {}
                for metric, title in METRICS.items():
                    row[title], mean[title] = _cell(g.loc[g["metric"] == metric, "value"])
                row[GAIN], row[GAIN_CI] = _gain_cells(g[g["metric"] == "delta_auc"])
                row["seeds"] = str(g.loc[g["metric"] == "auc", "seed"].nunique())
                n_added = added.reindex(g["arm"].unique()).mean()
                row["added lesions"] = "-" if math.isnan(n_added) else f"{n_added:.0f}"
                row["pixels moved"] = MOVED if moves_pixels(arm) else "no"
                rows[arm], means[arm] = row, mean
            best = {}
            for title in METRICS.values():
                scored = {a: m[title] for a, m in means.items() if not math.isnan(m[title])}
                top = max(scored.values(), default=math.nan)
                tied = tuple(a for a, v in scored.items() if v == top)
                if 0 < len(tied) < len(scored) or len(scored) == 1:  # all level: none best
                    best[title] = tied
            frame = pd.DataFrame.from_dict(rows, orient="index")
            tables.append(GanTable(subset, float(fraction), frame, best))
    return tables


def generator_table(df: pd.DataFrame, privacy: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Shared generators (rows) x quality figures from the ``split == "generator"`` records.

    With ``privacy`` (the run's privacy.json) a DP generator's row also gives its centre's
    epsilon over all the generators it released (column :data:`TOGETHER`), and
    ``frame.attrs["notes"]`` says where that exceeds the centre's target.
    """
    if df.empty:
        return pd.DataFrame()
    sel = df[(df["split"] == "generator") & df["metric"].isin(list(GENERATOR_METRICS))]
    rows: dict[str, dict[str, str]] = {}
    for (arm, metric), g in sel.groupby(["arm", "metric"], sort=False):
        value = g["value"].dropna()
        text = "n/a" if value.empty else f"{float(value.iloc[-1]):.4g}"
        rows.setdefault(str(arm), {})[GENERATOR_METRICS[str(metric)]] = text
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame = frame[[c for c in GENERATOR_METRICS.values() if c in frame.columns]]
    together = _together(privacy)
    cells = {
        name: _together_cell(entry)
        for entry in together.values()
        for name in entry["released"]
        if name in frame.index
    }
    if cells:
        frame[TOGETHER] = [cells.get(str(name), "") for name in frame.index]
    frame.attrs["notes"] = [
        text
        for centre, entry in together.items()
        if any(n in cells for n in entry["released"])
        and (text := composed_generators_note(centre, entry))
    ]
    return frame


def _together(privacy: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """:func:`generator_composition` of privacy.json's records, where a centre released more
    than one DP generator (one alone is its own row's epsilon); {} otherwise."""
    together = generator_composition((privacy or {}).get("records") or [])
    return together if any(len(e["released"]) > 1 for e in together.values()) else {}


def _together_cell(entry: Mapping[str, Any]) -> str:
    eps, n = entry.get("composed_epsilon"), len(entry["released"])
    if eps is None:
        return f"n/a ({entry.get('why', 'not composable')})"
    return f"{eps:.4g} ({n} generator{'s' if n != 1 else ''})"


def composed_markdown(privacy: Mapping[str, Any] | None) -> str:
    """Markdown: each centre's epsilon over all the DP generators it released in the run
    (from privacy.json), with a note where that exceeds its target; "" unless a centre
    released more than one."""
    together = _together(privacy)
    if not together:
        return ""
    rows = {
        centre: {
            "generators": ", ".join(e["released"]),
            "each at most": f"{e['each_at_most']:.4g}",
            "together": _together_cell(e),
            "target": "-" if e.get("target_epsilon") is None else f"{e['target_epsilon']:g}",
        }
        for centre, e in together.items()
    }
    lines = [
        "## DP generators of each sharing centre, together",
        "",
        "Each generator is a ledger of its own, held to the centre's target alone; the "
        "receiver holds them all, trained on the same patches, so the centre's privacy loss "
        "is their composition (together: same accountant and delta).",
        "",
        to_markdown(pd.DataFrame.from_dict(rows, orient="index"), index_name="centre"),
    ]
    notes = [t for c, e in together.items() if (t := composed_generators_note(c, e))]
    return "\n".join(lines + [f"\n- {t}" for t in notes])


def _bold(table: GanTable) -> pd.DataFrame:
    frame = table.frame.copy()
    for title, arms in table.best.items():
        for arm in arms:
            frame.loc[arm, title] = f"**{frame.loc[arm, title]}**"
    return frame


def tables_markdown(
    tables: Sequence[GanTable], generators: pd.DataFrame | None = None, *, heading: str = ""
) -> str:
    """Markdown of the tables (best per column in bold) and the generator table."""
    lines = [heading or "## Lesion-patch classification on the receiver's test set", ""]
    lines += [
        "Mean (std) over seeds; AUROC is the records' `auc`. "
        f"{GAIN}: the arm's AUROC minus the receiver-alone arm's, on the same test patches, "
        "computed inside the receiver; "
        f"{GAIN_CI}: in how many seeds its paired 95% bootstrap CI (over the test patients) "
        "lies above / below 0, by the CI alone (the forest plot of report.html also asks its "
        "paired p-value, the `p_value` record, to be below 0.05). "
        f"Arms flagged '{MOVED}' moved real lesion patches between centres: a simulation-only "
        "upper bound that no deployment may run. "
        "Every arm but the receiver alone adds its lesion patches and as many of the "
        "receiver's healthy ones, and trains the same epochs, so it also takes more optimiser "
        "steps: up to several times the receiver alone's. Compare a synthetic or harmonised "
        "arm with `A+own_lesions` (real lesions of the receiver's own, the same size), not "
        "only with `A`.",
        "",
    ]
    if not tables:
        lines.append("No final test metrics were recorded.")
    for table in tables:
        lines += [f"### {table.title}", "", to_markdown(_bold(table).fillna("")), ""]
    if generators is not None and not generators.empty:
        lines += [
            "## Shared generators",
            "",
            _frechet_note(generators) + "Patches: the generator's training patches.",
            "",
            to_markdown(generators.fillna(""), index_name="generator"),
            "",
        ]
        lines += [f"- {note}\n" for note in generators.attrs.get("notes", [])]
    return "\n".join(lines)


def _frechet_note(generators: pd.DataFrame) -> str:
    """What the generator table's Frechet columns mean, or why there are none."""
    if FRECHET_COLUMN not in generators:
        return (
            "No Frechet distance: the DP centres withheld it (a noise-free statistic of their "
            "training patches; privacy.release_training_statistics in a profile sends it). "
        )
    note = (
        "Frechet: distance between each centre's real training lesion patches and samples "
        "of its generator, in the fixed random_cnn_v1 feature space (computed inside the "
        "centre; comparable between fedmammo runs only, not a published FID). Real floor: "
        "the distance between two halves of the real patches: with tens of patches a half "
        "in a 112-dimensional space it is mostly estimation noise (it can differ severalfold "
        "between two generators of the same patches), a rough scale, not a bound. "
    )
    if generators[FRECHET_COLUMN].isna().any():
        note += "Empty: withheld by a DP centre (a noise-free statistic of its training patches). "
    return note


def print_tables(
    tables: Sequence[GanTable],
    console: Console | None = None,
    generators: pd.DataFrame | None = None,
) -> None:
    """Print the tables with rich (best per column in bold, moved pixels in red)."""
    console = console or Console()
    for table in tables:
        seeds = "/".join(sorted(set(table.frame["seeds"]))) if "seeds" in table.frame else "?"
        rt = Table(
            title=table.title,
            box=box.SIMPLE_HEAD,
            caption=f"mean (std) over {seeds} seed(s); ΔAUROC: over the receiver alone, paired; "
            "CI +/-: seeds whose CI alone is above / below 0; moved YES: real patches left "
            "their centre (simulation only)",
        )
        rt.add_column("arm", overflow="fold")  # fold, never crop or cut to "…"
        for title in METRICS.values():
            rt.add_column(title, justify="right", min_width=max(7, len(title)), overflow="fold")
        rt.add_column("ΔAUROC", justify="right", overflow="fold")  # GAIN, GAIN_CI, shorter
        rt.add_column("CI +/-", justify="right", overflow="fold")
        rt.add_column("moved", min_width=5)
        for arm, row in table.frame.iterrows():
            cells = []
            for title in METRICS.values():
                text = str(row[title]).replace(" (", "\n(")
                cells.append(f"[bold]{text}[/]" if arm in table.best.get(title, ()) else text)
            cells += [str(row.get(title, "-")).replace(" (", "\n(") for title in (GAIN, GAIN_CI)]
            moved = row["pixels moved"] == MOVED
            cells.append("[bold red]YES[/]" if moved else "no")
            rt.add_row(str(arm), *cells)
        console.print(rt)
    if generators is not None and not generators.empty:
        rt = Table(
            title="Shared generators (quality computed inside each centre)", box=box.SIMPLE_HEAD
        )
        rt.add_column("generator", overflow="fold")
        for col in generators.columns:
            rt.add_column(str(col), justify="right", overflow="fold")
        for name, row in generators.fillna("").iterrows():
            rt.add_row(str(name), *map(str, row.tolist()))
        console.print(rt)
        for note in generators.attrs.get("notes", []):
            console.print(note, style="yellow", highlight=False, markup=False, soft_wrap=True)


def plot_sample_grid(
    rows: Sequence[tuple[str, np.ndarray]],
    path: str | Path,
    *,
    title: str = "",
    columns: int = 12,
    dpi: int = 100,
) -> Path:
    """Draw labelled rows of patches ``(N, S, S)`` in [0, 1] (e.g. real above synthetic)."""
    if not rows:
        raise DataError("plot_sample_grid: no rows of patches given")
    panel = []
    for label, patches in rows:
        arr = np.asarray(patches, dtype=np.float32)
        if arr.ndim != 3:
            raise DataError(f"plot_sample_grid: row {label!r} is not (N, S, S): {arr.shape}")
        panel.append((label, arr[:columns]))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.0 * columns + 1.6, 1.05 * len(panel) + 0.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panel), columns, squeeze=False)
    for r, (label, arr) in enumerate(panel):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(arr):
                ax.imshow(arr[c], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")
    return out


def section(recorder: RunRecorder, console: Console) -> str:
    """The GAN-sharing paper Table 1/2 layout for results.md (already printed by the runner),
    and each sharing centre's epsilon over all its DP generators where the generator table
    does not give it (:func:`composed_markdown`)."""
    text = str(recorder.meta.get("share_gans_tables_markdown", ""))
    path = Path(recorder.run_dir) / PRIVACY_FILE
    if TOGETHER in text or not path.is_file():
        return text
    try:
        privacy = json.loads(path.read_text())
    except (OSError, ValueError):
        return text
    extra = composed_markdown(privacy)
    return f"{text}\n\n{extra}" if text and extra else (text or extra)
