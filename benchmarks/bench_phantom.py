"""Phantom throughput: images per second at 64 and 256 pixels, against bare DICOM writing.

Usage: ``python benchmarks/bench_phantom.py [--patients 100] [--heights 64 256]``

For each image height it times ``generate_centre`` on a two-vendor profile (4 images per
patient, manifest, lesions.json and contact sheet included) and, as the baseline measured in
the same run, writing the same number of random images of that size with a bare
``pydicom.dcmwrite`` (no anatomy, no styles). Before the timed loop, one tiny centre (two
patients) and a few bare images are written untimed, so that the first height timed does not
carry the process's one-time costs. A height may be given twice (``--heights 64 64``): each
gets its own row. It prints a Markdown section for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from fedmammo.config import CentreProfile
from fedmammo.data.phantom import generate_centre
from fedmammo.data.phantom_anatomy import image_shape
from fedmammo.data.phantom_dicom import ImageMeta, build_dataset
from fedmammo.data.phantom_styles import STYLES

PROFILE = {
    "name": "bench",
    "source": "B",
    "data": {
        "synthetic": {
            "segments": [
                {"manufacturer": "Ma", "patients": 50, "prevalence": 0.3, "lesion_prevalence": 0.3},
                {"manufacturer": "Mb", "patients": 50, "prevalence": 0.3, "lesion_prevalence": 0.3},
            ]
        }
    },
}


def _bare_write(n: int, height: int, out: Path) -> float:
    """Seconds to write ``n`` random images with pydicom.dcmwrite (one Dataset each)."""
    rng = np.random.default_rng(0)
    shape = image_shape(height)
    style = STYLES["ma"]
    start = time.perf_counter()
    for i in range(n):
        pixels = rng.integers(0, 4096, shape, dtype=np.uint16)
        meta = ImageMeta(
            f"p{i}", "2.25.1", "2.25.2", f"2.25.{i + 10}", "L", "CC", 57, "Ma", "20200101", 1, 0.9
        )
        pydicom.dcmwrite(
            out / f"{i}.dcm", build_dataset(pixels, style, meta), enforce_file_format=True
        )
    return time.perf_counter() - start


def main() -> None:
    """Run the benchmark and print the BENCHMARKS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--heights", type=int, nargs="+", default=[64, 256])
    args = parser.parse_args()
    profile = CentreProfile.model_validate(PROFILE)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # untimed warm-up: one tiny centre and a few bare images at the first height
        generate_centre(profile, Path(tmp) / "warmup", patients=2, image_height=args.heights[0])
        (Path(tmp) / "warmup-bare").mkdir()
        _bare_write(4, args.heights[0], Path(tmp) / "warmup-bare")
        for i, height in enumerate(args.heights):
            out = Path(tmp) / f"phantom{i}-{height}"
            start = time.perf_counter()
            manifest = generate_centre(profile, out, patients=args.patients, image_height=height)
            phantom_s = time.perf_counter() - start
            n = len(manifest)
            bare = Path(tmp) / f"bare{i}-{height}"
            bare.mkdir()
            bare_s = _bare_write(n, height, bare)
            rows.append((height, image_shape(height), n, n / phantom_s, n / bare_s))
    print("## The phantom (`benchmarks/bench_phantom.py`)\n")
    print(
        f"`{' '.join(['python', *sys.argv])}`: {platform.processor() or platform.machine()}, "
        f"1 process, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"load {os.getloadavg()[0]:.1f} at the end; baseline: bare pydicom.dcmwrite of random "
        "pixels, same count and size, same run.\n"
    )
    print("| image size | images | phantom images/s | bare dcmwrite images/s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for _height, shape, n, rate, base in rows:
        print(f"| {shape[0]}x{shape[1]} | {n} | {rate:.0f} | {base:.0f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
