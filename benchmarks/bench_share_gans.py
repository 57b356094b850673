"""Speed of the share_gans receiver's work: patch-classifier epochs and CycleGAN steps.

    python benchmarks/bench_share_gans.py [--patches 700] [--epochs 2]

Prints a markdown section for BENCHMARKS.md. Rates are ratios against the quick scenario's
setting (32-px patches, width-8 CNN; 32-px width-8 CycleGAN) measured in the same run.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patches", type=int, default=700)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"## share_gans receiver (`benchmarks/bench_share_gans.py --patches {args.patches}`)\n")
    print("| patch classifier (SGD, batch 16) | patches/s | ratio vs 32 px width 8 |")
    print("|---|---|---|")
    base = None
    for size, width, hidden in ((32, 8, 32), (64, 8, 64), (64, 16, 128)):
        rate = classifier_rate(size, width, hidden, args.patches, args.epochs)
        base = base or rate
        print(f"| {size} px, width {width}, hidden {hidden} | {rate:,.0f} | {rate / base:.2f} |")
    print("\n| CycleGAN (batch 8) | steps/s | ratio vs 32 px width 8 |")
    print("|---|---|---|")
    base = None
    for size, width, blocks in ((32, 8, 1), (64, 8, 2), (64, 16, 2)):
        rate = cyclegan_rate(size, width, blocks, args.epochs)
        base = base or rate
        print(f"| {size} px, width {width}, {blocks} blocks | {rate:.2f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
