"""Scale: N tiny simulated centres, a few FedAvg rounds: wall time, memory, bytes per round.

    python benchmarks/bench_scale.py [--centres 10 100 1000] [--rounds 2] [--plot scale.png]
                                     [--backend ray|inprocess]
    python benchmarks/bench_scale.py --dry-run --centres 1000   # write and check, run nothing

Each N runs ``python -m fedmammo.simulate`` on a generated scenario of N ``tiny`` centres
(federated arm only, no bootstrap, a 4-wide mammo_cnn on 32x24 images) in a fresh process
tree, sampled every 0.5 s for RSS. Bytes per round are the model arrays a FedAvg round moves
(the global model to every centre, one update back from each), computed from the model's
state_dict; when the run's ``results.json`` records message bytes (``meta.bytes_per_round``)
that figure is printed instead. Prints a markdown section for BENCHMARKS.md (and a log-log
plot with ``--plot``). Budget: 1000 centres generate 48,000 phantom DICOMs first. A run past
``--timeout`` seconds or ``--max-rss-gb`` is stopped (its own process tree killed by pid) and
reported as such, and no larger N is tried. ``--ref REV`` runs that git revision (``git
archive``; imports come from it, in the Ray actors too), not a working tree being edited.
``--backend`` is passed to the simulate command (default: the scenario's, Ray).
``--dry-run`` writes each scenario, validates it with ``python -m fedmammo.simulate SCENARIO
--check`` (from ``--ref``'s tree if given: the scenario loads and the plan is checked, no data
is generated and nothing is run) and prints the command that would run it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_federation import MemorySampler, descendants, export  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = {"width": 4, "depth": 3}


def scenario(n: int, rounds: int, folder: Path) -> Path:
    """A FedAvg scenario of ``n`` tiny centres (federated arm only)."""
    centres = [{"profile": "tiny", "name": f"c{i:04d}", "role": "train"} for i in range(n)]
    spec = {
        "name": f"scale_{n}_centres",
        "centres": centres,
        "strategy": "fedavg",
        "strategy_overrides": {
            "params.rounds": rounds,
            "params.arms": ["federated"],
            "params.bootstrap": 0,
            "params.min_centres": 1,
            "params.model.options": MODEL,
        },
        "image_size": [32, 24],
        "data_dir": str(folder / "data"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"scale_{n}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def model_bytes() -> int:
    """Bytes of the scenario's model arrays (what FedAvg sends each way per centre)."""
    from fedmammo.models.registry import build_model

    state = build_model("mammo_cnn", **MODEL).state_dict()
    return sum(t.numel() * t.element_size() for t in state.values())


