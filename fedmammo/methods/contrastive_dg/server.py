"""Federated domain generalisation by contrastive pre-training (Li et al.): the server phases.

1. Styles (once per run, when an arm needs style variants): every training centre trains a
   tile DCGAN on its own breast tiles and shares it (``train.tile_generator``); every training
   centre then receives the others' generators and builds its style bank locally
   (``train.style_bank``; see :mod:`.styles` for why). The pooled what-if node builds its
   bank from the real vendors it holds.
2. Per seed and arm: FedAvg pre-training of the encoder and projection head over the
   training centres (``train.encoder`` rounds through
   :func:`~fedmammo.federation.rounds.train_rounds`, validated each round with
   ``evaluate.encoder``); ``random`` skips it, ``pooled`` trains at the pooled node with as
   many steps per round as all centres together.
3. Downstream, per task and detection label fraction. ``downstream: local``: every labelled
   centre fine-tunes the task from the arm's encoder (``train.downstream``) and the models
   are tested (``evaluate.downstream``): each labelled centre tests its own model (a seen
   vendor), each test-only centre tests all of them (an unseen vendor; metric averaged over
   the models). ``downstream: federated``: the server builds the task model (the arm's
   encoder + a task head drawn from the seed, not the arm) and ``downstream_rounds`` FedAvg
   rounds train it at the labelled centres (``train.downstream_round`` through
   :func:`~fedmammo.federation.rounds.train_rounds`, under the progress key
   :func:`downstream_key`: checkpointed, validated and resumable per round); the one final
   model is tested at every labelled and test-only centre. Every arm and seed share the
   patients, initial heads and test resamples.
4. Embedding maps of the first seed, drawn inside each training centre (``query.embeddings``),
   and the label-fraction plot (from the recorded metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import ArrayRecord

from fedmammo.errors import CentreSettingError, ConfigError
from fedmammo.federation.centre_models import model_with_weights
from fedmammo.federation.codec import state_to_arrays
from fedmammo.federation.messages import (
    ARRAYS,
    INFO,
    METRICS,
    EvaluationMetrics,
    model_record,
)
from fedmammo.federation.orchestrator import Orchestrator
from fedmammo.federation.rounds import initial_arrays, train_rounds
from fedmammo.methods.contrastive_dg.messages import (
    DownstreamMetrics,
    EmbeddingInfo,
    EvaluateDownstream,
    EvaluateEncoder,
    QueryEmbeddings,
    StyleBankMetrics,
    TileGeneratorInfo,
    TileGeneratorMetrics,
    TrainDownstream,
    TrainDownstreamRound,
    TrainEncoder,
    TrainStyleBank,
    TrainTileGenerator,
)
from fedmammo.methods.contrastive_dg.params import (
    SCHEMES,
    ContrastiveDgParams,
    FinetuneParams,
    metric_name,
)
from fedmammo.methods.contrastive_dg.report import (
    FRACTIONS_PLOT,
    META_KEY,
    plot_label_fractions,
    vendor_of,
)
from fedmammo.methods.contrastive_dg.styles import styles_key
from fedmammo.methods.contrastive_dg.tasks import STYLED_SCHEMES, initial_task_model
from fedmammo.seeds import derive_seed

__all__ = ["STYLES_ARM", "Plan", "downstream_key", "initial_task_arrays", "make_plan", "run"]

STYLES_ARM = "styles"  # progress key of the style phase (once per run)


@dataclass
class Plan:
    """Who does what: training (seen) centres, labelled ones, test-only (unseen) ones, arms."""

    seen: list[str]
    unseen: list[str]
    labelled: list[str]
    arms: list[str]
    pooled: bool
    notes: list[str] = field(default_factory=list)


def make_plan(orc: Orchestrator, p: ContrastiveDgParams) -> Plan:
    """Check the recipe against the scenario; refuse DP centres; drop ``pooled`` when no
    pooled node exists (deployment)."""
    seen, unseen = orc.centres("train", "receiver"), orc.centres("test")
    if not seen:
        raise ConfigError("contrastive_dg needs training centres (role: train)")
    private = [c for c in seen if orc.scenario.resolved_profiles[c].privacy.enabled]
    if private:
        raise CentreSettingError(
            f"contrastive_dg: centres {private} ask for DP, but contrastive pre-training "
            "cannot run under DP-SGD (the NT-Xent loss of an image depends on the other "
            "images of its batch, so per-example clipping bounds no patient's influence). "
            "Fix: remove their privacy settings for this scenario",
            centres=private,
            key="privacy",
        )
    labelled = list(p.downstream_centres) or seen
    wrong = [c for c in labelled if c not in seen]
    if wrong:
        raise ConfigError(
            f"params.downstream_centres {wrong} are not training centres of scenario "
            f"{orc.scenario.name!r}; valid: {seen}"
        )
    styled = [a for a in p.arms if SCHEMES.get(a) in STYLED_SCHEMES]
    if styled and len(seen) < 2:
        raise ConfigError(
            f"arms {styled} train on other vendors' styles: they need at least two training "
            f"centres (vendors); scenario {orc.scenario.name!r} has {seen}"
        )
    arms, notes = list(p.arms), []
    pooled = "pooled" in arms and "pooled" in orc.nodes and not orc.spec.deployment
    if "pooled" in arms and not pooled:
        arms.remove("pooled")
        notes.append("arm pooled skipped: no pooled node (deployment runs cannot pool data)")
    if not unseen:
        notes.append("no test-only centre: the unseen-vendor columns stay empty")
    return Plan(seen, unseen, labelled, arms, pooled, notes)


def _dirs(orc: Orchestrator) -> dict[str, str]:
    """Server paths for the centres' stores and figures (simulation; deployed centres ignore)."""
    if orc.spec.deployment:
        return {"store_dir": "", "plot_dir": ""}
    return {"store_dir": str(orc.run_dir / "centres"), "plot_dir": str(orc.run_dir / "plots")}


