"""FedAvg of a classifier across the training centres, with local and pooled reference arms."""

from __future__ import annotations

import functools

from flwr.app import ArrayRecord

from fedmammo.federation.messages import ARRAYS, BASELINE
from fedmammo.federation.orchestrator import Orchestrator
from fedmammo.federation.privacy.server import run_audits
from fedmammo.federation.rounds import initial_arrays, train_rounds
from fedmammo.methods.fedavg.messages import EvaluateClassifier, TrainClassifier
from fedmammo.methods.fedavg.report import VS_POOLED
from fedmammo.seeds import evaluation_seed

__all__ = ["compare_with_references", "run"]


def _lira_config(p) -> dict:
    """Audit fields for offline LiRA (``audit_shadows``): shadows train rounds x epochs locally."""
    if not p.audit_shadows:
        return {}
    train = {**p.train.model_dump(), "epochs": p.train.epochs * p.rounds}
    return dict(lira_shadows=p.audit_shadows, lira_train=train)


def _final(orc: Orchestrator, arm: str, seed: int) -> ArrayRecord:
    """The weights an arm ended with: its checkpoint after its last completed round."""
    return orc.load_checkpoint(arm, seed, orc.recorder.last_round(arm, seed))


def compare_with_references(
    orc: Orchestrator,
    *,
    seed: int,
    references: list[tuple[str, str]],
    model: dict,
    batchnorm: str,
    n_boot: int,
) -> None:
    """The federated model against reference arms, paired, on a centre's test images inside
    the centre: for each (centre, arm) of ``references`` whose arms both completed.

    - ``local-c`` at training centre ``c``: what ``c`` gains from federating
      (``baseline_auc``, ``delta_auc``, ``p_value`` records of the federated arm);
    - ``pooled`` at any centre: what federating costs against pooling the training images
      (the same records named by :data:`VS_POOLED`).

    The seed is the test evaluation's, so ``baseline_auc`` / ``pooled_auc`` repeat the
    reference arm's own test AUROC and CI. Pairs compared before a resume are not compared
    again."""
    if not orc.recorder.is_done("federated", seed):
        return
    final = functools.cache(lambda arm: _final(orc, arm, seed))  # each checkpoint read once
    for pooled in (False, True):  # every centre's local-c comparison in one batch, then pooled
        rename = VS_POOLED if pooled else {}
        delta = rename.get("delta_auc", "delta_auc")
        pending = [
            (c, arm)
            for c, arm in references
            if (arm == "pooled") == pooled
            and orc.recorder.is_done(arm, seed)
            and not orc.recorder.has("federated", seed, delta, centre=c)
        ]
        if not pending:
            continue
        contents = {
            c: orc.message(
                EvaluateClassifier,
                arm="federated",
                seed=evaluation_seed(seed, c),
                run_seed=seed,
                split="test",
                model=model,
                n_boot=n_boot,
                batchnorm=batchnorm,
                baseline=arm,
            ).content({ARRAYS: final("federated"), BASELINE: final(arm)})
            for c, arm in pending
        }
        orc.record_evaluations(
            EvaluateClassifier, contents, arm="federated", seed=seed, split="test", rename=rename
        )
        orc.recorder.flush()


def run(orc: Orchestrator) -> None:
    """Federated, local and pooled arms for every seed; test evaluation at every centre; each
    training centre's gain from federating and each centre's cost of federating against
    pooling (:func:`compare_with_references`)."""
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
        references = []
        if {"federated", "local"} <= set(p.arms):
            references += [(c, f"local-{c}") for c in train_centres]
        if {"federated", "pooled"} <= set(p.arms) and "pooled" in orc.nodes:
            references += [(c, "pooled") for c in every]
        compare_with_references(
            orc,
            seed=seed,
            references=references,
            model=model,
            batchnorm=p.batchnorm,
            n_boot=p.bootstrap,
        )
    if "pooled" in p.arms and "pooled" in orc.nodes:
        orc.recorder.note(
            "arm 'pooled' is a simulation-only what-if: it trains as if every "
            "training centre's images were moved to one place"
        )
