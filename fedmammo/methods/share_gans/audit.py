"""Audits of a generator a centre is about to share: GAN-Leaks and LOGAN, inside the centre.

:func:`audit_generator` is called by ``train.generator``: GAN-Leaks (black box: distance of
each real patch to the nearest synthetic sample) and LOGAN (white box: the centre's own
discriminator's score, which never leaves the centre) on its training lesion patches vs its
held-out ones.
"""

from __future__ import annotations

import numpy as np
import torch

from fedmammo.errors import DataError
from fedmammo.models.gans import GeneratorDescription, build_discriminator
from fedmammo.privacy.audit import gan_leaks_attack, logan_attack

__all__ = ["GENERATOR_ATTACKS", "audit_generator"]

#: Attacks on a shared generator, in the order of :func:`audit_generator`'s results.
GENERATOR_ATTACKS = ("gan_leaks", "logan")


@torch.no_grad()
def _discriminator_scores(
    desc: GeneratorDescription, state: dict, patches: np.ndarray, device: torch.device | str
) -> np.ndarray:
    disc = build_discriminator(
        desc.kind, patch_size=desc.patch_size, width=desc.width, norm=desc.d_norm
    )
    disc.load_state_dict(state)
    disc.to(device).eval()
    x = torch.from_numpy(np.asarray(patches, np.float32)).unsqueeze(1) * 2.0 - 1.0
    return np.concatenate([disc(b.to(device)).reshape(-1).cpu().numpy() for b in x.split(256)])


def audit_generator(
    desc: GeneratorDescription,
    discriminator_state: dict,
    members: np.ndarray,
    nonmembers: np.ndarray,
    synthetic: np.ndarray,
    *,
    epsilon: float | None = None,
    delta: float | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, dict[str, float]]:
    """GAN-Leaks and LOGAN attack results on patches ``(N, S, S)`` in [0, 1], per attack.

    Members are the generator's training patches, non-members held-out patches of the same
    centre. Each result holds ``auc``, ``tpr_at_1pct_fpr`` at ``fpr_reached``, the two
    counts, ``epsilon_lower_95`` (the epsilon the attack proves) and, with ``epsilon``, the TPR
    bound at 1% FPR that (epsilon, delta)-DP implies.
    """
    if len(members) < 2 or len(nonmembers) < 2:
        raise DataError(
            f"generator audit: needs at least 2 member and 2 held-out patches, got "
            f"{len(members)} and {len(nonmembers)}"
        )
    scores = [
        _discriminator_scores(desc, discriminator_state, x, device) for x in (members, nonmembers)
    ]
    results = {
        "gan_leaks": gan_leaks_attack(members, nonmembers, synthetic),
        "logan": logan_attack(*scores),
    }
    out = {}
    for name, r in results.items():
        fields = r.to_dict(epsilon=epsilon, delta=delta)
        del fields["attack"]  # the key of out
        out[name] = {"auc": fields.pop("attack_auc"), **fields}
    return out
