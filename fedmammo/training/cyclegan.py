"""CycleGAN training between two unpaired patch domains, and translation (no Flower here).

Used by the translation arm (CycleGAN-UDA paper): centre A trains a CycleGAN between its own lesion
patches (domain A) and synthetic patches sampled from B's shared generator (domain B), then
translates B's synthetic patches into A's style with ``G_ba``; no pixel leaves any centre.

Losses follow Zhu et al. (2017): least-squares adversarial losses, L1 cycle consistency weighted
by ``lambda_cycle`` and L1 identity loss weighted by ``lambda_identity * lambda_cycle``; Adam
(2e-4, betas (0.5, 0.999)). The history buffer of generated images (pool of 50) is not used:
with small patch sets it adds little and keeps the step stateless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedmammo.errors import DataError
from fedmammo.models.cyclegan import CycleGanDescription, build_cyclegan, build_translator
from fedmammo.progress import progress as show_progress
from fedmammo.training.state import StateDict, cpu_state

__all__ = ["CycleGanResult", "train_cyclegan", "translate"]

logger = logging.getLogger(__name__)


@dataclass
class CycleGanResult:
    """Trained CycleGAN: generator states and a per-epoch loss history (the discriminators
    are dropped: nothing uses them after training)."""

    description: CycleGanDescription
    g_ab_state: StateDict
    g_ba_state: StateDict
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0

    def generator(self, direction: str = "ba", *, device: str | torch.device = "cpu") -> nn.Module:
        """Return ``G_ab`` (``"ab"``: A -> B) or ``G_ba`` (``"ba"``: B -> A) in eval mode."""
        if direction not in ("ab", "ba"):
            raise DataError(f"CycleGAN direction must be 'ab' or 'ba', got {direction!r}")
        gen = build_translator(self.description)
        gen.load_state_dict(self.g_ab_state if direction == "ab" else self.g_ba_state)
        return gen.to(device).eval()


def _as_tensor(patches: np.ndarray, name: str) -> torch.Tensor:
    arr = np.asarray(patches)
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2] or arr.shape[0] < 1:
        raise DataError(f"CycleGAN {name}: expected patches shaped (N, S, S), got {arr.shape}")
    if float(arr.min()) < 0.0 or float(arr.max()) > 1.0:
        raise DataError(f"CycleGAN {name}: patches must be in [0, 1]; rescale them first")
    return torch.from_numpy(arr.astype(np.float32)).unsqueeze(1) * 2.0 - 1.0


def _lsgan(scores: torch.Tensor, target: float) -> torch.Tensor:
    return F.mse_loss(scores, torch.full_like(scores, target))


def train_cyclegan(
    domain_a: np.ndarray,
    domain_b: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 4,
    lr: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    lambda_cycle: float = 10.0,
    lambda_identity: float = 0.5,
    seed: int = 0,
    device: str | torch.device = "cpu",
    width: int = 32,
    n_blocks: int = 3,
    d_width: int = 32,
    d_layers: int | None = None,
    progress: bool = False,
) -> CycleGanResult:
    """Train a CycleGAN between unpaired patch sets ``(N, S, S)`` in [0, 1] of equal size S.

    An epoch is ``ceil(max(N_a, N_b) / batch_size)`` steps on random unpaired batches.
    ``d_layers`` defaults to the deepest PatchGAN the patch size allows, at most 3.
    """
    data_a, data_b = _as_tensor(domain_a, "domain_a"), _as_tensor(domain_b, "domain_b")
    size = int(data_a.shape[-1])
    if data_b.shape[-1] != size:
        raise DataError(f"CycleGAN domains differ in patch size: {size} vs {data_b.shape[-1]}")
    if d_layers is None:
        d_layers = max(1, min(3, (size // 4).bit_length() - 1))
    desc = CycleGanDescription(size, width, n_blocks, d_width, d_layers)
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nets = [net.to(device).train() for net in build_cyclegan(desc)]
    g_ab, g_ba, d_a, d_b = nets
    opt_g = torch.optim.Adam([*g_ab.parameters(), *g_ba.parameters()], lr=lr, betas=betas)
    opt_d = torch.optim.Adam([*d_a.parameters(), *d_b.parameters()], lr=lr, betas=betas)
    rng = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-max(len(data_a), len(data_b)) // batch_size)
    result = CycleGanResult(desc, {}, {})
    epoch_iter = show_progress(
        range(1, epochs + 1), "CycleGAN epochs", interactive=True if progress else None
    )
    for epoch in epoch_iter:
        sums = dict.fromkeys(("d_loss", "g_loss", "cycle_loss", "identity_loss"), 0.0)
        for _ in range(steps_per_epoch):
            real_a = data_a[torch.randint(len(data_a), (batch_size,), generator=rng)].to(device)
            real_b = data_b[torch.randint(len(data_b), (batch_size,), generator=rng)].to(device)
            # generators (critics fixed)
            opt_g.zero_grad(set_to_none=True)
            fake_b, fake_a = g_ab(real_a), g_ba(real_b)
            adv = _lsgan(d_b(fake_b), 1.0) + _lsgan(d_a(fake_a), 1.0)
            cycle = F.l1_loss(g_ba(fake_b), real_a) + F.l1_loss(g_ab(fake_a), real_b)
            identity = F.l1_loss(g_ab(real_b), real_b) + F.l1_loss(g_ba(real_a), real_a)
            loss_g = adv + lambda_cycle * (cycle + lambda_identity * identity)
            loss_g.backward()
            opt_g.step()
            # critics
            opt_d.zero_grad(set_to_none=True)
            loss_d = 0.5 * (
                _lsgan(d_a(real_a), 1.0)
                + _lsgan(d_a(fake_a.detach()), 0.0)
                + _lsgan(d_b(real_b), 1.0)
                + _lsgan(d_b(fake_b.detach()), 0.0)
            )
            loss_d.backward()
            opt_d.step()
            result.steps += 1
            for key, value in zip(sums, (loss_d, adv, cycle, identity), strict=True):
                sums[key] += float(value.detach()) / steps_per_epoch
        result.history.append({"epoch": float(epoch), **sums})
    result.g_ab_state, result.g_ba_state = cpu_state(g_ab), cpu_state(g_ba)
    logger.info("CycleGAN: %d epochs, %d steps", epochs, result.steps)
    return result


def translate(
    generator: nn.Module,
    patches: np.ndarray,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Translate patches ``(N, S, S)`` in [0, 1] with a CycleGAN generator; returns [0, 1]."""
    data = _as_tensor(patches, "translate")
    if device is None:
        device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    out = []
    with torch.no_grad():
        for batch in data.split(batch_size):
            fake = generator(batch.to(device))[:, 0]
            out.append(((fake + 1.0) / 2.0).clamp(0.0, 1.0).cpu().numpy())
    generator.train(was_training)
    return np.concatenate(out).astype(np.float32)
