"""Building a model to load received weights into: ``build_model`` (randomly initialised,
then overwritten) against ``build_model_to_load`` (empty storage, no initialisation).

    OMP_NUM_THREADS=1 python benchmarks/bench_model_load.py [--repeats 7] [--scenario-runs 3]

Each model's two ways are timed interleaved in one process (median wall of ``--repeats``,
build + ``load_state_dict``). ``--scenario-runs`` then times the tiny CycleGAN-UDA run
(``tests/methods/cyclegan_uda/tiny.yaml``, in process; its centres load a ResNet-50 for each
evaluation) from a ``git archive`` of ``--base-ref`` (default b301c79, the last revision
without ``build_model_to_load``) and from this tree, alternately, on data prepared beforehand.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "resnet50 (224 px)": ("resnet50", {"input_size": 224}),
    "contrastive_resnet18": ("contrastive_resnet18", {}),
    "mammo_cnn": ("mammo_cnn", {}),
}
TINY = "tests/methods/cyclegan_uda/tiny.yaml"


def time_builds(repeats: int) -> list[tuple[str, float, float]]:
    from fedmammo.models import build_model, build_model_to_load

    rows = []
    for label, (name, options) in MODELS.items():
        state = build_model(name, **options).state_dict()
        times: dict[str, list[float]] = {"build": [], "to_load": []}
        for _ in range(repeats):
            for way, fn in (("build", build_model), ("to_load", build_model_to_load)):
                start = time.perf_counter()
                fn(name, **options).load_state_dict(state)
                times[way].append(time.perf_counter() - start)
        rows.append((label, statistics.median(times["build"]), statistics.median(times["to_load"])))
    return rows


def time_scenario(source: Path, data: Path, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fedmammo.simulate", str(source / TINY), "--backend",
           "inprocess", "--out", str(out), "--set", f"data_dir={data}"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, cwd=source, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--scenario-runs", type=int, default=0)
    parser.add_argument(
        "--base-ref", default="b301c79", help="the 'before' revision (default: the last without it)"
    )
    opts = parser.parse_args()
    print("| model | build_model + load | build_model_to_load + load | ratio |")
    print("|---|---:|---:|---:|")
    for label, before, after in time_builds(opts.repeats):
        print(f"| {label} | {before * 1e3:.1f} ms | {after * 1e3:.1f} ms | {after / before:.2f}x |")
    if not opts.scenario_runs:
        return
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_federation import export

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = export(opts.base_ref, tmp / "base")
        data = tmp / "data"
        time_scenario(REPO, data, tmp / "warm")  # prepares the data both runs read
        walls: dict[str, list[float]] = {"before": [], "after": []}
        for k in range(opts.scenario_runs):
            walls["before"].append(time_scenario(base, data, tmp / f"b{k}"))
            walls["after"].append(time_scenario(REPO, data, tmp / f"a{k}"))
    before, after = (statistics.median(walls[w]) for w in ("before", "after"))
    print(f"\n{TINY} in process, median of {opts.scenario_runs}: before ({opts.base_ref}) "
          f"{before:.1f} s, after {after:.1f} s: {after / before:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
