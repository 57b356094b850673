"""The periodic-sampling runner (paper 000): baselines, pooled and federated arms, tables.

The federated P. sampling arm uses :class:`~.strategy.PeriodicFedAvg`.

Reduction to centralised periodic sampling: with ``batches_per_round = 1`` and plain SGD the
averaged update of a round equals the centralised step on the same batch, because the quota
weights ``q_c / |B|`` turn the centres' mean gradients into the mean gradient over the whole
window; with one stream seed per arm and segment keys unique across centres the centres even
draw the same images, in the same label alternation, as ``PeriodicBatchSampler`` does
centrally (derivation in :mod:`fedmammo.methods.periodic_sampling.quota`). Several steps
per round, Adam (each centre keeps its own optimizer state across rounds) and BatchNorm
(statistics of each centre's sub-batch) make it an approximation; the segment proportions per
pattern cycle hold always.

The runner (kind ``periodic_sampling``) trains, per seed: the baselines (one training segment
each, at its centre), then per experiment (a list of training segments) and setting the
methods Bal. labels, Bal. segments and P. sampling: ``pooled`` at the simulation-only pooled
node with the centralised samplers, ``federated`` with the segments at their centres (FedAvg
with a local sampler, or :class:`PeriodicFedAvg`, also with image-count and uniform weights;
every weight is the count the centre reports, the weighting per arm in ``meta.weighting``).
Each arm is validated every round (on the pooled node when there is one, so global and local
metrics come from one place), then tested inside every test centre against its baseline
(``evaluate.periodic``); figures are drawn inside the centres (``query.periodic_plots``) and
the tables of periodic-sampling paper (Tables 2-4 layout) are written to ``periodic_tables.md``,
printed,
and kept in ``results.json`` (``meta.periodic_tables``).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, RecordDict

from fedmammo.federation.messages import ARRAYS, METRICS, model_record
from fedmammo.federation.orchestrator import Orchestrator
from fedmammo.federation.privacy.server import ArmPrivacy, run_audits
from fedmammo.federation.rounds import (
    CentreFedAvg,
    initial_arrays,
    record_round,
    record_weighting,
    round_outcome,
    secure_round,
)
from fedmammo.methods.periodic_sampling.arms import ArmPlan, plan_arms
from fedmammo.methods.periodic_sampling.checkpoints import (
    ema_name,
    ema_update,
    final_model,
    tested_round,
)
from fedmammo.methods.periodic_sampling.messages import (
    EvaluatePeriodic,
    PeriodicPlots,
    TrainPeriodic,
    baseline_record,
)
from fedmammo.methods.periodic_sampling.params import PeriodicSamplingParams
from fedmammo.methods.periodic_sampling.report import (
    comparison_table,
    figures_note,
    plot_arm_learning_curves,
    print_tables,
    tables_markdown,
)
from fedmammo.methods.periodic_sampling.strategy import PeriodicFedAvg
from fedmammo.seeds import derive_seed

__all__ = ["run"]

TABLES_FILE = "periodic_tables.md"


def _strategy(orc: Orchestrator, p: PeriodicSamplingParams, arm: ArmPlan) -> CentreFedAvg:
    nodes = {c: orc.nodes[c] for c in arm.centres}
    minimum = min(p.min_centres, len(nodes))
    faults = [(f.centre, f.round) for f in orc.scenario.faults if f.arm == arm.name]
    rule = {
        "aggregation": getattr(p, "aggregation", "mean") if arm.setting == "federated" else "mean",
        "trim_fraction": getattr(p, "trim_fraction", 0.2),
    }
    if arm.setting == "federated" and arm.method == "periodic":
        return PeriodicFedAvg(
            nodes,
            counts=arm.counts,
            batches_per_round=p.batches_per_round,
            batch_size=p.train.batch_size,
            scheme=arm.weighting or "quota",
            min_centres=minimum,
            faults=faults,
            **rule,
        )
    weighting = arm.weighting if arm.setting == "federated" else "uniform"
    return CentreFedAvg(
        nodes,
        message=TrainPeriodic,
        weighting=weighting,
        min_centres=minimum,
        faults=faults,
        **rule,
    )


def _dp_centres(orc: Orchestrator, centres: list[str]) -> bool:
    profiles = orc.scenario.resolved_profiles
    return any(c in profiles and profiles[c].privacy.enabled for c in centres)


def _validation_sites(orc: Orchestrator, arm: ArmPlan) -> list[str]:
    return ["pooled"] if "pooled" in orc.nodes else [c for c in arm.centres if c != "pooled"]


def _secure_round(orc, p, strategy: CentreFedAvg, messages, seed: int, rnd: int):
    """One federated round under SecAgg+ (``secure_aggregation``), each centre weighing its
    update by its own count (quota, images, labelled) or uniformly, as the recipe says."""
    # a centre takes at most batches_per_round batches of train.batch_size in a round
    train = {"steps_per_epoch": p.batches_per_round, "batch_size": p.train.batch_size}
    out = secure_round(orc, strategy, messages, seed=seed, rnd=rnd, train=train)
    if isinstance(strategy, PeriodicFedAvg):  # centres without a quota were not asked
        strategy.failures = {c: r for c, r in strategy.failures.items() if c in strategy.quotas}
    return out


def _train_arm(
    orc: Orchestrator, p: PeriodicSamplingParams, arm: ArmPlan, seed: int, arrays: ArrayRecord
) -> ArrayRecord | None:
    """Rounds ``1..p.rounds`` of one arm, validated and checkpointed every round (resumable).

    With ``ema_decay`` the server keeps the moving average of the weights (from the initial
    model, one update per round) and validates that; training continues from the weights.

    DP (:class:`ArmPrivacy`): every train message names the arm's ledger and planned rounds;
    replies' privacy records go to privacy.json. When a centre refuses a round (budget), the
    arm stops and the model of the last completed round is final (None if round 1).
    """
    model = p.model.model_dump()
    start = orc.recorder.last_round(arm.name, seed)
    ema, initial = None, arrays
    if start:
        arrays = orc.load_checkpoint(arm.name, seed, start)
        if p.ema_decay is not None:
            ema = orc.load_checkpoint(ema_name(arm.name), seed, start)
    strategy = _strategy(orc, p, arm)
    record_weighting(orc, arm.name, strategy)
    dp = ArmPrivacy(
        orc, arm=arm.name, seed=seed, centres=arm.centres, first_round=1, last_round=p.rounds
    )
    if isinstance(strategy, PeriodicFedAvg) and _dp_centres(orc, arm.centres):
        strategy.planned_rounds = p.rounds
    stream_seed = derive_seed(seed, "stream", arm.method)
    secure = getattr(p, "secure_aggregation", False) and arm.setting == "federated"
    for rnd in range(start + 1, p.rounds + 1):
        strategy.node_config = dp.node_config(arm.centres)  # the record as of the last round
        cfg = orc.message(
            TrainPeriodic,
            arm=arm.name,
            seed=seed,
            model=model,
            train=p.train.model_dump(),
            batchnorm=p.batchnorm,
            segments=list(arm.segments),
            run_seed=seed,
            sampler=arm.method,
            steps=p.batches_per_round,
            stream_seed=stream_seed,
            stream_epoch=rnd - 1,
            **dp.config(),
        )
        messages = list(strategy.configure_train(rnd, arrays, cfg.to_config(), orc.grid))
        if secure and len(messages) > 1:  # (a one-centre round's average is its update)
            replies, new_arrays, metrics = _secure_round(orc, p, strategy, messages, seed, rnd)
        else:
            replies = orc.exchange(messages, timeout=orc.timeout)
            new_arrays, metrics = strategy.aggregate_train(rnd, replies)
        orc.record_failures(strategy.failures, arm=arm.name, seed=seed, rnd=rnd, phase="train")
        names = {n: c for c, n in strategy.centre_nodes.items()}
        if dp.after_round(rnd, replies, names, strategy.failures):  # a centre refused
            return arrays if rnd > 1 else None
        if round_outcome(
            orc,
            strategy,
            len(messages),
            arm=arm.name,
            seed=seed,
            rnd=rnd,
            stopped=new_arrays is None,
        ):
            return None
        arrays = new_arrays
        record_round(orc, strategy, metrics, replies, arm=arm.name, seed=seed, rnd=rnd)
        if p.ema_decay is not None:  # what is validated and tested: the moving average
            ema = ema_update(ema or initial, arrays, p.ema_decay**p.batches_per_round)
            orc.checkpoint(ema_name(arm.name), seed, rnd, ema, model=model)
        orc.evaluate_everywhere(
            EvaluatePeriodic,
            arm=arm.name,
            seed=seed,
            arrays=arrays if ema is None else ema,
            centres=_validation_sites(orc, arm),
            split="val",
            rnd=rnd,
            model=model,
            n_boot=0,
            segments=list(arm.segments),
            batchnorm=p.batchnorm,
        )
        orc.checkpoint(arm.name, seed, rnd, arrays, model=model)
        orc.recorder.complete_round(arm.name, seed, rnd)
        orc.console.print(f"  {arm.name} seed {seed}: round {rnd}/{p.rounds} done")
    return arrays


def _test_segments(orc: Orchestrator) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for c in orc.centres("test"):
        segs = {k.split("|")[2] for k in orc.counts.get(c, {}) if k.startswith("n|test|")}
        if segs:
            out[c] = sorted(segs)
    return out


def _test_arm(
    orc: Orchestrator,
    p: PeriodicSamplingParams,
    arm: ArmPlan,
    seed: int,
    finals: dict[str, ArrayRecord],
) -> None:
    """Evaluate one arm inside every test centre, against each test segment's baseline."""
    contents = {}
    for centre, segments in _test_segments(orc).items():
        groups: dict[str, list[str]] = {}
        for s in segments:
            base = p.baseline_of(s)
            if base is not None and f"baseline-{base}" in finals and arm.setting != "baseline":
                groups.setdefault(f"baseline-{base}", []).append(s)
        m = orc.message(
            EvaluatePeriodic,
            arm=arm.name,
            seed=derive_seed(seed, centre, "test"),
            run_seed=seed,
            split="test",
            model=p.model.model_dump(),
            batchnorm=p.batchnorm,
            n_boot=p.bootstrap,
            model_round=tested_round(orc, arm.name, seed),
            baselines=[
                {"name": b, "segments": s, "round": tested_round(orc, b, seed)}
                for b, s in groups.items()
            ],
        )
        records = {ARRAYS: finals[arm.name]}
        records |= {baseline_record(j): finals[base] for j, base in enumerate(groups)}
        contents[centre] = m.content(records)
    if not contents:
        orc.recorder.note("no test centre with test images: nothing to tabulate")
        return
    replies, failures = orc.send(EvaluatePeriodic.KIND, contents)
    orc.record_failures(failures, arm=arm.name, seed=seed, rnd=None, phase="evaluate-test")
    for centre, content in replies.items():
        orc.recorder.add(
            EvaluatePeriodic.REPLY.from_metrics(content[METRICS]).records,
            arm=arm.name,
            seed=seed,
            centre=centre,
            split="test",
        )