def _styles(orc: Orchestrator, p: ContrastiveDgParams, plan: Plan, key: str) -> None:
    """Phase 1: tile generators shared; every training centre builds its style bank."""
    seed = orc.scenario.seeds[0]
    if orc.recorder.is_done(STYLES_ARM, seed):
        return
    orc.console.rule("[bold]styles: tile generators, then each centre's style bank[/]")
    tiles, dirs = p.styles.tiles.model_dump(), _dirs(orc)
    contents = {
        c: orc.message(
            TrainTileGenerator, arm=STYLES_ARM, seed=derive_seed(seed, c, "tiles"), tiles=tiles
        ).content()
        for c in plan.seen
    }
    replies, failures = orc.send(TrainTileGenerator.KIND, contents)
    orc.record_failures(failures, arm=STYLES_ARM, seed=seed, rnd=None, phase="tile generator")
    gens: dict[str, tuple[TileGeneratorInfo, ArrayRecord]] = {}
    for c, content in replies.items():
        gens[c] = (TileGeneratorInfo.from_config(content[INFO]), content[ARRAYS])
        sent = TileGeneratorMetrics.from_metrics(content[METRICS])
        orc.recorder.add(
            [{"metric": "tile_generator_steps", "value": sent.steps}],
            arm=STYLES_ARM,
            seed=seed,
            centre=c,
            split="styles",
        )
    contents = {}
    for c in [*plan.seen, *(["pooled"] if plan.pooled else [])]:
        others = [o for o in plan.seen if o != c and o in gens] if c != "pooled" else []
        m = orc.message(
            TrainStyleBank,
            arm=STYLES_ARM,
            seed=derive_seed(seed, c, "styles"),
            generators=[dict(gens[o][0].to_config()) for o in others],
            tiles=tiles,
            cyclegan=p.styles.cyclegan.model_dump(),
            grid_images=p.styles.grid_images,
            styles=key,
            **dirs,
        )
        contents[c] = m.content({model_record(k): gens[o][1] for k, o in enumerate(others)})
    replies, failures = orc.send(TrainStyleBank.KIND, contents)
    orc.record_failures(failures, arm=STYLES_ARM, seed=seed, rnd=None, phase="style bank")
    for c, content in replies.items():
        sent = StyleBankMetrics.from_metrics(content[METRICS])
        orc.recorder.add(
            [
                {"metric": "n_styles", "value": sent.n_styles},
                {"metric": "cyclegan_steps", "value": sent.steps},
            ],
            arm=STYLES_ARM,
            seed=seed,
            centre=c,
            split="styles",
        )
        orc.console.print(f"  {c}: {sent.n_images} images in {sent.n_styles} styles")
    orc.recorder.complete_arm(STYLES_ARM, seed)


