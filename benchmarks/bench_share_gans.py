"""Speed of the share_gans receiver's work: patch-classifier epochs and CycleGAN steps.

    python benchmarks/bench_share_gans.py [--patches 700] [--epochs 2] [--repeats 3]

Prints a markdown section for BENCHMARKS.md. Rates are ratios against the quick scenario's
setting (32-px patches, width-8 CNN; 32-px width-8 CycleGAN) measured in the same run. Before
anything is timed, one short untimed run of each baseline setting pays the process's one-time
costs (lazy imports, the first optimizer step's ``torch._dynamo``, allocator warm-up), which
would otherwise land on the baseline alone. Each setting is then timed ``--repeats`` times,
the settings interleaved round by round, and its best (fastest) round is reported.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from fedmammo.models import build_model
from fedmammo.training.cyclegan import train_cyclegan
from fedmammo.training.patch_classifier import train_patch_classifier


def classifier_rate(size: int, width: int, hidden: int, n: int, epochs: int) -> float:
    """Training patches per second (validation on 60 patches every epoch included)."""
    rng = np.random.default_rng(0)
    x, y = rng.random((n, size, size), dtype=np.float32), np.arange(n) % 2
    model = build_model("patch_cnn", patch_size=size, width=width, hidden=hidden)
    start = time.perf_counter()
    train_patch_classifier(model, x, y, x[:60], y[:60], epochs=epochs, seed=0)
    return n * epochs / (time.perf_counter() - start)


def cyclegan_rate(size: int, width: int, blocks: int, epochs: int) -> float:
    """CycleGAN steps (batch 8, both generators and critics) per second."""
    rng = np.random.default_rng(0)
    a, b = (
        rng.random((64, size, size), dtype=np.float32),
        rng.random((64, size, size), dtype=np.float32),
    )
    start = time.perf_counter()
    result = train_cyclegan(
        a, b, epochs=epochs, batch_size=8, width=width, n_blocks=blocks, d_width=width
    )
    return result.steps / (time.perf_counter() - start)


CLASSIFIERS = ((32, 8, 32), (64, 8, 64), (64, 16, 128))  # (size, width, hidden); first: baseline
CYCLEGANS = ((32, 8, 1), (64, 8, 2), (64, 16, 2))  # (size, width, blocks); first: baseline


def best_rates(settings: tuple, rate, repeats: int) -> list[float]:
    """Each setting's best rate over ``repeats`` rounds, the settings interleaved per round."""
    best = [0.0] * len(settings)
    for _ in range(repeats):
        for i, setting in enumerate(settings):
            best[i] = max(best[i], rate(*setting))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patches", type=int, default=700)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed rounds per setting (best one reported)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    # untimed warm-up: the process's one-time costs, paid before the baseline is timed
    classifier_rate(*CLASSIFIERS[0], min(args.patches, 100), 1)
    cyclegan_rate(*CYCLEGANS[0], 1)
    classifier = best_rates(
        CLASSIFIERS, lambda *c: classifier_rate(*c, args.patches, args.epochs), args.repeats
    )
    cyclegan = best_rates(CYCLEGANS, lambda *c: cyclegan_rate(*c, args.epochs), args.repeats)
    print(
        f"## share_gans receiver (`benchmarks/bench_share_gans.py --patches {args.patches} "
        f"--epochs {args.epochs} --repeats {args.repeats}`)\n"
    )
    print(
        f"Best of {args.repeats} interleaved rounds after an untimed warm-up; "
        f"load {os.getloadavg()[0]:.1f} at the end.\n"
    )
    print("| patch classifier (SGD, batch 16) | patches/s | ratio vs 32 px width 8 |")
    print("|---|---|---|")
    for (size, width, hidden), rate in zip(CLASSIFIERS, classifier, strict=True):
        ratio = rate / classifier[0]
        print(f"| {size} px, width {width}, hidden {hidden} | {rate:,.0f} | {ratio:.2f} |")
    print("\n| CycleGAN (batch 8) | steps/s | ratio vs 32 px width 8 |")
    print("|---|---|---|")
    for (size, width, blocks), rate in zip(CYCLEGANS, cyclegan, strict=True):
        ratio = rate / cyclegan[0]
        block = "block" if blocks == 1 else "blocks"
        print(f"| {size} px, width {width}, {blocks} {block} | {rate:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
