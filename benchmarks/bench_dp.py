"""DP cost on CPU: DP-SGD epoch vs plain epoch, DP-GAN discriminator/critic step vs plain.

Run: ``python benchmarks/bench_dp.py [--images 1000] [--repeats 3]``; prints a markdown section
for BENCHMARKS.md. Ratios are against baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmammo.privacy.accounting import CentreAccountant, PrivacyBudget
from fedmammo.privacy.dp_gan import dp_dcgan_discriminator_step, dp_wgan_gp_critic_step
from fedmammo.privacy.engine import DPSession

warnings.filterwarnings("ignore")


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


def timed(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.process_time()  # CPU time: robust to other jobs on a shared machine
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def epoch(model: nn.Module, opt, loader) -> None:
    for x, y in loader:
        if len(y) == 0:
            continue
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def bench_sgd(n: int, repeats: int) -> tuple[float, float, int]:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(n, 1, 64, 64, generator=g), torch.randint(0, 2, (n,), generator=g)
    )
    plain = small_cnn()
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.05)
    loader = DataLoader(data, batch_size=32, shuffle=True, generator=g)
    t_plain = timed(lambda: epoch(plain, plain_opt, loader), repeats)
    model = small_cnn()
    session = DPSession(
        budget(), CentreAccountant(), planned_steps=10_000, phase="bench", centre="A", seed=0
    )
    model, opt, dp_loader = session.attach(
        model, torch.optim.SGD(model.parameters(), lr=0.05), DataLoader(data, batch_size=32)
    )
    t_dp = timed(lambda: epoch(model, opt, dp_loader), repeats)
    session.detach()
    return t_plain, t_dp, sum(p.numel() for p in plain.parameters())


def bench_gan(repeats: int, steps: int = 10, batch: int = 32) -> dict[str, tuple[float, float]]:
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.rand(batch * steps, 1, 32, 32, generator=g) * 2 - 1)
    fake = torch.rand(batch, 1, 32, 32, generator=g) * 2 - 1
    ones, zeros = torch.ones(batch), torch.zeros(batch)
    out: dict[str, tuple[float, float]] = {}

    plain = discriminator()
    opt = torch.optim.Adam(plain.parameters(), lr=2e-4)
    real = data.tensors[0][:batch]

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

    for kind, plain_fn in [("DCGAN discriminator", plain_dcgan), ("WGAN-GP critic", plain_wgan)]:
        mode = "hooks" if kind.startswith("DCGAN") else "no_op"
        D = discriminator()
        session = DPSession(
            budget(),
            CentreAccountant(),
            planned_steps=10_000,
            phase="bench",
            centre="A",
            seed=0,
            grad_sample_mode=mode,
        )
        D, optD, loader = session.attach(
            D, torch.optim.Adam(D.parameters(), lr=2e-4), DataLoader(data, batch_size=batch)
        )

        def dp_fn(D=D, optD=optD, kind=kind) -> None:
            for _ in range(steps):
                if kind.startswith("DCGAN"):
                    dp_dcgan_discriminator_step(D, optD, real, fake, ones, zeros)
                else:
                    dp_wgan_gp_critic_step(D, optD, real, fake)

        out[kind] = (timed(plain_fn, repeats) / steps, timed(dp_fn, repeats) / steps)
        session.detach()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t_plain, t_dp, n_params = bench_sgd(args.images, args.repeats)
    gan = bench_gan(args.repeats)
    lines = [
        "## Differential privacy (Opacus) on CPU",
        "",
        f"Process CPU time, torch threads: {args.threads}; median of {args.repeats} runs after "
        "a warm-up; DP "
        "noise multiplier 1.0, clipping 1.0, Poisson sampling, hooks-based per-sample grads.",
        "",
        "| workload | plain | DP | DP / plain |",
        "| --- | ---: | ---: | ---: |",
        f"| classifier epoch ({n_params:,}-param GroupNorm CNN, {args.images} 64x64 images, "
        f"batch 32) | {t_plain:.2f} s | {t_dp:.2f} s | {t_dp / t_plain:.2f}x |",
    ]
    for kind, (plain, dp) in gan.items():
        how = "one batch real+fake" if kind.startswith("DCGAN") else "torch.func vmap(grad)"
        lines.append(
            f"| {kind} step (32x32, batch 32, {how}) | {plain * 1e3:.1f} ms | "
            f"{dp * 1e3:.1f} ms | {dp / plain:.2f}x |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
