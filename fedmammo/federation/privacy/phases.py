"""Ledgers of methods with several DP phases (pre-training then fine-tuning), centre side.

A later phase may continue another arm's model (fine-tuning continues pre-training): its
ledger starts as a copy of that arm's ledger (:data:`PARENT_LEDGER_KEY`), so its epsilon
covers both. And the noise for a target epsilon is planned once for every phase announced to
follow at this centre (:data:`LATER_PHASES_KEY`), so the first phase does not spend the whole
target: :class:`~fedmammo.privacy.engine.DPSession` plans each phase from what remains, and
finds the joint plan stored for every phase in the ledger.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flwr.app import Context

from fedmammo.config.recipe import LocalTrainingParams
from fedmammo.federation.centre_runtime import CentreIdentity
from fedmammo.federation.privacy.ledger import (
    BudgetRefusal,
    has_ledger,
    ledger_name,
    load_accountant,
    save_accountant,
    steps_per_round,
)
from fedmammo.privacy.accounting import PrivacyBudget, PrivacyUsageError, bisect_sigma, epsilon_of

if TYPE_CHECKING:  # the messages name their phase fields with this module's keys
    from fedmammo.federation.messages import PhaseFields

__all__ = [
    "LATER_PHASES_KEY",
    "PARENT_LEDGER_KEY",
    "fork_parent_ledger",
    "plan_later_phases",
]

logger = logging.getLogger(__name__)

#: Config key of a fine-tuning arm: the ledger of the pre-training its model continues.
PARENT_LEDGER_KEY = "dp-parent-ledger"
#: Config key (JSON) of pre-training: the DP phases that will follow it at some centres,
#: ``{phase: {"rounds": int, "train": LocalTrainingParams, "centres": [name, ...]}}``.
LATER_PHASES_KEY = "dp-later-phases"


def fork_parent_ledger(
    context: Context, ident: CentreIdentity, m: PhaseFields, budget: PrivacyBudget
) -> None:
    """Start a fine-tuning arm's ledger as a copy of its pre-training's (this centre's own).

    Nothing to do when the centre's file holds the ledger already (a later round, a resumed
    run; at a real site every name is the one site ledger). Without a record of the parent
    ledger the pre-training steps could not be counted, so the round is refused.
    """
    parent = str(m.parent_ledger or "")
    ledger = ledger_name(m)
    if not parent or has_ledger(context, ident, ledger):
        return
    if not has_ledger(context, ident, parent):
        raise BudgetRefusal(
            ident.name,
            f"centre {ident.name!r} cannot account ledger {ledger!r}: it continues the "
            f"pre-training of ledger {parent!r}, of which this centre has no record (node "
            "state lost?); rerun the pre-training arm, or resume from the run directory whose "
            "privacy.json records it",
        )
    acc = load_accountant(context, ident, parent, mechanism=budget.accountant)
    save_accountant(context, ident, ledger, acc)


def _later_phases(m: PhaseFields, centre: str, n_examples: int) -> list[tuple[str, float, int]]:
    """(phase, sample rate, planned steps) of the DP phases announced to follow at ``centre``."""
    if m.later_phases is None:
        return []
    out = []
    for phase, spec in m.later_phases.items():
        if centre not in spec.get("centres", []) or int(spec.get("rounds", 0)) < 1:
            continue
        per_epoch, per_round = steps_per_round(LocalTrainingParams(**spec["train"]), n_examples)
        out.append((str(phase), 1.0 / per_epoch, int(spec["rounds"]) * per_round))
    return out


def plan_later_phases(
    context: Context,
    ident: CentreIdentity,
    m: PhaseFields,
    budget: PrivacyBudget,
    *,
    n_examples: int,
    steps_per_epoch: int,
    epochs: int,
    phase: str,
) -> None:
    """Plan one noise multiplier for this phase and the phases announced to follow it.

    Only for a target epsilon (a fixed noise multiplier needs no plan) and only when later
    phases run at this centre. The plan is stored in the ledger for every phase, where
    ``DPSession`` finds and reuses it (same sample rate and planned steps); if a later phase
    turns out different, ``DPSession`` re-plans it from what then remains of the target.
    """
    later = _later_phases(m, ident.name, n_examples)
    target, delta = budget.target_epsilon, budget.delta
    if not later or target is None or budget.noise_multiplier is not None:
        return
    ledger = ledger_name(m)
    acc = load_accountant(context, ident, ledger, mechanism=budget.accountant, prior=m.prior)
    q = 1.0 / steps_per_epoch
    planned = max(int(m.planned_rounds or 0), 1) * steps_per_epoch * epochs
    plan = acc.plans.get(phase)
    if plan and plan["sample_rate"] == q and plan["planned_steps"] == float(planned):
        return  # planned by an earlier round
    remaining = planned - sum(int(e[2]) for e in acc.phases.get(phase, []))
    if remaining < 1 or acc.segment_history or acc.epsilon(delta) >= target:
        return  # DPSession refuses the round with the reason
    prior = [tuple(e) for e in acc.history]

    def composed(sigma: float) -> float:
        extra = [(sigma, q, remaining)] + [(sigma, ql, nl) for _, ql, nl in later]
        return epsilon_of([*prior, *extra], delta, budget.accountant)

    try:
        sigma = bisect_sigma(composed, target, 0.01)
    except PrivacyUsageError as err:
        raise BudgetRefusal(ident.name, str(err)) from err
    for name, rate, steps in [(phase, q, planned), *later]:
        acc.plans[name] = {
            "noise_multiplier": float(sigma),
            "sample_rate": float(rate),
            "planned_steps": float(steps),
        }
    save_accountant(context, ident, ledger, acc)
    logger.info(
        "centre %s ledger %s: noise multiplier %.4f planned for phase %s (%d steps) and %s "
        "(target epsilon %.3g)",
        ident.name,
        ledger,
        sigma,
        phase,
        remaining,
        ", ".join(f"{name} ({steps} steps)" for name, _, steps in later),
        target,
    )
