"""Federated multi-task learning (multi-task paper): FedAvg of MultiTaskNet, fine-tuning rounds,
arms.

Per seed and arm: FedAvg rounds ``1..rounds`` of the arm's :class:`MultiTaskNet` over the
training centres, whatever labels each holds (``train.mtl``: a missing label only zeroes its
task's weight). Fine-tuning arms (``finetune_u1_<u1>``) start from the ``mtl`` arm's final
model and continue with rounds ``rounds+1..rounds+finetune_rounds`` at ``finetune_centres``
on ACR-derived malignancy labels of uncertainty ``u1`` (ACR 4-5 up-weighted); the ``mtl``
arm is trained first when a fine-tuning arm needs it. Every arm is then evaluated on the test
split of every centre, test-only centres included (``evaluate.mtl``); an arm with a reference
(:func:`~fedmammo.methods.mtl_finetune.params.reference_arm`: ``mtl`` for a fine-tuning arm,
the single-task baseline for the others) sends the reference's model along, and the centre
adds the paired permutation p-values of the two AUCs on the same images. The first seed's
single-task and ``mtl`` models are mapped in latent space inside each centre
(``query.latent``; only the figure is written, see :mod:`fedmammo.methods.mtl_finetune.client`).

Differential privacy (centres whose profile sets ``privacy``): every arm and seed is one
ledger (``<arm>|<seed>``, :class:`~fedmammo.federation.privacy.server.ArmPrivacy` in
``train_rounds``: planned rounds sent with each round, privacy.json, refusals). A fine-tuning
arm's model continues the ``mtl`` arm's, so its ledger continues the ``mtl`` ledger: its
messages name it (``dp-parent-ledger``), the centre copies its own ``mtl`` ledger and adds
the fine-tuning phase, and privacy.json gets the inherited pre-training records under the
fine-tuning arm too (a resumed run restores the centre's ledger from them). The ``mtl``
arm's messages announce the fine-tuning that will follow (``dp-later-phases``: rounds,
local training and centres) so that a fine-tuning centre plans one noise multiplier for
both phases (:mod:`fedmammo.methods.mtl_finetune.client`). A centre refusing a round (budget)
stops that arm: the model of its last completed round is evaluated and kept; a fine-tuning
arm refused at its first round has no result.

Membership audits (when the scenario sets ``privacy:`` or any centre trains with DP): each
arm's final model at each seed is audited inside every training centre
(``evaluate.mtl_audit``: loss-threshold attack on the malignancy task, only scores leave; see
:mod:`fedmammo.federation.privacy.audits`), recorded like the FedAvg runner's (results split
``audit``, privacy.json ``audits``). A fine-tuning arm is audited at every training centre
too: its model carries the pre-training of all of them (at a centre that only pre-trained,
the epsilon is its ``mtl`` ledger's). An arm completed before a resume is not audited again.
"""

from __future__ import annotations

import copy

from flwr.app import ArrayRecord

from fedmammo.errors import ConfigError
from fedmammo.evaluation.privacy_report import PrivacyLog
from fedmammo.federation.messages import ARRAYS, INFO, PlotInfo, model_record
from fedmammo.federation.orchestrator import Orchestrator
from fedmammo.federation.privacy.server import ledger_of, run_audits
from fedmammo.federation.rounds import initial_arrays, train_rounds
from fedmammo.methods.mtl_finetune.messages import (
    FINETUNE,
    EvaluateMtl,
    EvaluateMtlAudit,
    QueryLatent,
    TrainMtl,
)
from fedmammo.methods.mtl_finetune.params import (
    BASELINE_ARMS,
    ArmSpec,
    MtlFinetuneParams,
    parse_arm,
    reference_arm,
)
from fedmammo.methods.mtl_finetune.report import build_mtl_tables, print_tables, tables_markdown
from fedmammo.models.mtl import DEFAULT_TASKS
from fedmammo.seeds import derive_seed, evaluation_seed

__all__ = [
    "TABLES_FILE",
    "arm_config",
    "arm_model",
    "audit_config",
    "dp_config",
    "label_drop",
    "plan_arms",
    "run",
]

