"""A tiny run folder written from scratch, shaped like what a fedmammo run leaves behind."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedmammo.evaluation.results import RECORD_FIELDS

ARMS = ("federated", "local-a")
CENTRES = ("a", "b")


def _record(arm, centre, split, metric, value, lo=None, hi=None, rnd=None, seg=None, seed=0):
    return {
        "arm": arm,
        "seed": seed,
        "centre": centre,
        "segment": seg,
        "split": split,
        "metric": metric,
        "value": value,
        "ci_low": lo,
        "ci_high": hi,
        "round": rnd,
    }


def records(offset: float = 0.0, seeds: tuple[int, ...] = (0,)) -> list[dict[str, Any]]:
    """Final test AUROC / AUPRC with CIs, per-segment AUROC, val AUROC per round, timings."""
    rng = np.random.default_rng(int(offset * 1000))
    out = []
    for seed in seeds:
        for i, arm in enumerate(ARMS):
            for rnd in (1, 2, 3):
                out.append(_record(arm, "all", "timing", "round_wall_seconds", 1.5 + rnd, rnd=rnd))
                for centre in CENTRES:
                    v = 0.55 + 0.1 * rnd + 0.01 * i + offset
                    out.append(_record(arm, centre, "val", "auc", v, rnd=rnd, seed=seed))
            for j, centre in enumerate(CENTRES):
                auc = round(0.71 + 0.07 * i + 0.05 * j + offset + 0.01 * seed, 6)
                lo, hi = round(auc - 0.08, 6), min(1.0, round(auc + 0.06, 6))
                out.append(_record(arm, centre, "test", "auc", auc, lo, hi, seed=seed))
                out.append(_record(arm, centre, "test", "auprc", float(rng.uniform(0.2, 0.9))))
                out.append(_record(arm, centre, "test", "n", 40))
                for seg in (f"{centre.upper()}-Ma", f"{centre.upper()}-Mb"):
                    out.append(_record(arm, centre, "test", "auc", auc - 0.02, seg=seg, seed=seed))
    return out


def _png(path: Path) -> None:
    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    ax.plot([0, 0.2, 1], [0, 0.7, 1])
    ax.set_title("ROC")
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=40)


def _thumbs(path: Path) -> None:
    from fedmammo.evaluation.report_charts import write_thumbnail_grid

    rng = np.random.default_rng(0)
    write_thumbnail_grid(rng.integers(0, 4096, size=(4, 16, 12)).astype(np.uint16), path)


SCENARIO = {
    "name": "tiny",
    "description": "Two centres, one synthetic, one real",
    "centres": [{"name": "a", "role": "train"}, {"name": "b", "role": "test"}],
    "strategy": {"name": "fedavg", "kind": "fedavg", "description": "FedAvg of a tiny CNN"},
    "seeds": [0],
    "data_seed": 3,
    "image_size": [64, 48],
    "resolved_profiles": {
        "a": {
            "data": {"synthetic": {"segments": []}, "format": None},
            "labels": {"missing": {}},
            "sharing": {"models": True, "generators": False, "real_patches_in_simulation": False},
            "privacy": {"target_epsilon": 4.0, "noise_multiplier": None, "delta": 1e-5},
        },
        "b": {
            "data": {"synthetic": None, "format": "dicom-folder", "root": "/data/b"},
            "labels": {"missing": {"malignancy": 0.25}},
            "sharing": {"models": False, "generators": False, "real_patches_in_simulation": False},
            "privacy": {"target_epsilon": None, "noise_multiplier": None, "delta": None},
        },
    },
}

RESULTS_MD = """# Results: tiny

Test AUROC [95% CI] per arm (rows) and evaluating centre (columns).

| arm | a | b |
|---|---|---|
| federated | 0.710 [0.630, 0.770] | 0.760 [0.680, 0.820] |
| local-a | 0.780 [0.700, 0.840] | 0.830 [0.750, 0.890] |

## Extra table

| stratum | federated |
|---|---|
| density=A | 61.00 (50.00, 70.00) |

