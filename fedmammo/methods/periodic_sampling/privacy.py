"""Centre side of periodic sampling under DP: the honest per-segment Poisson form.

Fixed periodic batches are not covered by the accountant's Poisson bound, so a DP centre's
``train.periodic`` round never builds them. Instead every step Poisson-samples the one segment
the step pattern names, at that segment's rate, and is accounted to that segment only
(:mod:`fedmammo.privacy.periodic`); the reported epsilon is the maximum over segments, on the
message's ledger. :func:`dp_plan` builds the round's sampler and the remaining planned steps
per segment (sampler rounds: ``dp-planned-rounds``; quota rounds: :data:`PLANNED_QUOTA_KEY`,
the quotas of this and every later planned round, sent by the server's ``PeriodicFedAvg``);
:func:`dp_session` checks the round against the budget and the plan before any step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Context

from fedmammo.errors import DataError
from fedmammo.federation.centre_runtime import CentreIdentity
from fedmammo.federation.privacy.ledger import (
    PLANNED_ROUNDS_KEY,
    BudgetRefusal,
    DPUnsupportedError,
    ledger_name,
    load_accountant,
    privacy_budget,
    reserve_round,
)
from fedmammo.methods.periodic_sampling.messages import PLANNED_QUOTA_KEY, TrainPeriodic
from fedmammo.privacy.accounting import BudgetExceeded, PrivacyUsageError

if TYPE_CHECKING:  # privacy.periodic loads the DP engine (Opacus): imported where DP is planned
    from fedmammo.privacy.periodic import PeriodicDPSession, PoissonPeriodicSampler

__all__ = ["PHASE", "PLANNED_QUOTA_KEY", "dp_plan", "dp_session"]


PHASE = "periodic"


def dp_plan(
    m: TrainPeriodic, segments: np.ndarray, labels: np.ndarray, batch_size: int
) -> tuple[PoissonPeriodicSampler, dict[str, list[tuple[float, int]]]]:
    """The round's Poisson periodic sampler and the remaining planned steps per segment."""
    from fedmammo.privacy.periodic import PoissonPeriodicSampler, quota_steps, step_pattern

    keys = sorted({str(s) for s in segments})
    index = {k: np.flatnonzero(segments == k) for k in keys}
    seed = int(np.random.SeedSequence([int(m.seed), 0x5A11]).generate_state(1)[0])
    if m.quota is not None:
        quota = {str(k): int(v) for k, v in m.quota.items() if int(v) > 0}
        unknown = sorted(set(quota) - set(keys))
        if unknown:
            raise DataError(
                f"quota names segments {unknown!r} that this centre does not hold; its "
                f"segments are {keys!r}"
            )
        per = {k: quota_steps(q, len(index[k]), batch_size) for k, q in quota.items()}
        pattern = step_pattern({k: n for k, (n, _) in per.items()})
        sampler = PoissonPeriodicSampler(
            {k: index[k] for k in quota},
            pattern,
            {k: r for k, (_, r) in per.items()},
            seed,
            steps=len(pattern),
        )
        remaining: dict[str, list[tuple[float, int]]] = {}
        for k, by_quota in (m.planned_quota or {}).items():
            for q, rounds in by_quota.items():
                if k in index and int(q) > 0:
                    n, r = quota_steps(int(q), len(index[k]), batch_size)
                    remaining.setdefault(k, []).append((r, n * int(rounds)))
        return sampler, remaining
    method = str(m.sampler)
    if method in ("periodic", "balanced_segments"):
        counts = {
            k: int(np.bincount(labels[index[k]].astype(int), minlength=2).min()) for k in keys
        }
        counts = {k: (max(c, 1) if method == "periodic" else 1) for k, c in counts.items()}
        groups, pattern = index, step_pattern(counts)
    else:  # balanced_labels, random: Poisson over every image (labels do not alternate)
        groups, pattern = {"all": np.arange(len(labels))}, ["all"]
    rates = {k: min(1.0, batch_size / len(v)) for k, v in groups.items()}
    each = None
    if method == "balanced_labels":  # one rate per label, accounted at the largest
        from fedmammo.privacy.label_sampling import label_rates

        each = {"all": label_rates(labels, batch_size)}
        rates = {"all": float(each["all"].max())}
    steps = int(m.steps)
    sampler = PoissonPeriodicSampler(groups, pattern, rates, seed, steps=steps, example_rates=each)
    sampler.position = m.stream_epoch * steps  # the pattern continues
    left = int(m.planned_rounds or 0) * steps - sampler.position
    counts = sampler.segment_counts(left) if left > 0 else {}
    return sampler, {k: [(rates[k], n)] for k, n in counts.items()}


def dp_session(
    context: Context, ident: CentreIdentity, m: TrainPeriodic, n_examples: int, plan: tuple
) -> PeriodicDPSession | None:
    """The round's DP session, checked against the budget and plan (None without DP)."""
    budget = privacy_budget(ident, n_examples)
    if budget is None:
        return None
    sampler, remaining = plan
    if (
        not remaining
        and budget.noise_multiplier is None
        and (m.quota is not None and m.planned_quota is None or m.planned_rounds is None)
    ):
        raise DPUnsupportedError(
            f"centre {ident.name!r}: privacy.target_epsilon needs the planned rounds "
            f"({PLANNED_ROUNDS_KEY!r}, and {PLANNED_QUOTA_KEY!r} for quota rounds) to choose "
            "the noise once for the whole run; set privacy.noise_multiplier instead"
        )
    accountant = load_accountant(
        context, ident, ledger_name(m), mechanism=budget.accountant, prior=m.prior
    )
    from fedmammo.privacy.periodic import PeriodicDPSession

    try:
        session = PeriodicDPSession(
            budget,
            accountant,
            remaining=remaining,
            sampler=sampler,
            phase=PHASE,
            centre=ident.name,
            seed=int(m.seed),
        )
        session.check_round()
    except (BudgetExceeded, PrivacyUsageError) as err:
        raise BudgetRefusal(ident.name, str(err)) from err
    reserve_round(context, ident, ledger_name(m), session)
    return session