def _plots(
    orc: Orchestrator,
    p: PeriodicSamplingParams,
    plan: list[ArmPlan],
    seed: int,
    finals: dict[str, ArrayRecord],
) -> None:
    """Figures of one seed: learning curves here, ROC curves and histograms inside centres."""
    plot_dir = orc.run_dir / "plots"
    meta = {a.name: a.meta() for a in plan}
    groups: dict[tuple[str, str], list[ArmPlan]] = {}
    for a in plan:
        if a.experiment is not None and a.name in finals:
            groups.setdefault((a.experiment, a.setting), []).append(a)
    test_segments = _test_segments(orc)
    for (exp, setting), arms in groups.items():
        plot_arm_learning_curves(
            orc.recorder.frame(),
            {a.name: meta[a.name] for a in arms},
            plot_dir / f"learning_curves_{exp}_{setting}_seed{seed}.png",
            seed=seed,
            steps_per_round=p.batches_per_round,
            title=f"{exp} ({setting}): validation metrics, seed {seed}",
        )
        jobs = [(c, "val", arms, list(arms[0].segments)) for c in _validation_sites(orc, arms[0])]
        for c, segments in test_segments.items():
            bases = sorted(
                {f"baseline-{p.baseline_of(s)}" for s in segments if p.baseline_of(s) is not None}
                & set(finals)
            )
            jobs.append((c, "test", [a for a in plan if a.name in bases] + arms, None))
        for split in ("val", "test"):  # one message per centre and split
            contents: dict[str, RecordDict] = {}
            for c, _, models, segments in (j for j in jobs if j[1] == split):
                tested = [
                    {"arm": a.name, "seed": seed, "round": tested_round(orc, a.name, seed)}
                    for a in models
                ]
                query = orc.message(
                    PeriodicPlots,
                    arms=[m.label for m in models],
                    model=p.model.model_dump(),
                    split=split,
                    stem=f"{split}_{exp}_{setting}_{c}_seed{seed}",
                    title=f"{exp} ({setting}), {split} split at {c}",
                    plot_dir="" if orc.spec.deployment else str(plot_dir),
                    segments=segments or None,
                    fedbn=tested if p.batchnorm == "local" else None,
                )
                contents[c] = query.content(
                    {model_record(k): finals[m.name] for k, m in enumerate(models)}
                )
            if contents:
                _, failures = orc.send(PeriodicPlots.KIND, contents)
                orc.record_failures(
                    failures, arm=f"{exp}-{setting}", seed=seed, rnd=None, phase=f"plots-{split}"
                )
    where = "each centre's <output-dir>/plots" if orc.spec.deployment else "plots/"
    orc.recorder.note(figures_note(where))