def encoder_spec(p: ContrastiveDgParams, arm: str) -> dict:
    """The model spec of an arm's encoder (the supervised arm's head gives 2 logits)."""
    return p.encoder.spec(classes=2 if arm == "supervised" else None)


def _encoder(
    orc: Orchestrator, p: ContrastiveDgParams, plan: Plan, arm: str, seed: int, key: str
) -> ArrayRecord | None:
    """The arm's pre-trained encoder (random init for ``random``), resumed where it stopped."""
    spec = encoder_spec(p, arm)
    init = initial_arrays(spec, seed)
    if arm == "random":
        return init
    if orc.recorder.is_done(arm, seed):
        return orc.load_checkpoint(arm, seed, orc.recorder.last_round(arm, seed))
    scheme = SCHEMES[arm]
    pretrain = p.pretrain.model_dump()
    fields = {
        "scheme": scheme,
        "pretrain": pretrain,
        "styles": key if scheme in STYLED_SCHEMES else "",
        "store_dir": _dirs(orc)["store_dir"],
        "steps_scale": len(plan.seen) if arm == "pooled" else 1,
    }
    orc.console.rule(f"[bold]{arm}[/] seed {seed}: pre-training ({scheme})")
    return train_rounds(
        orc,
        arm=arm,
        seed=seed,
        centres=["pooled"] if arm == "pooled" else plan.seen,
        arrays=init,
        weighting=p.weighting,
        message=TrainEncoder,
        evaluate=EvaluateEncoder,
        model=spec,
        fields=fields,
        evaluate_fields={"scheme": scheme, "pretrain": pretrain},
    )


def _downstream_job(
    orc: Orchestrator,
    p: ContrastiveDgParams,
    plan: Plan,
    arm: str,
    seed: int,
    arrays: ArrayRecord,
    task: str,
    fraction: float,
) -> None:
    """Fine-tune one task at the labelled centres, test at every centre, record."""
    name, spec, ft = metric_name(task, fraction), encoder_spec(p, arm), p.finetune.model_dump()
    common = {"arm": arm, "model": spec, "task": task, "fraction": fraction, "finetune": ft}
    contents = {
        c: orc.message(
            TrainDownstream, seed=derive_seed(seed, task, fraction, c), **common
        ).content({ARRAYS: arrays})
        for c in plan.labelled
    }
    replies, failures = orc.send(TrainDownstream.KIND, contents)
    orc.record_failures(failures, arm=arm, seed=seed, rnd=None, phase=f"fine-tune {name}")
    models = {c: replies[c][ARRAYS] for c in plan.labelled if c in replies}
    for c in models:
        sent = DownstreamMetrics.from_metrics(replies[c][METRICS])
        orc.recorder.add(
            [
                {"metric": f"{name}.train_loss", "value": sent.train_loss},
                {"metric": f"{name}.n_patients", "value": sent.n_patients},
                {"metric": f"{name}.compute_seconds", "value": sent.compute_seconds},
            ],
            arm=arm,
            seed=seed,
            centre=c,
            split="finetune",
        )
    if not models:
        return
    jobs = {c: [c] for c in models} | {u: list(models) for u in plan.unseen}
    _test_downstream(orc, p, arm, seed, common, models, jobs)


def downstream_key(arm: str, task: str, fraction: float) -> str:
    """Progress key (and checkpoint folder) of one federated downstream job's rounds:
    ``msvcl.detection_ap50@0.25``; its per-round records (train loss, validation, timing)
    are kept under it, the final test records under the arm."""
    return f"{arm}.{metric_name(task, fraction)}"


