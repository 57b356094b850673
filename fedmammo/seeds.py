"""Seeds derived from names: stable across processes, machines and Python versions (SHA-256,
not ``hash()``), with no shared RNG state, so a centre and the server derive the same seed for
the same (seed, centre, arm, round) without telling each other."""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed", "evaluation_seed", "hashed_int"]


def hashed_int(text: str) -> int:
    """The first 4 bytes of ``text``'s SHA-256 as an unsigned little-endian int."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (seed, centre, arm, round): no shared RNG state."""
    return hashed_int("|".join(map(str, parts))) & 0x7FFFFFFF


def evaluation_seed(seed: int, centre: str) -> int:
    """The seed of a test evaluation at ``centre``: not the arm's, so every arm tested there
    sees the same bootstrap resamples (and a paired comparison repeats each arm's own CI)."""
    return derive_seed(seed, centre, "eval")
