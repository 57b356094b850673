"""DP cost on CPU: DP-SGD epoch vs plain epoch, DP-GAN discriminator/critic step vs plain.

Run: ``python benchmarks/bench_dp.py [--images 1000] [--repeats 5]``; prints a markdown
section for BENCHMARKS.md. Every workload is timed as plain, DP before (the mode fedmammo
used until issue 19) and DP after (the mode it uses now), interleaved round by round in one
process (process CPU time, so other jobs on a shared machine count less); the ratios are
medians against the plain run of the same workload. ``--opacus-modes`` adds Opacus' own
"ew", "ghost" and "functorch" modes on the classifier (Opacus' wrapped module, its loss
wrapper for ghost clipping) to show why fedmammo does not use them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmammo.privacy.accounting import CentreAccountant, PrivacyBudget
from fedmammo.privacy.dp_gan import dp_dcgan_discriminator_step, dp_wgan_gp_critic_step
from fedmammo.privacy.engine import DPSession
from fedmammo.training.runtime import keep_freed_memory

warnings.filterwarnings("ignore")
Timings = dict[str, list[float]]


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2, padding=1),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.GroupNorm(8, 32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.GroupNorm(8, 64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 2),
    )


def discriminator() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 32, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(32, 64, 4, 2, 1),
        nn.GroupNorm(8, 64),
        nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 4, 2, 1),
        nn.GroupNorm(8, 128),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(128 * 4 * 4, 1),
    )


def budget() -> PrivacyBudget:
    return PrivacyBudget(target_epsilon=None, noise_multiplier=1.0, delta=1e-5, max_grad_norm=1.0)


def session(mode: str) -> DPSession:
    return DPSession(
        budget(),
        CentreAccountant(),
        planned_steps=10_000,
        phase="bench",
        centre="A",
        seed=0,
        grad_sample_mode=mode,
    )


def interleaved(fns: dict[str, Callable[[], None]], repeats: int) -> Timings:
    """Process CPU time of each function, round-robin ``repeats`` times after a warm-up."""
    for fn in fns.values():
        fn()
    out: Timings = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            out[name].append(time.process_time() - start)
    return out


def epoch(model: nn.Module, opt, loader, backward: Callable[[torch.Tensor], None]) -> None:
    for x, y in loader:
        if len(y) == 0:
            continue
        opt.zero_grad(set_to_none=True)
        backward(nn.functional.cross_entropy(model(x), y))
        opt.step()


def _plain_backward(loss: torch.Tensor) -> None:
    loss.backward()


def _opacus_epoch(mode: str, data: TensorDataset) -> Callable[[], None]:
    """An epoch with Opacus' own wrapped module (needed by "ew") and loss wrapper ("ghost")."""
    from opacus import PrivacyEngine

    model = small_cnn()
    criterion = nn.CrossEntropyLoss()
    out = PrivacyEngine(accountant="rdp").make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        data_loader=DataLoader(data, batch_size=32),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        grad_sample_mode=mode,
        criterion=criterion,
    )
    if mode == "ghost":
        module, opt, criterion, loader = out
    else:
        module, opt, loader = out

    def run() -> None:
        for x, y in loader:
            if len(y) == 0:
                continue
            opt.zero_grad(set_to_none=True)
            criterion(module(x), y).backward()
            opt.step()

    return run


def bench_sgd(n: int, repeats: int, opacus_modes: bool) -> tuple[Timings, int]:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(n, 1, 64, 64, generator=g), torch.randint(0, 2, (n,), generator=g)
    )
    plain = small_cnn()
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.05)
    loader = DataLoader(data, batch_size=32, shuffle=True, generator=g)
    fns = {"plain": lambda: epoch(plain, plain_opt, loader, _plain_backward)}
    for mode in ("hooks", "bk"):
        s = session(mode)
        model = small_cnn()
        model, opt, dp_loader = s.attach(
            model, torch.optim.SGD(model.parameters(), lr=0.05), DataLoader(data, batch_size=32)
        )
        fns[mode] = lambda m=model, o=opt, dl=dp_loader, s=s: epoch(m, o, dl, s.backward)
    if opacus_modes:
        for mode in ("ew", "ghost", "functorch"):
            fns[f"opacus {mode}"] = _opacus_epoch(mode, data)
    return interleaved(fns, repeats), sum(p.numel() for p in plain.parameters())