TABLES_FILE = "mtl_tables.md"
_BASELINES = ("single_task", "single_task_fusion")


def arm_model(params: MtlFinetuneParams, spec: ArmSpec) -> dict:
    """The model spec (registry name and options) that ``spec`` trains."""
    options = params.model.model_dump()
    if spec.tasks is not None:
        absent = [t for t in spec.tasks if t not in options["tasks"]]
        if absent:
            raise ConfigError(
                f"arm {spec.name!r} needs task(s) {absent}, which params.model.tasks "
                f"({sorted(options['tasks'])}) switches off; fix: add them or drop the arm"
            )
        options["tasks"] = {t: DEFAULT_TASKS[t] for t in spec.tasks}
    options["fusion"] = bool(options["fusion"] and spec.fusion)
    if spec.decoder is not None:
        options["decoder"] = spec.decoder
    return {"name": "multitask", "options": options}


def arm_config(params: MtlFinetuneParams, spec: ArmSpec, seed: int) -> dict:
    """Fields of the arm's training messages (:class:`TrainMtl`) beyond arm, seed, model."""
    finetune = spec.finetune_u1 is not None
    train = params.finetune_train if finetune and params.finetune_train else params.train
    config: dict = dict(
        train=train.model_dump(),
        phase=FINETUNE if finetune else "pretrain",
        recon_weight=params.recon_weight,
        augmentation=params.augmentation.model_dump(),
    )
    if finetune:
        config |= dict(
            u1=spec.finetune_u1,
            u_other=params.u_other,
            class_weight_high=params.acr_high_class_weight,
        )
    return config | label_drop(spec, seed)


def label_drop(spec: ArmSpec, seed: int) -> dict:
    """The arm's label-drop fields (none without a drop): the same at every round and audit."""
    if spec.drop_fraction <= 0:
        return {}
    return dict(
        drop_fraction=spec.drop_fraction,
        drop_all=spec.drop_all_tasks,
        drop_seed=derive_seed(seed, "drop"),
    )


def dp_config(params: MtlFinetuneParams, spec: ArmSpec, seed: int, plan: list[ArmSpec]) -> dict:
    """DP fields of the arm's training messages (sent when some centre trains with DP).

    A fine-tuning arm names the ledger it continues (the ``mtl`` arm's); the ``mtl`` arm,
    when fine-tuning arms follow it, announces their phase (rounds, local training, centres)
    so that the noise is planned once for pre-training and fine-tuning together.
    """
    if spec.finetune_u1 is not None:
        return dict(parent_ledger=ledger_of("mtl", seed))
    if spec.name == "mtl" and any(s.finetune_u1 is not None for s in plan):
        train = params.finetune_train or params.train
        later = {
            "rounds": params.finetune_rounds,
            "train": train.model_dump(),
            "centres": list(params.finetune_centres),
        }
        return dict(later_phases={FINETUNE: later})
    return {}


def audit_config(params: MtlFinetuneParams, spec: ArmSpec, seed: int) -> dict:
    """Fields of the arm's membership audit (:class:`EvaluateMtlAudit`) beyond arm and model.

    The arm's label drop (the centre audits the images and labels the arm trained on) and,
    for a fine-tuning arm, the ledger it continues (the epsilon where it did not fine-tune).
    """
    fields = label_drop(spec, seed)
    if spec.finetune_u1 is not None:
        fields["parent_ledger"] = ledger_of("mtl", seed)
    return fields


def _inherit_privacy_records(orc: Orchestrator, parent: str, arm: str, seed: int) -> None:
    """Copy the parent arm's privacy.json records under ``arm`` (whose ledger continues it).

    The fine-tuning arm's model carries the pre-training's privacy cost at every centre that
    pre-trained; with these records privacy.json shows it per arm, and a resumed run restores
    a fine-tuning centre's ledger from them (``ArmPrivacy.node_config``).
    """
    log = PrivacyLog(orc.run_dir)
    parent_ledger, ledger = ledger_of(parent, seed), ledger_of(arm, seed)
    inherited = [r for r in log.records if r.get("ledger") == parent_ledger]
    have = {(r["centre"], r["phase"]) for r in log.records if r["arm"] == arm and r["seed"] == seed}
    for r in inherited:
        if (r["centre"], r["phase"]) in have:
            continue
        log.records.append(
            {**copy.deepcopy(r), "arm": arm, "ledger": ledger, "inherited_from": parent_ledger}
        )
    if inherited:
        log.write()


