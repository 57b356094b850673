"""What importing a fedmammo module costs a fresh process (a Ray actor starts this way).

    python benchmarks/bench_imports.py [--base-ref HEAD~3] [--repeats 3] [modules ...]

Each import runs in a fresh interpreter (``-X importtime`` not used: it slows the import);
printed: the import's wall time, median over ``--repeats``; then, from the last repeat only:
the probe process's peak RSS (``ru_maxrss``), its PSS read once from
``/proc/self/smaps_rollup`` right after the import (not a peak), how many modules got loaded
and which heavy libraries came with them. PSS splits each shared page among every process on
the machine that maps it at that moment, so it depends on what else runs: a lone probe on an
idle machine shows PSS close to its RSS, the same probe beside other torch processes a lower
PSS. It is not what N actors of one run cost (``bench_federation.py`` samples that, per
actor, during a run). ``--base-ref`` imports the same modules from that git revision (``git
archive`` into a temporary folder) in the same run, for before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = (
    "torch",
    "opacus",
    "scipy",
    "sklearn",
    "pandas",
    "matplotlib",
    "flwr",
    "ray",
    "pydicom",
    "torchvision",
)
DEFAULT = (
    "fedmammo.training.classifier",
    "fedmammo.training.gan",
    "fedmammo.training.mtl",
    "fedmammo.training.patch_classifier",
    "fedmammo.privacy.accounting",
    "fedmammo.privacy.engine",
    "fedmammo.federation.client_app",
    "fedmammo.apps",  # what every Ray actor imports (Flower's ClientApp component)
)
PROBE = """
import json, resource, sys, time
t = time.perf_counter()
import {module}
wall = time.perf_counter() - t
pss = 0
for line in open("/proc/self/smaps_rollup"):
    if line.startswith("Pss:"):
        pss = int(line.split()[1]) / 1024
heavy = [m for m in {heavy!r} if m in sys.modules]
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(dict(wall=wall, rss=rss, pss=pss, modules=len(sys.modules), heavy=heavy)))
"""


def probe(module: str, source: Path, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(module=module, heavy=HEAVY)],
            cwd=tempfile.gettempdir(),  # not the repo: its folder would shadow PYTHONPATH
            env=env,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            return {"error": out.stderr.strip().splitlines()[-1]}
        runs.append(json.loads(out.stdout))
    best = runs[-1]
    best["wall"] = statistics.median(r["wall"] for r in runs)
    return best


def export(ref: str, folder: Path) -> Path:
    archive = subprocess.run(
        ["git", "archive", ref, "fedmammo"], cwd=REPO, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def cell(r: dict) -> str:
    if "error" in r:
        return f"error: {r['error'][:60]}"
    return f"{r['wall']:.2f} s, {r['rss']:.0f} / {r['pss']:.0f} MB, {r['modules']} modules"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=list(DEFAULT))
    parser.add_argument("--base-ref", help="git revision to compare against")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = export(args.base_ref, Path(tmp)) if args.base_ref else None
        rows = []
        for module in args.modules:
            after = probe(module, REPO, args.repeats)
            before = probe(module, base, args.repeats) if base else None
            rows.append((module, before, after))
    load = os.getloadavg()[0]
    print(
        f"Fresh interpreter per import; wall: median of {args.repeats}; peak RSS / PSS "
        "after the import, last repeat (PSS depends on what else maps the libraries); "
        f"load {load:.1f}; `{' '.join(['python', *sys.argv])}`\n"
    )
    head = "| module |" + (f" before ({args.base_ref}) |" if base else "") + " after | heavy |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for module, before, after in rows:
        cols = [module] + ([cell(before)] if before else []) + [cell(after)]
        heavy = ", ".join(h for h in after.get("heavy", []) if h != "torch")
        if before and "heavy" in before:
            gone = sorted(set(before["heavy"]) - set(after.get("heavy", [])))
            heavy += f" (no longer: {', '.join(gone)})" if gone else ""
        print("| " + " | ".join([*cols, heavy or "-"]) + " |")


if __name__ == "__main__":
    main()