def initial_task_arrays(
    spec: dict,
    encoder: ArrayRecord,
    task: str,
    fraction: float,
    ft: FinetuneParams,
    *,
    image_size: tuple[int, int],
    seed: int,
) -> ArrayRecord:
    """The federated task model's start: the encoder's backbone and a task head drawn from
    ``seed``, task and fraction (every arm starts from the same head)."""
    net = model_with_weights(spec, encoder)
    head_seed = derive_seed(seed, task, fraction, "head")
    model = initial_task_model(task, net, ft, image_size=image_size, seed=head_seed)
    return state_to_arrays(model.state_dict())


def _test_downstream(
    orc: Orchestrator,
    p: ContrastiveDgParams,
    arm: str,
    seed: int,
    common: dict,
    models: dict[str, ArrayRecord],
    jobs: dict[str, list[str]],
) -> None:
    """Test the task ``models`` (source -> weights): ``jobs`` centre -> the sources it tests."""
    name = metric_name(common["task"], common["fraction"])
    contents = {
        c: orc.message(
            EvaluateDownstream,
            seed=derive_seed(seed, common["task"], c, "eval"),
            sources=sources,
            n_boot=p.bootstrap,
            **common,
        ).content({model_record(k): models[s] for k, s in enumerate(sources)})
        for c, sources in jobs.items()
    }
    replies, failures = orc.send(EvaluateDownstream.KIND, contents)
    orc.record_failures(failures, arm=arm, seed=seed, rnd=None, phase=f"test {name}")
    values = []
    for c, content in replies.items():
        records = EvaluationMetrics.from_metrics(content[METRICS]).records
        orc.recorder.add(records, arm=arm, seed=seed, centre=c, split="test")
        values += [f"{c} {r['value']:.3f}" for r in records if r["value"] is not None]
    orc.console.print(f"  {arm} seed {seed} {name}: {', '.join(values)}", highlight=False)


def _federated_downstream_job(
    orc: Orchestrator,
    p: ContrastiveDgParams,
    plan: Plan,
    arm: str,
    seed: int,
    arrays: ArrayRecord,
    task: str,
    fraction: float,
) -> None:
    """FedAvg rounds of one task at the labelled centres, then the final model tested at
    every labelled (seen) and test-only (unseen) centre, recorded under the arm."""
    name, spec = metric_name(task, fraction), encoder_spec(p, arm)
    job = {"task": task, "fraction": fraction, "finetune": p.finetune.model_dump()}
    key = downstream_key(arm, task, fraction)
    size = tuple(orc.scenario.image_size)
    init = initial_task_arrays(spec, arrays, task, fraction, p.finetune, image_size=size, seed=seed)
    final = train_rounds(
        orc,
        arm=key,
        seed=seed,
        centres=plan.labelled,
        arrays=init,
        weighting=p.weighting,
        message=TrainDownstreamRound,
        evaluate=EvaluateDownstream,
        model=spec,
        fields={**job, "patients_seed": seed, "rounds": p.downstream_rounds},
        evaluate_fields=job,
        last_round=p.downstream_rounds,
    )
    if final is None:
        orc.recorder.note(f"arm {arm} seed {seed} {name}: no federated task model (rounds failed)")
        return
    losses = [
        r["value"]
        for r in orc.recorder.metrics
        if (r["arm"], r["seed"], r["metric"], r["split"]) == (key, seed, "train_loss", "train")
    ]
    if losses:
        orc.recorder.add(
            [{"metric": f"{name}.train_loss", "value": losses[-1]}],
            arm=arm,
            seed=seed,
            centre="all",
            split="finetune",
        )
    jobs = {c: ["federated"] for c in [*plan.labelled, *plan.unseen]}
    common = {"arm": arm, "model": spec, **job}
    _test_downstream(orc, p, arm, seed, common, {"federated": final}, jobs)


