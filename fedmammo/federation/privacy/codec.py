"""The ``privacy`` record of a DP round's reply: hyper-parameters and epsilons, never data.

Centre side :func:`encode_privacy` packs a :class:`~fedmammo.privacy.engine.DPSession`'s
phase (noise multiplier, sample rate, steps, delta, clipping norm, epsilon and the accountant
history ``[[sigma, q, steps], ...]``, chunked: egress allows lists of up to 16 items); server
side :func:`decode_privacy` turns it into a privacy.json entry.

Periodic ledgers (honest periodic sampling: each step Poisson-samples one segment, accounted
per segment, :mod:`fedmammo.privacy.periodic`) add, per segment ``i`` (names in
``segments.*``): ``segment-history.i`` (this phase's steps of that segment) and
``ledger-segment-history.i`` (the ledger's), and the ledger's epsilon per segment
(``segment-epsilons.*``). There ``history`` / ``ledger-history`` keep only steps that touched
every example, ``epsilon`` / ``ledger-epsilon`` are the maximum over segments of the shared
history composed with that segment's, and ``sampling`` is ``"poisson-periodic"``.

A session whose batches were not Poisson-sampled (fixed periodic or quota batches) is never
encoded: its epsilon would not hold (:class:`PrivacyUsageError`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord

from fedmammo.privacy.accounting import PrivacyUsageError

if TYPE_CHECKING:  # the engine loads Opacus: a centre without DP never needs it
    from fedmammo.privacy.engine import DPSession

__all__ = ["decode_privacy", "encode_privacy", "pack_history", "unpack_history"]

PERIODIC_SAMPLING = "poisson-periodic"

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


def _pack_list(prefix: str, values: list[Any]) -> dict[str, list[Any]]:
    out = {f"{prefix}.{i // _CHUNK}": values[i : i + _CHUNK] for i in range(0, len(values), _CHUNK)}
    out[f"{prefix}.n"] = [float(len(values))]
    return out


def _unpack_list(record: Any, prefix: str) -> list[Any]:
    n = int(record[f"{prefix}.n"][0])
    values: list[Any] = []
    i = 0
    while f"{prefix}.{i}" in record:
        values += list(record[f"{prefix}.{i}"])
        i += 1
    if len(values) != n:
        raise PrivacyUsageError(f"privacy record: {prefix} has {len(values)} items, not {n}")
    return values


def _check_poisson(session: DPSession) -> None:
    from fedmammo.privacy.engine import _CountingPoissonSampler
    from fedmammo.privacy.label_sampling import LabelPoissonSampler
    from fedmammo.privacy.periodic import PoissonPeriodicSampler

    sampler = session._sampler
    if sampler is not None and not isinstance(
        sampler, (_CountingPoissonSampler, LabelPoissonSampler, PoissonPeriodicSampler)
    ):
        raise PrivacyUsageError(
            f"centre {session.centre!r}: the batches of phase {session.phase!r} came from "
            f"{type(sampler).__name__}, not Poisson sampling; a Poisson epsilon would not hold "
            "for them and is never reported"
        )


def _periodic_fields(session: DPSession) -> dict[str, Any]:
    acc, delta, phase = session.accountant, session.budget.delta, session.phase
    names = sorted(acc.segment_history)
    by_phase: dict[str, list[list[Any]]] = {k: [] for k in names}
    for e in acc.phases.get(phase, []):
        if len(e) == 4:
            by_phase.setdefault(str(e[3]), []).append(e[:3])
    names = sorted(set(names) | set(by_phase))
    per = acc.segment_epsilons(delta)
    rec: dict[str, Any] = {"sampling": PERIODIC_SAMPLING}
    rec.update(_pack_list("segments", names))
    rec.update(_pack_list("segment-epsilons", [float(per.get(k, 0.0)) for k in names]))
    for i, k in enumerate(names):
        rec.update(pack_history(f"segment-history.{i}", by_phase.get(k, [])))
        seg = [list(e) for e in acc.segment_history.get(k, [])]
        rec.update(pack_history(f"ledger-segment-history.{i}", seg))
    return rec


def encode_privacy(session: DPSession, *, ledger: str, round_steps: int) -> ConfigRecord:
    """Hyper-parameters and epsilons of a DP round (nothing about any image)."""
    acc, budget, phase = session.accountant, session.budget, session.phase
    _check_poisson(session)
    periodic = bool(acc.segment_history) or any(len(e) == 4 for e in acc.phases.get(phase, []))
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
    shared = [e for e in acc.phases.get(phase, []) if len(e) == 3]  # every example at risk
    rec.update(pack_history("history", shared))
    rec.update(pack_history("ledger-history", acc.history))
    if periodic:
        rec.update(_periodic_fields(session))
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
    if "segments.n" in record:  # a periodic ledger: per-segment histories and epsilons
        names = [str(k) for k in _unpack_list(record, "segments")]
        eps = [float(v) for v in _unpack_list(record, "segment-epsilons")]
        out["sampling"] = str(record["sampling"])
        out["segment_history"] = {
            k: unpack_history(record, f"segment-history.{i}") for i, k in enumerate(names)
        }
        out["ledger_segment_history"] = {
            k: unpack_history(record, f"ledger-segment-history.{i}") for i, k in enumerate(names)
        }
        out["segment_epsilons"] = dict(zip(names, eps, strict=True))
    return out
