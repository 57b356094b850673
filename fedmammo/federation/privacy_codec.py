"""The ``privacy`` record of a DP round's reply: hyper-parameters and epsilons, never data.

Centre side :func:`encode_privacy` packs a :class:`~fedmammo.privacy.engine.DPSession`'s
phase (noise multiplier, sample rate, steps, delta, clipping norm, epsilon and the accountant
history ``[[sigma, q, steps], ...]``, chunked: egress allows lists of up to 16 items); server
side :func:`decode_privacy` turns it into a privacy.json entry.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord

from fedmammo.privacy.accounting import PrivacyUsageError
from fedmammo.privacy.engine import DPSession

__all__ = ["decode_privacy", "encode_privacy", "pack_history", "unpack_history"]

_CHUNK = 15  # history values per config entry (egress allows lists of up to 16 items)


def pack_history(prefix: str, history: list[list[Any]]) -> dict[str, list[float]]:
    """``[[sigma, q, steps], ...]`` as config entries ``prefix.i`` of at most 15 floats."""
    flat = [float(v) for entry in history for v in entry[:3]]
    out = {f"{prefix}.{i // _CHUNK}": flat[i : i + _CHUNK] for i in range(0, len(flat), _CHUNK)}
    out[f"{prefix}.n"] = [float(len(history))]
    return out


def unpack_history(record: Any, prefix: str) -> list[list[float]]:
    """Inverse of :func:`pack_history` (steps as ints)."""
    n = int(record[f"{prefix}.n"][0]) if f"{prefix}.n" in record else 0
    flat: list[float] = []
    i = 0
    while f"{prefix}.{i}" in record:
        flat += [float(v) for v in record[f"{prefix}.{i}"]]
        i += 1
    entries = [flat[k : k + 3] for k in range(0, len(flat), 3)]
    if len(entries) != n:
        raise PrivacyUsageError(f"privacy record: {prefix} has {len(entries)} entries, not {n}")
    return [[s, q, int(round(t))] for s, q, t in entries]


def encode_privacy(session: DPSession, *, ledger: str, round_steps: int) -> ConfigRecord:
    """Hyper-parameters and epsilons of a DP round (nothing about any image)."""
    acc, budget, phase = session.accountant, session.budget, session.phase
    if acc.segment_history:
        raise PrivacyUsageError("per-segment (periodic) ledgers are not reported by this codec")
    plan = acc.plans.get(phase, {})
    rec: dict[str, Any] = {
        "accountant": acc.mechanism,
        "ledger": ledger,
        "phase": phase,
        "delta": float(budget.delta),
        "epsilon": float(acc.phase_epsilon(phase, budget.delta)),
        "ledger-epsilon": float(acc.epsilon(budget.delta)),
        "max-grad-norm": float(budget.max_grad_norm),
        "noise-multiplier": float(session.noise_multiplier or 0.0),
        "sample-rate": float(session.sample_rate or 0.0),
        "planned-steps": float(plan.get("planned_steps", session.planned_steps)),
        "round-steps": int(round_steps),
    }
    if budget.target_epsilon is not None:
        rec["target-epsilon"] = float(budget.target_epsilon)
    rec.update(pack_history("history", acc.phases.get(phase, [])))
    rec.update(pack_history("ledger-history", acc.history))
    return ConfigRecord(rec)


def decode_privacy(record: Any) -> dict[str, Any]:
    """A reply's ``privacy`` record as a privacy.json entry (server side)."""
    out = {
        "accountant": str(record["accountant"]),
        "ledger": str(record["ledger"]),
        "phase": str(record["phase"]),
        "delta": float(record["delta"]),
        "epsilon": float(record["epsilon"]),
        "max_grad_norm": float(record["max-grad-norm"]),
        "history": unpack_history(record, "history"),
        "ledger_epsilon": float(record["ledger-epsilon"]),
        "ledger_history": unpack_history(record, "ledger-history"),
        "noise_multiplier": float(record["noise-multiplier"]),
        "sample_rate": float(record["sample-rate"]),
        "planned_steps": int(record["planned-steps"]),
        "round_steps": int(record["round-steps"]),
        "target_epsilon": float(record["target-epsilon"]) if "target-epsilon" in record else None,
    }
    return out