def bench_gan(repeats: int, steps: int = 10, batch: int = 32) -> dict[str, Timings]:
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.rand(batch * steps, 1, 32, 32, generator=g) * 2 - 1)
    fake = torch.rand(batch, 1, 32, 32, generator=g) * 2 - 1
    ones, zeros = torch.ones(batch), torch.zeros(batch)
    real = data.tensors[0][:batch]
    plain = discriminator()
    opt = torch.optim.Adam(plain.parameters(), lr=2e-4)

    def plain_dcgan() -> None:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            y = torch.cat([ones, zeros])
            nn.functional.binary_cross_entropy_with_logits(
                plain(torch.cat([real, fake])).reshape(-1), y
            ).backward()
            opt.step()

    def plain_wgan() -> None:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            a = torch.rand(batch, 1, 1, 1)
            x_hat = (a * real + (1 - a) * fake).requires_grad_(True)
            (gx,) = torch.autograd.grad(plain(x_hat).sum(), x_hat, create_graph=True)
            gp = ((gx.flatten(1).norm(dim=1) - 1) ** 2).mean()
            (plain(fake).mean() - plain(real).mean() + 10 * gp).backward()
            opt.step()

    def dp(kind: str, mode: str, method: str = "auto") -> Callable[[], None]:
        D = discriminator()
        D, optD, _ = session(mode).attach(
            D, torch.optim.Adam(D.parameters(), lr=2e-4), DataLoader(data, batch_size=batch)
        )
        if kind == "dcgan":
            return lambda: [
                dp_dcgan_discriminator_step(D, optD, real, fake, ones, zeros) for _ in range(steps)
            ]
        return lambda: [
            dp_wgan_gp_critic_step(D, optD, real, fake, method=method) for _ in range(steps)
        ]

    return {
        "DCGAN discriminator": interleaved(
            {"plain": plain_dcgan, "hooks": dp("dcgan", "hooks"), "bk": dp("dcgan", "bk")},
            repeats,
        ),
        "WGAN-GP critic": interleaved(
            {
                "plain": plain_wgan,
                "vmap": dp("wgan", "no_op", "vmap"),
                "chain": dp("wgan", "no_op", "chain"),
            },
            repeats,
        ),
    }


def _row(label: str, t: Timings, scale: float, unit: str, before: str, after: str) -> str:
    med = {k: statistics.median(v) * scale for k, v in t.items()}
    return (
        f"| {label} | {med['plain']:.1f} {unit} | {before}: {med[before]:.1f} {unit} "
        f"({med[before] / med['plain']:.2f}x) | {after}: {med[after]:.1f} {unit} "
        f"(**{med[after] / med['plain']:.2f}x**) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--opacus-modes", action="store_true")
    parser.add_argument(
        "--no-malloc-tuning", action="store_true", help="leave glibc's heap trimming on"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tuned = False if args.no_malloc_tuning else keep_freed_memory()
    sgd, n_params = bench_sgd(args.images, args.repeats, args.opacus_modes)
    gan = bench_gan(args.repeats)
    load = os.getloadavg()
    label = f"classifier epoch ({n_params:,}-param GroupNorm CNN, {args.images} 64x64, batch 32)"
    lines = [
        "| workload | plain | DP before | DP after |",
        "| --- | ---: | ---: | ---: |",
        _row(label, sgd, 1e3, "ms", "hooks", "bk"),
    ]
    d = gan["DCGAN discriminator"]
    label = "DCGAN discriminator step (32x32, batch 32 real + 32 fake)"
    lines.append(_row(label, d, 100, "ms", "hooks", "bk"))
    w = gan["WGAN-GP critic"]
    lines.append(_row("WGAN-GP critic step (32x32, batch 32)", w, 100, "ms", "vmap", "chain"))
    print(
        f"Process CPU time, {args.threads} torch thread(s), median of {args.repeats} "
        f"interleaved runs after a warm-up; load average {load[0]:.1f} / {load[1]:.1f} on "
        f"{os.cpu_count()} CPUs; glibc heap kept: {tuned}; torch {torch.__version__}; "
        f"`{' '.join(['python', *sys.argv])}`\n"
    )
    print("\n".join(lines))
    if args.opacus_modes:
        med = {k: statistics.median(v) for k, v in sgd.items()}
        print("\nClassifier epoch, every mode (ratio to plain):\n")
        print("| mode | " + " | ".join(med) + " |")
        print("|---" * (len(med) + 1) + "|")
        print(
            "| DP / plain | " + " | ".join(f"{v / med['plain']:.2f}x" for v in med.values()) + " |"
        )


if __name__ == "__main__":
    main()
