"""Wall time of one whole study, before / after and per backend, with its numbers compared.

    python benchmarks/bench_study.py [SCENARIO] [--quick] [--base-ref REV]
                                     [--backends ray inprocess]

Runs ``python -m fedmammo.simulate SCENARIO`` (default ``scenarios/share_gans.yaml``) once per
column, one after the other: from ``--base-ref`` (exported with ``git archive``, as
``bench_federation.py`` does; on the first of ``--backends``) and from this tree on each
backend. Per column: the process wall time, the ServerApp's, the centres' own compute (the
handlers' ``compute_seconds``: generators and arm runs) and how many jobs the engine ran at
once (``runspec.json``'s ``workers``; 1 before it existed). Then whether every non-timing
metric equals the first column's and, where they differ, the quality each column reaches: the
mean of each test metric over every record both columns have, the mean paired difference with
its standard error, and the mean test AUROC per arm. ``--keep DIR`` copies each column's
``results.json`` there. Prints a markdown section for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench_federation import export, run


def metrics(res: dict) -> dict:
    """Every non-timing metric of a run, keyed as the tests key them."""
    key = ("arm", "seed", "centre", "segment", "split", "metric", "round")
    return {
        tuple(str(m.get(k)) for k in key): (m["value"], m.get("ci_low"), m.get("ci_high"))
        for m in res["metrics"]
        if m["split"] != "timing" and not str(m["metric"]).endswith("compute_seconds")
    }


QUALITY = ("auc", "auprc", "accuracy", "f1")  # test metrics compared when the numbers differ


def quality(columns: dict[str, tuple[dict, dict]]) -> None:
    """Print each column's mean test metrics against the first column's, paired by record."""
    names = list(columns)
    first = columns[names[0]][1]
    print(
        "\n| test metric (records both have) | " + " | ".join(names) + " |\n|---|"
        + "---|" * len(names)
    )  # fmt: skip
    for metric in QUALITY:
        cells, n = [], 0
        for name in names:
            other = columns[name][1]
            keys = [k for k in first if k[4:6] == ("test", metric) and k in other]
            if not keys:
                break
            n = len(keys)
            mean = statistics.fmean(other[k][0] for k in keys)
            diffs = [other[k][0] - first[k][0] for k in keys]
            se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
            change = "" if name == names[0] else f" ({statistics.fmean(diffs):+.4f} +- {se:.4f})"
            cells.append(f"{mean:.4f}{change}")
        if cells:
            print(f"| {metric} ({n}) | " + " | ".join(cells) + " |")
    arms = sorted({re.sub(r"@.*", "", k[0]) for k in first if k[4:6] == ("test", "auc")})
    print("\n| mean test AUROC per arm | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for arm in arms:
        cells = []
        for name in names:
            values = [
                v[0] for k, v in columns[name][1].items()
                if k[4:6] == ("test", "auc") and re.sub(r"@.*", "", k[0]) == arm
            ]  # fmt: skip
            cells.append(f"{statistics.fmean(values):.4f} ({len(values)})" if values else "-")
        print(f"| {arm} | " + " | ".join(cells) + " |")


def column(
    args: list[str], out: Path, source: Path | None = None, keep: Path | None = None
) -> tuple[dict, dict]:
    """One run: its table cells and its metrics (its results.json copied to ``keep``)."""
    done = run(args, out, source)
    wall, run_dir = done.wall, done.run_dir
    if keep is not None:
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "results.json", keep)
    res = json.loads((run_dir / "results.json").read_text())
    spec = json.loads((run_dir / "runspec.json").read_text())
    compute = sum(
        m["value"]
        for m in res["metrics"]
        if m["split"] == "timing" and str(m["metric"]).endswith("compute_seconds")
    )
    app = res["meta"]["wall_seconds"]
    cells = {
        "process wall time": f"{wall / 60:.1f} min ({wall:.0f} s)",
        "of which the ServerApp": f"{app:.0f} s",
        "centres' own compute (sum of compute_seconds)": f"{compute:.0f} s" if compute else "-",
        "ServerApp wall / centres' compute": f"{app / compute:.2f}x" if compute else "-",
        "jobs at once (runspec workers)": str(spec.get("workers", 1)),
        "peak RSS, whole process tree": f"{done.memory.peak_total:.0f} MB",
    }
    return cells, metrics(res)


def kept(folder: Path | None, label: str) -> Path | None:
    """Where ``--keep`` puts a column's results.json (None: not kept)."""
    return folder / f"{label}.json" if folder else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="scenarios/share_gans.yaml")
    parser.add_argument("--quick", action="store_true", help="the scenario's quick block")
    parser.add_argument("--base-ref", help="first run the study from this git revision")
    parser.add_argument(
        "--backends", nargs="+", choices=["ray", "inprocess"], default=["ray"],
        help="one column per simulation backend of this tree (default: ray)",
    )  # fmt: skip
    parser.add_argument("--keep", type=Path, help="copy each column's results.json here")
    args = parser.parse_args()
    study = [args.scenario] + (["--quick"] if args.quick else [])
    columns: dict[str, tuple[dict, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.base_ref:
            base = export(args.base_ref, tmp / "base")
            first = args.backends[0]  # the base runs on the first backend asked for
            columns[f"before ({args.base_ref}, {first})"] = column(
                [*study, "--backend", first], tmp / "base-run", base, kept(args.keep, "before")
            )
        for backend in args.backends:
            name = f"after, {backend}" if args.base_ref else backend
            columns[name] = column(
                [*study, "--backend", backend],
                tmp / f"run-{backend}",
                keep=kept(args.keep, backend),
            )
    first_cells, first_metrics = next(iter(columns.values()))
    print(f"## One study (`benchmarks/bench_study.py`): {' '.join(study)}\n")
    print(
        f"`{' '.join(['python', *sys.argv])}`: {os.cpu_count()} CPUs, one run per column, one "
        f"after the other, load {os.getloadavg()[0]:.1f} at the end.\n"
    )
    print("| measurement | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for key in first_cells:
        print(f"| {key} | " + " | ".join(c[key] for c, _ in columns.values()) + " |")
    same = [
        "yes"
        if m == first_metrics
        else f"no ({sum(m.get(k) != v for k, v in first_metrics.items())} differ)"
        for _, m in columns.values()
    ]
    print(
        f"| metrics equal to the first column's ({len(first_metrics)}) | " + " | ".join(same) + " |"
    )
    if any(m != first_metrics for _, m in columns.values()):
        quality(columns)


if __name__ == "__main__":
    main()
