"""The multi-task run plan: :func:`~.server.plan_arms` (``mtl`` before the fine-tuning arms
that start from it) per seed, each arm's model checked (:func:`~.server.arm_model`)."""

from __future__ import annotations

from fedmammo.config import Scenario
from fedmammo.errors import ConfigError
from fedmammo.methods.mtl_finetune.params import MtlFinetuneParams
from fedmammo.methods.registry import PlanRow

__all__ = ["plan"]


def plan(scenario: Scenario, p: MtlFinetuneParams) -> list[PlanRow]:
    """Every arm x seed: where it trains (fine-tuning: ``finetune_centres``) and for how long."""
    from fedmammo.federation.privacy.server import audits_enabled
    from fedmammo.methods.mtl_finetune.server import arm_model, plan_arms

    arms = plan_arms(p)
    trainers = tuple(
        c for c in scenario.centre_names() if scenario.entry(c).role in ("train", "receiver")
    )
    if any(s.finetune_u1 is not None for s in arms):
        wrong = [c for c in p.finetune_centres if c not in trainers]
        if wrong:
            raise ConfigError(
                f"strategy params.finetune_centres names {wrong}, which are not training "
                f"centres of scenario {scenario.name!r}; valid: {list(trainers)} (fix the "
                "recipe or set strategy_overrides: {params.finetune_centres: [...]})"
            )
    every = tuple(scenario.centre_names())
    audits = audits_enabled(scenario)
    rows = []
    for n, seed in enumerate(scenario.seeds):
        for spec in arms:
            tuning = spec.finetune_u1 is not None
            centres = tuple(p.finetune_centres) if tuning else trainers
            messages = [("train.mtl", centres), ("evaluate.mtl", every)]
            if audits:
                messages.append(("evaluate.mtl_audit", trainers))
            if n == 0 and spec.name == "mtl":
                messages.append(("query.latent", every))
            note = ""
            if tuning:
                note = f"fine-tunes arm mtl (rounds {p.rounds + 1}..)"
            elif spec.name not in p.arms:
                note = "added: the fine-tuning arms start from it"
            rows.append(
                PlanRow(
                    arm=spec.name,
                    seed=seed,
                    centres=centres,
                    rounds=p.finetune_rounds if tuning else p.rounds,
                    first_round=p.rounds + 1 if tuning else 1,
                    messages=tuple(messages),
                    model=arm_model(p, spec),
                    note=note,
                )
            )
    return rows