def _embeddings(
    orc: Orchestrator,
    p: ContrastiveDgParams,
    plan: Plan,
    seed: int,
    finals: dict[str, ArrayRecord],
    key: str,
) -> None:
    """Ask every training centre to draw its embedding map (only the figure is written)."""
    arms = [a for a in p.embedding_arms if a in finals]
    if not arms:
        return
    models = {a: encoder_spec(p, a) for a in arms}
    contents = {
        c: orc.message(
            QueryEmbeddings,
            arm="+".join(arms),
            seed=seed,
            models=models,
            method=p.embedding_method,
            styles=key if p.needs_styles() else "",
            **_dirs(orc),
        ).content({model_record(k): finals[a] for k, a in enumerate(arms)})
        for c in plan.seen
    }
    replies, failures = orc.send(QueryEmbeddings.KIND, contents)
    orc.record_failures(failures, arm="+".join(arms), seed=seed, rnd=None, phase="embeddings")
    for c, content in replies.items():
        info = EmbeddingInfo.from_metrics(content[METRICS])
        for arm, value in info.silhouette.items():
            orc.recorder.add(
                [{"metric": "vendor_silhouette", "value": value}],
                arm=arm,
                seed=seed,
                centre=c,
                split="embedding",
            )
    if replies:
        where = "each centre's <output-dir>/plots" if orc.spec.deployment else "plots/"
        orc.recorder.note(
            f"embedding maps `embeddings_<centre>.png` ({', '.join(arms)}, seed {seed}) in "
            f"{where}: each training centre's test images in its own style and translated "
            "into the other seen styles, drawn inside the centre"
        )


def _notes(orc: Orchestrator, p: ContrastiveDgParams, plan: Plan) -> None:
    for note in plan.notes:
        orc.recorder.note(note)
    if plan.pooled:
        orc.recorder.note(
            "arm 'pooled' is a simulation-only upper reference: MSVCL on the training centres' "
            "images moved to one place, CycleGANs trained between the real vendors"
        )
    orc.recorder.note(
        f"NT-Xent temperature tau = {p.pretrain.tau} (the paper gives none); no ImageNet "
        "weights can be downloaded, so every encoder starts from random initialisation and "
        "'supervised' pre-trains on whole-image malignancy labels instead"
    )
    if p.needs_styles():
        where = "each centre's <output-dir>/plots" if orc.spec.deployment else "plots/"
        orc.recorder.note(
            f"style sample grids `style_samples_<centre>.png` in {where}: drawn inside each "
            "centre; only tile generators left the centres, never images"
        )


def run(orc: Orchestrator) -> None:
    """Styles, then per seed and arm: pre-training, downstream tasks; maps and tables."""
    p: ContrastiveDgParams = orc.params
    plan = make_plan(orc, p)
    orc.recorder.meta[META_KEY] = {
        "seen": plan.seen,
        "unseen": plan.unseen,
        "labelled": plan.labelled,
        "arms": plan.arms,
        "tasks": list(p.tasks),
        "fractions": list(p.fractions),
        "downstream": p.downstream,
        "downstream_rounds": p.downstream_rounds if p.downstream == "federated" else None,
        "vendors": {c: vendor_of(orc.scenario, c) for c in [*plan.seen, *plan.unseen]},
    }
    first = orc.scenario.seeds[0]
    key = styles_key(first, p.styles.model_dump(), orc.scenario.image_size, orc.scenario.data_seed)
    if p.needs_styles():
        _styles(orc, p, plan, key)
    for n, seed in enumerate(orc.scenario.seeds):
        finals: dict[str, ArrayRecord] = {}
        for arm in plan.arms:
            arrays = _encoder(orc, p, plan, arm, seed, key)
            if arrays is None:
                orc.recorder.note(f"arm {arm} seed {seed}: no encoder (pre-training failed)")
                continue
            finals[arm] = arrays
            if orc.recorder.is_done(arm, seed):
                continue
            orc.console.rule(f"[bold]{arm}[/] seed {seed}: downstream tasks")
            job = _federated_downstream_job if p.downstream == "federated" else _downstream_job
            for task in p.tasks:
                for fraction in p.fractions if task == "detection" else [1.0]:
                    job(orc, p, plan, arm, seed, arrays, task, fraction)
            orc.recorder.complete_arm(arm, seed)
        if n == 0:
            _embeddings(orc, p, plan, seed, finals, key)
    _notes(orc, p, plan)
    if "detection" in p.tasks and len(p.fractions) > 1:
        path = plot_label_fractions(orc.recorder.frame(), orc.recorder.meta[META_KEY], orc.run_dir)
        if path is not None:
            orc.recorder.note(f"label-fraction plot (detection AP50 by fraction): {FRACTIONS_PLOT}")
    orc.recorder.flush()
