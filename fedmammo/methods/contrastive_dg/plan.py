"""The contrastive_dg run plan: the style phase (once per run), then every arm x seed with its
pre-training and downstream messages, checked with the server's own :func:`~.server.make_plan`."""

from __future__ import annotations

from types import SimpleNamespace

from fedmammo.config import Scenario
from fedmammo.methods.contrastive_dg.params import SCHEMES, ContrastiveDgParams
from fedmammo.methods.registry import PlanRow

__all__ = ["plan"]


def _view(scenario: Scenario) -> SimpleNamespace:
    """The part of the orchestrator make_plan reads, for a simulation of ``scenario``."""
    roles = {c: scenario.entry(c).role for c in scenario.centre_names()}
    return SimpleNamespace(
        scenario=scenario,
        nodes={c: 0 for c in [*roles, "pooled"]},
        spec=SimpleNamespace(deployment=False),
        centres=lambda *r: [c for c, role in roles.items() if not r or role in r],
    )


def plan(scenario: Scenario, p: ContrastiveDgParams) -> list[PlanRow]:
    """Styles (when an arm needs them), then per seed every arm in running order."""
    from fedmammo.methods.contrastive_dg.messages import (
        EvaluateDownstream,
        EvaluateEncoder,
        QueryEmbeddings,
        TrainDownstream,
        TrainDownstreamRound,
        TrainEncoder,
        TrainStyleBank,
        TrainTileGenerator,
    )
    from fedmammo.methods.contrastive_dg.server import STYLES_ARM, encoder_spec, make_plan

    run = make_plan(_view(scenario), p)  # type: ignore[arg-type]
    seen, tested = tuple(run.seen), (*run.labelled, *run.unseen)
    rows = []
    if p.needs_styles():
        banks = (*seen, *(("pooled",) if run.pooled else ()))
        rows.append(
            PlanRow(
                arm=STYLES_ARM,
                seed=scenario.seeds[0],
                centres=seen,
                messages=((TrainTileGenerator.KIND, seen), (TrainStyleBank.KIND, banks)),
                note="tile generators shared; style banks stay at the centres",
            )
        )
    fine_tune = TrainDownstreamRound if p.downstream == "federated" else TrainDownstream
    downstream = ((fine_tune.KIND, tuple(run.labelled)), (EvaluateDownstream.KIND, tested))
    for n, seed in enumerate(scenario.seeds):
        for arm in run.arms:
            centres = ("pooled",) if arm == "pooled" else seen
            pretrain = ()
            if arm in SCHEMES:
                pretrain = ((TrainEncoder.KIND, centres), (EvaluateEncoder.KIND, seen))
            maps = ((QueryEmbeddings.KIND, seen),) if n == 0 and arm in p.embedding_arms else ()
            note = "simulation only: pixels pooled" if arm == "pooled" else SCHEMES.get(arm, "")
            rows.append(
                PlanRow(
                    arm=arm,
                    seed=seed,
                    centres=centres,
                    rounds=p.rounds if arm in SCHEMES else None,
                    messages=(*pretrain, *downstream, *maps),
                    model=encoder_spec(p, arm),
                    note=note,
                )
            )
    return rows