def run(
    path: Path,
    out: Path,
    timeout: float,
    max_rss_mb: float,
    source: Path | None = None,
    extra: tuple[str, ...] = (),
) -> dict:
    """One simulation of ``path``; stopped (its whole process tree killed) past ``timeout``
    seconds or ``max_rss_mb`` of RSS: then ``stopped`` says why and what was reached."""
    sampler = MemorySampler()
    sampler.start()
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedmammo.simulate", str(path), "--out", str(out), *extra],
            cwd=source or REPO,
            env={**os.environ, "PYTHONPATH": str(source)} if source else None,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    sampler.root = proc.pid  # only this run's process tree (Ray's processes included)
    stopped = None
    while proc.poll() is None:
        elapsed = time.perf_counter() - start
        if elapsed > timeout:
            stopped = f"stopped after {elapsed:.0f} s (--timeout)"
        elif sampler.peak_total > max_rss_mb:
            stopped = f"stopped at {sampler.peak_total:.0f} MB RSS (--max-rss-gb)"
        if stopped:
            for pid in reversed(descendants(proc.pid)):  # this run's processes only
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(1.0)
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    actors = sorted(sampler.peak_by_pid.values())
    row = {
        "wall": wall,
        "rss_total": sampler.peak_total,
        "rss_actor": actors[len(actors) // 2] if actors else float("nan"),
        "actors": len(actors),
        "stopped": stopped,
    }
    if stopped:
        return row
    if proc.returncode != 0:
        raise SystemExit(f"{path.name} failed:\n{log.read_text()[-3000:]}")
    results = json.loads(sorted(out.glob("*/*/results.json"))[-1].read_text())
    meta = results.get("meta", {})
    return {
        **row,
        "server": float(meta.get("wall_seconds", float("nan"))),
        "bytes": meta.get("bytes_per_round"),
    }


def plot(rows: list[tuple[int, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r[0] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(8, 3.2))
    ax[0].loglog(n, [r[1]["wall"] for r in rows], "o-", label="process wall")
    ax[0].loglog(n, [r[1]["server"] for r in rows], "s-", label="ServerApp")
    ax[0].loglog(n, [rows[0][1]["wall"] * k / n[0] for k in n], ":", lw=0.8, label="linear")
    ax[0].set(xlabel="centres", ylabel="time (s)", title="wall time")
    ax[0].legend(fontsize=8)
    ax[1].loglog(n, [r[1]["rss_total"] / 1024 for r in rows], "o-")
    ax[1].set(xlabel="centres", ylabel="peak RSS (GB)", title="memory, whole process tree")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def check(path: Path, source: Path | None, extra: Sequence[str]) -> None:
    """``python -m fedmammo.simulate path --check`` (the scenario loaded and its plan checked,
    nothing run), from ``source`` if given; exits with simulate's message if it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "fedmammo.simulate", str(path), "--check", *extra],
        cwd=source or REPO,
        env={**os.environ, "PYTHONPATH": str(source)} if source else None,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{path}: the check failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    print(f"{path}: checked", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--centres", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--timeout", type=float, default=6 * 3600, help="seconds per run: stop it past this"
    )
    parser.add_argument(
        "--max-rss-gb", type=float, default=20.0, help="stop a run whose process tree passes this"
    )
    parser.add_argument("--plot", type=Path, help="write a log-log plot here")
    parser.add_argument(
        "--dry-run", action="store_true", help="write and check scenarios, print commands"
    )
    parser.add_argument("--keep", type=Path, help="keep scenarios and runs under this folder")
    parser.add_argument(
        "--ref", help="run this git revision (git archive), not the working tree being edited"
    )
    parser.add_argument("--backend", choices=["ray", "inprocess"], help="simulate's --backend")
    args = parser.parse_args()
    extra = ("--backend", args.backend) if args.backend else ()
    per_centre = model_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        source = export(args.ref, Path(tmp) / "source") if args.ref else None
        rows = []
        for n in args.centres:
            path = scenario(n, args.rounds, root / f"n{n}")
            if args.dry_run:
                check(path, source, extra)
                cmd = f"python -m fedmammo.simulate {path} --out {root / f'n{n}' / 'runs'}"
                where = f"  # from `git archive {args.ref}`, PYTHONPATH set to it" if source else ""
                print(" ".join([cmd, *extra]) + where)
                continue
            out = root / f"n{n}" / "runs"
            rows.append((n, run(path, out, args.timeout, args.max_rss_gb * 1024, source, extra)))
            print(f"{n} centres: {rows[-1][1]}", file=sys.stderr, flush=True)
            if rows[-1][1]["stopped"]:
                break  # a larger N would not fit either
    if args.dry_run:
        return
    load = os.getloadavg()
    print("## Scale: tiny centres (`benchmarks/bench_scale.py`)\n")
    print(
        f"`{' '.join(['python', *sys.argv])}`; {args.rounds} FedAvg rounds, {os.cpu_count()} "
        f"CPUs, load {load[0]:.1f}; model {per_centre / 1024:.1f} KiB.\n"
    )
    print(
        "| centres | wall (s) | ServerApp (s) | wall / centre (s) | peak RSS tree (MB) | "
        "RSS per actor (MB) | actors | bytes per round |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in rows:
        if r["stopped"]:
            print(
                f"| {n} | {r['stopped']} | - | - | >= {r['rss_total']:.0f} | "
                f"{r['rss_actor']:.0f} | {r['actors']} | - |"
            )
            continue
        sent = r["bytes"] if r["bytes"] is not None else 2 * n * per_centre
        print(
            f"| {n} | {r['wall']:.1f} | {r['server']:.1f} | {r['wall'] / n:.2f} | "
            f"{r['rss_total']:.0f} | {r['rss_actor']:.0f} | {r['actors']} | {sent:,} |"
        )
    done = [(n, r) for n, r in rows if not r["stopped"]]
    if args.plot and done:
        plot(done, args.plot)
        print(f"\n![scale]({args.plot})")


if __name__ == "__main__":
    main()
