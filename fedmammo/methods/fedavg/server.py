"""FedAvg of a classifier across the training centres, with local and pooled reference arms."""

from __future__ import annotations

from fedmammo.federation.orchestrator import Orchestrator
from fedmammo.federation.privacy.server import run_audits
from fedmammo.federation.rounds import initial_arrays, train_rounds
from fedmammo.methods.fedavg.messages import EvaluateClassifier, TrainClassifier

__all__ = ["run"]


def _lira_config(p) -> dict:
    """Audit fields for offline LiRA (``audit_shadows``): shadows train rounds x epochs locally."""
    if not p.audit_shadows:
        return {}
    train = {**p.train.model_dump(), "epochs": p.train.epochs * p.rounds}
    return dict(lira_shadows=p.audit_shadows, lira_train=train)


def run(orc: Orchestrator) -> None:
    """Federated, local and pooled arms for every seed; test evaluation at every centre."""
    p = orc.params
    model = p.model.model_dump()
    train_centres = orc.centres("train", "receiver")
    every = orc.centres()
    for seed in orc.scenario.seeds:
        init = initial_arrays(model, seed)
        plan: list[tuple[str, list[str], object]] = []
        if "federated" in p.arms:
            plan.append(("federated", train_centres, p.weighting))
        if "local" in p.arms:
            plan += [(f"local-{c}", [c], "uniform") for c in train_centres]
        if "pooled" in p.arms:
            if "pooled" in orc.nodes:
                plan.append(("pooled", ["pooled"], "uniform"))
            else:
                orc.recorder.note(
                    "pooled arm skipped: no pooled node (deployment runs cannot pool data)"
                )
        for arm, centres, weighting in plan:
            if orc.recorder.is_done(arm, seed):
                continue
            orc.console.rule(f"[bold]{arm}[/] seed {seed}")
            final = train_rounds(
                orc,
                arm=arm,
                seed=seed,
                centres=centres,
                arrays=init,
                weighting=weighting,
                message=TrainClassifier,
                evaluate=EvaluateClassifier,
                model=model,
                fields=dict(train=p.train.model_dump(), batchnorm=p.batchnorm),
                evaluate_fields=dict(batchnorm=p.batchnorm),
            )
            if final is None:
                continue
            # local arms and the pooled arm evaluate with their own BatchNorm statistics
            bn = p.batchnorm if arm == "federated" else "average"
            orc.evaluate_everywhere(
                EvaluateClassifier,
                arm=arm,
                seed=seed,
                arrays=final,
                centres=every,
                split="test",
                model=model,
                n_boot=p.bootstrap,
                batchnorm=bn,
            )
            run_audits(
                orc,
                arm=arm,
                seed=seed,
                arrays=final,
                centres=train_centres if arm == "pooled" else centres,
                model=model,
                batchnorm=bn,
                **_lira_config(p),
            )
            orc.recorder.complete_arm(arm, seed)
    if "pooled" in p.arms and "pooled" in orc.nodes:
        orc.recorder.note(
            "arm 'pooled' is a simulation-only what-if: it trains as if every "
            "training centre's images were moved to one place"
        )