def _write_tables(orc: Orchestrator, p: PeriodicSamplingParams, plan: list[ArmPlan]) -> None:
    meta = {a.name: a.meta() for a in plan}
    frame = orc.recorder.frame()
    order = [s for segs in _test_segments(orc).values() for s in segs]
    tables = {
        exp: {
            seed: comparison_table(frame, meta, experiment=exp, seed=seed, segments=order)
            for seed in orc.scenario.seeds
        }
        for exp in p.experiments
    }
    print_tables(tables, orc.console)
    stopped = [s["stopped"] for s in orc.recorder.progress.values() if s.get("stopped")]
    markdown = tables_markdown(tables, p.experiments, stopped)
    (orc.run_dir / TABLES_FILE).write_text(markdown)
    orc.recorder.meta["periodic_tables_markdown"] = markdown
    orc.recorder.meta["periodic_tables"] = {
        exp: {str(seed): by_seg for seed, by_seg in by_seed.items()}
        for exp, by_seed in tables.items()
    }
    orc.recorder.note(
        f"periodic-sampling paper tables (Tables 2-4 layout: AUC, ΔAUC with CI and p-value vs "
        f"the baseline, per test segment): {TABLES_FILE}"
    )
    orc.recorder.flush()


def run(orc: Orchestrator) -> None:
    """Baselines and every experiment x setting x method arm per seed; tests, tables, figures."""
    p: PeriodicSamplingParams = orc.params
    plan, notes = plan_arms(p, orc.counts, pooled="pooled" in orc.nodes)
    for note in notes:
        orc.recorder.note(note)
    orc.recorder.meta["periodic_arms"] = {a.name: a.meta() for a in plan}
    orc.recorder.meta["batches_per_round"] = p.batches_per_round
    if "pooled" in orc.nodes:
        orc.recorder.note(
            "pooled arms are a simulation-only what-if (all training segments at "
            "one site, the periodic-sampling paper's setting); validation of every arm ran on the "
            "pooled node so that global and per-segment metrics share one set"
        )
    for n, seed in enumerate(orc.scenario.seeds):
        init = initial_arrays(p.model.model_dump(), seed)
        finals: dict[str, ArrayRecord] = {}
        for arm in plan:
            if orc.recorder.is_done(arm.name, seed):  # last round: earlier if a centre refused
                finals[arm.name] = final_model(orc, p, arm.name, seed)
                continue
            orc.console.rule(f"[bold]{arm.name}[/] seed {seed}")
            if _train_arm(orc, p, arm, seed, init) is None:
                continue
            final = finals[arm.name] = final_model(orc, p, arm.name, seed)
            _test_arm(orc, p, arm, seed, finals)
            run_audits(
                orc,
                arm=arm.name,
                seed=seed,
                arrays=final,
                centres=arm.centres,
                model=p.model.model_dump(),
                batchnorm=p.batchnorm,
                model_round=tested_round(orc, arm.name, seed),
                segments=arm.segments,
            )
            orc.recorder.complete_arm(arm.name, seed)
        if p.plots and n == 0:
            _plots(orc, p, plan, seed, finals)
    _write_tables(orc, p, plan)