def plan_arms(params: MtlFinetuneParams) -> list[ArmSpec]:
    """The arms in running order: the single-task baselines first (the other arms' AUCs are
    tested against them), ``mtl`` (added if fine-tuning needs it) before fine-tuning."""
    specs = params.arm_specs()
    tuned = [s for s in specs if s.finetune_u1 is not None]
    plain = [s for s in specs if s.finetune_u1 is None and s.name in BASELINE_ARMS]
    plain += [s for s in specs if s.finetune_u1 is None and s.name not in BASELINE_ARMS]
    if tuned and not any(s.name == "mtl" for s in plain):
        plain.append(parse_arm("mtl"))
    return plain + tuned


def _check_centres(orc: Orchestrator, params: MtlFinetuneParams, plan: list[ArmSpec]) -> None:
    if not any(s.finetune_u1 is not None for s in plan):
        return
    trainers = orc.centres("train", "receiver")
    wrong = [c for c in params.finetune_centres if c not in trainers]
    if wrong:
        raise ConfigError(
            f"strategy params.finetune_centres names {wrong}, which are not training centres "
            f"of scenario {orc.scenario.name!r}; valid: {trainers} (fix the recipe or set "
            "strategy_overrides: {params.finetune_centres: [...]})"
        )


def _final_arrays(orc: Orchestrator, p: MtlFinetuneParams, spec: ArmSpec, seed: int) -> ArrayRecord:
    """The final model of a completed arm: its last completed round (earlier if it stopped)."""
    last = p.rounds + (p.finetune_rounds if spec.finetune_u1 is not None else 0)
    done = orc.recorder.last_round(spec.name, seed)
    return orc.load_checkpoint(spec.name, seed, min(done, last) if done else last)


def _latent_maps(orc: Orchestrator, seed: int, models: dict[str, tuple[dict, ArrayRecord]]) -> None:
    """Ask every centre to draw the single-task vs ``mtl`` latent map of its test split."""
    baseline = next((a for a in _BASELINES if a in models), None)
    arms = [a for a in (baseline, "mtl") if a in models]
    if not arms:
        return
    plot_dir = "" if orc.spec.deployment else str(orc.run_dir / "plots")
    contents = {}
    for c in orc.centres():
        query = orc.message(
            QueryLatent,
            arms=arms,
            models={a: models[a][0] for a in arms},
            split="test",
            seed=seed,
            method="pca",
            plot_dir=plot_dir,
        )
        contents[c] = query.content({model_record(k): models[a][1] for k, a in enumerate(arms)})
    replies, failures = orc.send(QueryLatent.KIND, contents)
    orc.record_failures(failures, arm="+".join(arms), seed=seed, rnd=None, phase="latent")
    drawn = [c for c, r in replies.items() if INFO in r and PlotInfo.from_metrics(r[INFO]).plotted]
    if drawn:
        where = "each centre's <output-dir>/plots" if orc.spec.deployment else "plots/"
        orc.recorder.note(
            f"latent maps ({' vs '.join(arms)}, seed {seed}) of {', '.join(drawn)} in {where} "
            "as `latent_<centre>_seed<seed>.png`: drawn inside each centre, only the figure left it"
        )


