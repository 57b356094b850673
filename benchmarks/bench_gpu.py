"""Training throughput on a GPU: images/s per method and the peak GPU memory of each.

    python benchmarks/bench_gpu.py [--size 128] [--images 512] [--device cuda]

Every method runs once as a warm-up, then is timed (wall clock, CUDA synchronised) in
float32 and with the GPU settings of :meth:`Runtime.for_gpu` (bf16 autocast where the GPU
has it, else fp16 with a scaler; channels_last; pinned memory; cuDNN benchmark). Without a
CUDA device it prints why and exits 0; ``--device cpu`` runs the same code on the CPU as a
smoke test (tiny sizes only).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedmammo.models.mtl import MultiTaskNet
from fedmammo.models.registry import build_model
from fedmammo.privacy.accounting import CentreAccountant, PrivacyBudget
from fedmammo.privacy.engine import DPSession
from fedmammo.training.classifier import train_classifier
from fedmammo.training.gan import train_dcgan, train_wgan_gp
from fedmammo.training.mtl import MultiTaskDataset, collate_mtl, train_mtl
from fedmammo.training.runtime import Runtime, peak_memory, release_memory


def _params(batch: int) -> SimpleNamespace:
    return SimpleNamespace(
        epochs=1,
        batch_size=batch,
        steps_per_epoch=None,
        optimizer="adam",
        lr=1e-3,
        momentum=0.9,
        weight_decay=0.0,
        sampler="balanced_labels",
        augment=True,
    )


def _dp() -> DPSession:
    b = PrivacyBudget(target_epsilon=None, noise_multiplier=1.0, delta=1e-5, max_grad_norm=1.0)
    return DPSession(b, CentreAccountant(), planned_steps=10_000, phase="b", centre="A", seed=0)


def methods(n: int, size: int, batch: int) -> dict[str, tuple[int, Callable[[Runtime], None]]]:
    """name -> (images per call, fn(runtime))."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    images = TensorDataset(torch.rand(n, 1, size, size, generator=g), labels)
    segments = ["a", "b"] * (n // 2)
    patch = min(size, 64)
    patches = np.random.default_rng(0).uniform(0, 1, (n, patch, patch)).astype(np.float32)
    targets = {"malignancy": (np.arange(n) % 2), "density": (np.arange(n) % 4)}
    unc = {t: np.zeros(n, dtype=np.float32) for t in targets}
    mtl_data = MultiTaskDataset(torch.rand(n, size, size, generator=g).numpy(), targets, unc)

    def classifier(run: Runtime, dp: bool) -> None:
        torch.manual_seed(0)
        model = build_model("mammo_cnn", width=16, depth=4, norm="group")
        train_classifier(
            model,
            images,
            labels.numpy(),
            segments,
            params=_params(batch),
            seed=0,
            runtime=run,
            privacy=_dp() if dp else None,
        )

    def gan(run: Runtime, kind: str, dp: bool) -> None:
        train = train_dcgan if kind == "dcgan" else train_wgan_gp
        extra = {"snapshot_every": None} if kind == "dcgan" else {}
        train(
            patches,
            epochs=1,
            batch_size=batch,
            width=32,
            runtime=run,
            privacy=_dp() if dp else None,
            **extra,
        )

    def mtl(run: Runtime) -> None:
        torch.manual_seed(0)
        model = MultiTaskNet(widths=(16, 32, 64, 128), tasks={"malignancy": 2, "density": 4})
        loader = DataLoader(mtl_data, batch_size=batch, collate_fn=collate_mtl)
        train_mtl(model, loader, epochs=1, lr=1e-3, runtime=run)

    return {
        "classifier (mammo_cnn)": (n, lambda r: classifier(r, False)),
        "classifier, DP (bk)": (n, lambda r: classifier(r, True)),
        f"DCGAN ({patch} px)": (n, lambda r: gan(r, "dcgan", False)),
        f"DCGAN, DP ({patch} px)": (n, lambda r: gan(r, "dcgan", True)),
        f"WGAN-GP ({patch} px)": (n, lambda r: gan(r, "wgan_gp", False)),
        f"WGAN-GP, DP ({patch} px)": (n, lambda r: gan(r, "wgan_gp", True)),
        "multi-task (MultiTaskNet)": (n, mtl),
    }


def timed(fn: Callable[[Runtime], None], run: Runtime) -> tuple[float, float]:
    """(seconds, peak MB) of one call after a warm-up call."""
    fn(run)
    device = run.torch_device
    release_memory(device)
    with peak_memory(device) as peak:
        start = time.perf_counter()
        fn(run)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    release_memory(device)
    return seconds, peak["peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=128, help="image side (px)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device on this machine; nothing to measure (skipped).")
        return
    device = args.device
    fast_amp = None
    if device.startswith("cuda"):
        fast_amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = "CPU (smoke test)"
    plain = Runtime(device)
    fast = Runtime.for_gpu(device, amp=fast_amp) if device != "cpu" else Runtime(device)
    print(f"## GPU throughput: {name}, torch {torch.__version__}\n")
    print(f"`{' '.join(['python', *sys.argv])}`; {args.images} images of {args.size} px.\n")
    print(f"| method | float32 images/s | peak MB | {fast_amp or 'fast'} images/s | peak MB |")
    print("|---|---:|---:|---:|---:|")
    for label, (count, fn) in methods(args.images, args.size, args.batch).items():
        fast_run = fast
        if "DP" in label and fast.amp == "fp16":
            fast_run = Runtime.for_gpu(device, amp=None)  # DP refuses the fp16 loss scaler
        if "GAN" in label and fast.amp == "fp16":
            fast_run = Runtime.for_gpu(device, amp=None)
        t32, m32 = timed(fn, plain)
        tf, mf = timed(fn, fast_run)
        print(f"| {label} | {count / t32:,.0f} | {m32:,.0f} | {count / tf:,.0f} | {mf:,.0f} |")


if __name__ == "__main__":
    main()
