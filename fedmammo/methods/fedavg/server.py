"""FedAvg of a classifier across the training centres, with local and pooled reference arms."""

from __future__ import annotations

from flwr.app import ArrayRecord

from fedmammo.federation.messages import ARRAYS, BASELINE
from fedmammo.federation.orchestrator import Orchestrator, evaluation_seed
from fedmammo.federation.privacy.server import run_audits
from fedmammo.federation.rounds import initial_arrays, train_rounds
from fedmammo.methods.fedavg.messages import EvaluateClassifier, TrainClassifier

__all__ = ["compare_with_local", "run"]


def _lira_config(p) -> dict:
    """Audit fields for offline LiRA (``audit_shadows``): shadows train rounds x epochs locally."""
    if not p.audit_shadows:
        return {}
    train = {**p.train.model_dump(), "epochs": p.train.epochs * p.rounds}
    return dict(lira_shadows=p.audit_shadows, lira_train=train)


def _final(orc: Orchestrator, arm: str, seed: int) -> ArrayRecord:
    """The weights an arm ended with: its checkpoint after its last completed round."""
    return orc.load_checkpoint(arm, seed, orc.recorder.last_round(arm, seed))


def compare_with_local(
    orc: Orchestrator, *, seed: int, centres: list[str], model: dict, batchnorm: str, n_boot: int
) -> None:
    """What each training centre gains from federating: at every centre ``c`` of ``centres``
    whose arms ``federated`` and ``local-c`` both completed, the federated model against
    ``local-c`` on ``c``'s test images, paired, inside the centre (``baseline_auc``,
    ``delta_auc``, ``p_value`` records of the federated arm). The seed is the test
    evaluation's, so ``baseline_auc`` repeats ``local-c``'s test AUROC and CI. Centres
    compared before a resume are not compared again."""
    if not orc.recorder.is_done("federated", seed):
        return
    pending = [
        c
        for c in centres
        if orc.recorder.is_done(f"local-{c}", seed)
        and not orc.recorder.has("federated", seed, "delta_auc", centre=c)
    ]
    if not pending:
        return
    federated = _final(orc, "federated", seed)
    contents = {
        c: orc.message(
            EvaluateClassifier,
            arm="federated",
            seed=evaluation_seed(seed, c),
            split="test",
            model=model,
            n_boot=n_boot,
            batchnorm=batchnorm,
            baseline=f"local-{c}",
        ).content({ARRAYS: federated, BASELINE: _final(orc, f"local-{c}", seed)})
        for c in pending
    }
    orc.record_evaluations(EvaluateClassifier, contents, arm="federated", seed=seed, split="test")
    orc.recorder.flush()


def run(orc: Orchestrator) -> None:
    """Federated, local and pooled arms for every seed; test evaluation at every centre; each
    training centre's gain from federating (:func:`compare_with_local`)."""
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
        if {"federated", "local"} <= set(p.arms):
            compare_with_local(
                orc,
                seed=seed,
                centres=train_centres,
                model=model,
                batchnorm=p.batchnorm,
                n_boot=p.bootstrap,
            )
    if "pooled" in p.arms and "pooled" in orc.nodes:
        orc.recorder.note(
            "arm 'pooled' is a simulation-only what-if: it trains as if every "
            "training centre's images were moved to one place"
        )
