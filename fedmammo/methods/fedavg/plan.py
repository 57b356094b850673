"""The FedAvg run plan: per seed the federated arm, each training centre alone, the pooled
what-if (the order :func:`fedmammo.methods.fedavg.server.run` trains them in)."""

from __future__ import annotations

from fedmammo.config import Scenario
from fedmammo.methods.fedavg.params import FedAvgParams
from fedmammo.methods.registry import PlanRow

__all__ = ["plan"]

TRAIN, EVALUATE, AUDIT = "train.classifier", "evaluate.classifier", "evaluate.audit"


def plan(scenario: Scenario, p: FedAvgParams) -> list[PlanRow]:
    """Every arm x seed, with the centres each trains and evaluates at."""
    from fedmammo.federation.privacy.server import audits_enabled

    trainers = tuple(
        c for c in scenario.centre_names() if scenario.entry(c).role in ("train", "receiver")
    )
    every = tuple(scenario.centre_names())
    model = p.model.model_dump()
    audits = audits_enabled(scenario)
    arms: list[tuple[str, tuple[str, ...]]] = []
    if "federated" in p.arms:
        arms.append(("federated", trainers))
    if "local" in p.arms:
        arms += [(f"local-{c}", (c,)) for c in trainers]
    if "pooled" in p.arms:
        arms.append(("pooled", ("pooled",)))
    rows = []
    for seed in scenario.seeds:
        for arm, centres in arms:
            audited = trainers if arm == "pooled" else centres
            messages = [(TRAIN, centres), (EVALUATE, every)]
            if audits:
                messages.append((AUDIT, audited))
            note = "simulation only: every training centre's images in one place"
            rows.append(
                PlanRow(
                    arm=arm,
                    seed=seed,
                    centres=centres,
                    rounds=p.rounds,
                    messages=tuple(messages),
                    model=model,
                    note=note if arm == "pooled" else "",
                )
            )
    return rows
