"""Contrastive losses (Li et al.), in a module of their own so that training code imports
them without torchvision (the encoders of :mod:`fedmammo.models.contrastive` need it).

:func:`nt_xent_loss` is equation 1 of the paper (SimCLR's NT-Xent, with a general positive
mask and an optional negative mask for the domain-knowledge negatives of MSCL v2 and MVCL v2);
:func:`margin_contrastive_loss` is equation 3 (CC-MLO mass matching).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedmammo.errors import ConfigError, DataError

__all__ = ["DEFAULT_MARGIN", "DEFAULT_TAU", "margin_contrastive_loss", "nt_xent_loss"]

#: NT-Xent temperature. The paper does not give it; 0.2 (MoCo v2's value) suits the small
#: batches of federated centres better than SimCLR's 0.1 at batch 4096. Sweep 0.1, 0.2, 0.5.
DEFAULT_TAU = 0.2
#: Margin of the mass-matching contrastive loss (the paper tried 5, 10, 15 and chose 10).
DEFAULT_MARGIN = 10.0


def nt_xent_loss(
    z: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    tau: float = DEFAULT_TAU,
) -> torch.Tensor:
    """NT-Xent over a batch of projections ``z`` (n, d) with boolean (n, n) pair masks.

    With cosine similarities ``s = sim(z_i, z_k) / tau``, row ``i`` with positives ``P(i)``
    contributes ``-1/|P(i)| sum_{j in P(i)} log(exp(s_ij) / sum_{k in D(i)} exp(s_ik))``
    where ``D(i) = P(i) + N(i)``; ``negatives=None`` means every ``k != i`` (the paper's
    equation 1, SimCLR). The loss is the mean over rows with at least one positive (the
    diagonal is ignored); pairs that are neither positive nor negative (e.g. another image
    of the same patient) are left out of the denominator.
    """
    n = z.shape[0]
    if z.ndim != 2 or positives.shape != (n, n):
        raise DataError(f"nt_xent_loss: z must be (n, d) and masks (n, n); got {tuple(z.shape)}")
    if tau <= 0:
        raise ConfigError(f"nt_xent_loss: temperature tau must be > 0, got {tau}")
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    pos = positives.to(device=z.device, dtype=torch.bool) & ~eye
    if negatives is None:
        den = ~eye
    else:
        neg = negatives.to(device=z.device, dtype=torch.bool) & ~eye
        if (neg & pos).any():
            raise DataError("nt_xent_loss: a pair is marked both positive and negative")
        den = pos | neg
    rows = pos.any(dim=1)
    if not bool(rows.any()):
        raise DataError("nt_xent_loss: the batch holds no positive pair")
    zn = F.normalize(z, dim=1)
    sim = (zn[rows] @ zn.T) / tau
    log_den = torch.logsumexp(sim.masked_fill(~den[rows], float("-inf")), dim=1, keepdim=True)
    log_prob = torch.where(pos[rows], sim - log_den, torch.zeros_like(sim))
    return (-log_prob.sum(dim=1) / pos[rows].sum(dim=1)).mean()


def margin_contrastive_loss(
    f1: torch.Tensor, f2: torch.Tensor, match: torch.Tensor, *, margin: float = DEFAULT_MARGIN
) -> torch.Tensor:
    """Equation 3: ``1/(2K) sum_k Y D^2 + (1 - Y) max(m - D, 0)^2``, ``D = ||f1 - f2||_2``."""
    if f1.shape != f2.shape or f1.shape[0] != match.shape[0]:
        raise DataError(f"margin_contrastive_loss: shapes {f1.shape}, {f2.shape}, {match.shape}")
    y = match.to(f1.dtype)
    d = (f1 - f2).pow(2).sum(dim=1).clamp_min(1e-12).sqrt()
    return (y * d.pow(2) + (1 - y) * (margin - d).clamp_min(0).pow(2)).sum() / (2 * len(y))