def _evaluate(
    orc: Orchestrator,
    p: MtlFinetuneParams,
    arm: str,
    seed: int,
    final: ArrayRecord,
    model: dict,
    reference: tuple[str, dict, ArrayRecord] | None,
) -> None:
    """Evaluate ``arm``'s final model on the test split of every centre; with ``reference``
    (arm, model spec, weights) the centre also evaluates it on the same images and adds
    paired permutation p-values (``auc_p``, ``breast_auc_p``) to the records."""
    if reference is None:
        orc.evaluate_everywhere(
            EvaluateMtl,
            arm=arm,
            seed=seed,
            arrays=final,
            centres=orc.centres(),
            split="test",
            model=model,
            n_boot=p.bootstrap,
        )
        return
    ref_arm, ref_model, ref_arrays = reference
    contents = {
        c: orc.message(
            EvaluateMtl,
            arm=arm,
            seed=evaluation_seed(seed, c),  # every arm: the same resamples
            split="test",
            model=model,
            n_boot=p.bootstrap,
            reference_arm=ref_arm,
            reference_model=ref_model,
        ).content({ARRAYS: final, model_record(0): ref_arrays})
        for c in orc.centres()
    }
    orc.record_evaluations(EvaluateMtl, contents, arm=arm, seed=seed, split="test")


def _write_tables(orc: Orchestrator, p: MtlFinetuneParams) -> None:
    orc.recorder.meta["mtl_decoder_default"] = p.model.decoder
    tables = build_mtl_tables(orc.recorder.frame(), decoder_default=p.model.decoder)
    print_tables(tables, orc.console)
    (orc.run_dir / TABLES_FILE).write_text(tables_markdown(tables))
    orc.recorder.note(
        "multi-task tables (multi-task paper Tables 2-5, 8-9 layouts): results.md and "
        f"{TABLES_FILE}"
    )


def run(orc: Orchestrator) -> None:
    """Every arm for every seed: federated (pre-)training, fine-tuning, test evaluation."""
    p: MtlFinetuneParams = orc.params
    plan = plan_arms(p)
    _check_centres(orc, p, plan)
    if len(plan) > len(p.arms):
        orc.recorder.note("arm 'mtl' was trained as the starting point of the fine-tuning arms")
    train_centres = orc.centres("train", "receiver")
    names = [s.name for s in plan]
    private = any(prof.privacy.enabled for prof in orc.scenario.resolved_profiles.values())
    for n, seed in enumerate(orc.scenario.seeds):
        finals: dict[str, tuple[dict, ArrayRecord]] = {}
        for spec in plan:
            model = arm_model(p, spec)
            if orc.recorder.is_done(spec.name, seed):
                finals[spec.name] = (model, _final_arrays(orc, p, spec, seed))
                continue
            orc.console.rule(f"[bold]{spec.name}[/] seed {seed}")
            common = dict(
                arm=spec.name,
                seed=seed,
                message=TrainMtl,
                evaluate=EvaluateMtl,
                model=model,
                fields=arm_config(p, spec, seed)
                | (dp_config(p, spec, seed, plan) if private else {}),
                weighting=p.weighting,
            )
            if spec.finetune_u1 is None:
                final = train_rounds(
                    orc,
                    centres=train_centres,
                    arrays=initial_arrays(model, seed),
                    last_round=p.rounds,
                    **common,
                )
            elif "mtl" in finals:
                if private:
                    _inherit_privacy_records(orc, "mtl", spec.name, seed)
                final = train_rounds(
                    orc,
                    centres=p.finetune_centres,
                    arrays=finals["mtl"][1],
                    first_round=p.rounds + 1,
                    last_round=p.rounds + p.finetune_rounds,
                    **common,
                )
            else:
                orc.recorder.note(f"arm {spec.name} seed {seed}: skipped, arm 'mtl' failed")
                continue
            if final is None:
                continue
            ref = reference_arm(spec.name, names)
            _evaluate(
                orc,
                p,
                spec.name,
                seed,
                final,
                model,
                (ref, *finals[ref]) if ref in finals else None,
            )
            run_audits(
                orc,
                EvaluateMtlAudit,
                arm=spec.name,
                seed=seed,
                arrays=final,
                centres=train_centres,
                model=model,
                **audit_config(p, spec, seed),
            )
            orc.recorder.complete_arm(spec.name, seed)
            finals[spec.name] = (model, final)
        if n == 0:
            _latent_maps(orc, seed, finals)
    _write_tables(orc, p)
