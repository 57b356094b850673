"""Benchmark patch extraction, GAN training steps and generator sampling on CPU.

Prints a markdown section for BENCHMARKS.md. Ratios are against baselines measured in the same
run: build_patch_set against bare extract_patch calls on the same boxes, every GAN setting
against DCGAN at 64 px.

    python benchmarks/bench_gan.py [--width 64] [--steps 4] [--images 40]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import pandas as pd
import torch

from fedmammo.data.manifest import encode_lesions
from fedmammo.data.patches import build_patch_set, extract_patch
from fedmammo.models.gans import sample_generator
from fedmammo.training.gan import train_dcgan, train_wgan_gp


def synthetic_centre(n_images: int, seed: int = 0) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Half lesion images (two lesions each), half healthy; 256 x 200 px, breast on the right."""
    rng = np.random.default_rng(seed)
    images: dict[str, np.ndarray] = {}
    rows = []
    for i in range(n_images):
        image = np.zeros((256, 200), dtype=np.float32)
        image[:, 60:] = rng.uniform(0.3, 0.7, size=(256, 140)).astype(np.float32)
        lesions = []
        if i % 2 == 0:
            for kind in ("mass", "calcification"):
                x0, y0 = int(rng.integers(70, 170)), int(rng.integers(10, 220))
                size = int(rng.integers(8, 30))
                lesions.append({"kind": kind, "box": [x0, y0, x0 + size, y0 + size]})
        images[f"img{i}"] = image
        rows.append({"image_id": f"img{i}", "lesions": encode_lesions(lesions)})
    frame = pd.DataFrame(rows)
    frame["pixel_spacing"] = 0.14
    return images, frame


def _timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _bare_extract(boxes: list[tuple[np.ndarray, np.ndarray]], size: int) -> None:
    rng = np.random.default_rng(0)
    for image, box in boxes:
        extract_patch(image, box, out_size=size, rng=rng)


def bench_patches(n_images: int) -> list[list[str]]:
    images, rows = synthetic_centre(n_images)
    table = []
    for size in (64, 128):
        result = build_patch_set(images, rows, out_size=size, augment=True)
        n = len(result)
        full = _timed(lambda s=size: build_patch_set(images, rows, out_size=s, augment=True), 3)
        boxes = [(images[i], b) for i, b in zip(result.image_ids, result.boxes, strict=True)]

        bare_time = _timed(lambda s=size, b=boxes: _bare_extract(b, s), 3)
        table.append(
            [
                f"{size}",
                f"{n}",
                f"{n / full:,.0f}",
                f"{n / bare_time:,.0f}",
                f"{bare_time / full:.2f}",
            ]
        )
    return table


def bench_gans(width: int, steps: int) -> list[list[str]]:
    rng = np.random.default_rng(0)
    batch = 16
    rows = []
    baseline = None
    for size in (64, 128):
        for kind in ("dcgan", "wgan_gp"):
            n_batches = steps if kind == "dcgan" else 5 * steps
            data = rng.uniform(0, 1, size=(batch * n_batches, size, size)).astype(np.float32)
            train = train_dcgan if kind == "dcgan" else train_wgan_gp
            common = {"epochs": 1, "batch_size": batch, "width": width}
            if kind == "dcgan":
                common["snapshot_every"] = None
            train(data[: batch * 2], **common)  # warm-up
            start = time.perf_counter()
            result = train(data, **common)
            elapsed = time.perf_counter() - start
            g_rate = result.generator_steps / elapsed
            baseline = baseline or g_rate
            sample_time = _timed(
                lambda r=result: sample_generator(r.description, r.sampling_states(), 256), 2
            )
            rows.append(
                [
                    kind,
                    f"{size}",
                    f"{result.critic_steps}/{result.generator_steps}",
                    f"{g_rate:.2f}",
                    f"{result.critic_steps / elapsed:.2f}",
                    f"{g_rate / baseline:.2f}",
                    f"{256 / sample_time:,.0f}",
                ]
            )
    return rows


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64, help="GAN base width (seed: 64)")
    parser.add_argument("--steps", type=int, default=4, help="generator steps per setting")
    parser.add_argument("--images", type=int, default=40, help="synthetic images for patches")
    args = parser.parse_args()
    torch.manual_seed(0)
    patch_rows = bench_patches(args.images)
    gan_rows = bench_gans(args.width, args.steps)
    print("## GAN sharing: patches and generators (CPU)\n")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"`python benchmarks/bench_gan.py --width {args.width} --steps {args.steps}`.\n"
    )
    print(
        "Patch extraction (`build_patch_set`, augment on, synthetic 256x200 images, half "
        "with two lesions; baseline = bare `extract_patch` on the same boxes):\n"
    )
    header = ["out size", "patches", "patches/s", "baseline patches/s", "ratio"]
    print(_markdown(header, patch_rows) + "\n")
    print(
        f"GAN training (batch 16, width {args.width}; one generator step = 1 discriminator "
        "step for DCGAN, 5 critic steps for WGAN-GP; ratio against DCGAN 64 px) and sampling "
        "(256 patches):\n"
    )
    header = [
        "GAN",
        "patch",
        "critic/gen steps",
        "gen steps/s",
        "critic steps/s",
        "ratio",
        "sampled patches/s",
    ]
    print(_markdown(header, gan_rows))


if __name__ == "__main__":
    main()