- a note with `code`
"""


def make_run_dir(
    root: Path,
    name: str = "20260101-120000",
    *,
    offset: float = 0.0,
    seeds: tuple[int, ...] = (0,),
    plots: bool = True,
    done: bool = True,
    provenance: bool = True,
) -> Path:
    """Write a complete run folder under ``root/tiny/<name>`` and return it."""
    run = root / "tiny" / name
    run.mkdir(parents=True)
    meta: dict[str, Any] = {
        "scenario": "tiny",
        "kind": "fedavg",
        "seeds": list(seeds),
        "quick": True,
        "deployment": False,
        "centre_order": list(CENTRES),
        "wall_seconds": 12.5,
        "centres": {
            "a": {
                "role": "train",
                "counts": {
                    "n-images": 24,
                    "n-patients": 6,
                    "n|train|A-Ma|0": 8,
                    "n|train|A-Ma|1": 4,
                    "n|test|A-Ma|0": 3,
                    "n|test|A-Ma|1": 1,
                    "n|train|A-Mb|0": 5,
                    "n|test|A-Mb|na": 3,
                },
                "brightest_pixel": {"brightest_pixel_auc": 0.75, "ci_low": 0.5, "ci_high": 1.0},
            },
            "b": {"role": "test", "counts": {"n-images": 10, "n|test|B-Mc|0": 10}},
            "pooled": {"role": "pooled", "counts": {}},
        },
    }
    if provenance:
        meta |= {
            "git_commit": "0123456789abcdef0123456789abcdef01234567",
            "versions": {"python": "3.11.2", "torch": "2.4.0", "flwr": "1.41.0"},
            "machine": {"cpu": "Test CPU", "cpu_count": 2, "memory_gib": 8.0, "gpus": []},
        }
        for centre in meta["centres"].values():
            centre["torch_threads"] = 1
    metrics = records(offset, seeds)
    progress = {f"{arm}|{s}": {"round": 3, "done": done} for arm in ARMS for s in seeds}
    results = {
        "meta": meta,
        "metrics": metrics,
        "failures": [
            {
                "arm": "federated",
                "seed": 0,
                "centre": "b",
                "round": 2,
                "phase": "train",
                "reason": "egress refused: array shaped like an image",
            }
        ],
        "notes": ["a note about the pooled arm", "WARNING: a loud note"],
        "progress": progress,
    }
    (run / "results.json").write_text(json.dumps(results, indent=1))
    pd.DataFrame(metrics, columns=list(RECORD_FIELDS)).to_csv(run / "metrics.csv", index=False)
    (run / "results.md").write_text(RESULTS_MD)
    (run / "scenario.resolved.yaml").write_text(yaml.safe_dump(SCENARIO, sort_keys=False))
    privacy = {
        "records": [
            {
                "centre": "a",
                "arm": "federated",
                "seed": 0,
                "phase": "train",
                "accountant": "rdp",
                "epsilon": 1.25,
                "ledger_epsilon": 2.5,
                "delta": 1e-5,
                "noise_multiplier": 1.1,
                "sample_rate": 0.1,
                "planned_steps": 30,
                "target_epsilon": 4.0,
                "rounds": [1, 2, 3],
            }
        ],
        "refusals": [
            {"centre": "a", "arm": "local-a", "seed": 0, "round": 3, "reason": "budget spent"}
        ],
        "audits": [{"centre": "a", "arm": "federated", "seed": 0, "attack": "loss", "auc": 0.52}],
        "summary": {"a": {"max_epsilon": 2.5, "delta": 1e-5, "arm": "federated", "seed": 0}},
        "notes": ["privacy note"],
    }
    (run / "privacy.json").write_text(json.dumps(privacy))
    (run / "run.log").write_text(
        "2026-01-01 12:00:00,000 INFO fedmammo: started\n"
        "2026-01-01 12:00:01,000 WARNING fedmammo.data.cache: dropped 1 lesion box\n"
        "2026-01-01 12:00:02,000 DEBUG flwr: noise\n"
    )
    if plots:
        _png(run / "plots" / "test_roc_seed0.png")
    _thumbs(run / "thumbnails" / "a.png")
    _thumbs(run / "thumbnails" / "b.png")
    return run


def make_sweep_dir(root: Path) -> Path:
    """A sweep folder with two points (privacy.target_epsilon=1.0 and 8.0)."""
    sweep = root / "sweep" / "20260101-130000"
    for k, eps in enumerate((1.0, 8.0)):
        point = make_run_dir(sweep / "points", f"privacy.target_epsilon={eps}", offset=0.02 * k)
        moved = sweep / "points" / point.name
        point.rename(moved)
        (moved / "runspec.json").write_text(json.dumps({"sets": {}}))  # as a point's is
        (moved / "scenario.resolved.yaml").unlink()
    (sweep / "points" / "tiny").rmdir()
    sets = {"sweep": {"privacy.target_epsilon": [1.0, 8.0]}, "strategy.params.rounds": 2}
    (sweep / "invocation.json").write_text(json.dumps({"sets": sets}))
    (sweep / "scenario.resolved.yaml").write_text(yaml.safe_dump(SCENARIO, sort_keys=False))
    _png(sweep / "privacy_utility.png")
    return sweep


class ValueCells(HTMLParser):
    """Collects the ``data-*`` attributes and text of cells that carry ``data-value``."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, str]] = []
        self.images: list[dict[str, str]] = []
        self._open: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "td" and "data-value" in a:
            self._open = {**a, "text": ""}
        if tag == "img":
            self.images.append(a)

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._open is not None:
            self.cells.append(self._open)
            self._open = None


def parse(html: str) -> ValueCells:
    """Parse a report's HTML."""
    p = ValueCells()
    p.feed(html)
    return p
