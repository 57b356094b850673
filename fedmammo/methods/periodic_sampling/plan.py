"""The periodic-sampling run plan: :func:`~.arms.plan_arms` on the segments the centres' profiles
declare (phantom centres), per seed, in the order the server trains the arms."""

from __future__ import annotations

from fedmammo.config import CentreProfile, Scenario
from fedmammo.methods.periodic_sampling.arms import plan_arms
from fedmammo.methods.periodic_sampling.params import PeriodicSamplingParams
from fedmammo.methods.registry import PlanRow

__all__ = ["declared_segments", "plan"]

#: Stands in for the training centres when their segments are known only from their data.
FROM_DATA = "(from data)"


def declared_segments(profile: CentreProfile) -> list[str] | None:
    """The data segments a phantom centre's profile declares (None: known only from data)."""
    synthetic = profile.data.synthetic
    if synthetic is None or profile.data.segment_key != ["source", "manufacturer"]:
        return None
    return [f"{s.source or profile.source}-{s.manufacturer}" for s in synthetic.segments]


def _static_counts(scenario: Scenario, p: PeriodicSamplingParams) -> dict[str, dict[str, int]]:
    """identify-style counts (``n|train|<segment>|<label>``, one image each) per training
    centre; every segment the recipe names goes to FROM_DATA for centres without a phantom."""
    counts: dict[str, dict[str, int]] = {}
    wanted = set(p.baselines) | {s for segs in p.experiments.values() for s in segs}
    for name in scenario.centre_names():
        if scenario.entry(name).role not in ("train", "receiver"):
            continue
        segments = declared_segments(scenario.resolved_profiles[name])
        holder = name if segments is not None else FROM_DATA
        for s in segments if segments is not None else sorted(wanted):
            counts.setdefault(holder, {}).update({f"n|train|{s}|0": 1, f"n|train|{s}|1": 1})
    return counts


def plan(scenario: Scenario, p: PeriodicSamplingParams) -> list[PlanRow]:
    """Baselines, then experiment x setting x method arms, per seed (ConfigError when a
    training segment is held by no centre)."""
    pooled = "pooled" in p.settings
    arms, _ = plan_arms(p, _static_counts(scenario, p), pooled=pooled)
    tests = tuple(scenario.centre_names("test"))
    model = p.model.model_dump()
    rows = []
    for seed in scenario.seeds:
        for arm in arms:
            centres = tuple(arm.centres)
            validation = ("pooled",) if pooled else centres
            messages = [("train.periodic", centres), ("evaluate.periodic", validation + tests)]
            if p.plots:
                messages.append(("query.periodic_plots", validation + tests))
            rows.append(
                PlanRow(
                    arm=arm.name,
                    seed=seed,
                    centres=centres,
                    rounds=p.rounds,
                    messages=tuple(messages),
                    model=model,
                    note=arm.label,
                )
            )
    return rows
