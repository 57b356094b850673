"""The CycleGAN-UDA paper's (004) experiment as a federation: a film centre and a digital
centre, each the other's source and target.

Per seed and direction (source S -> target T), when a ``uda`` arm runs:

1. S trains a DCGAN on square breast tiles of its own images and sends its generator
   (``train.uda_tile_generator``): the only trace of S's domain that leaves S.
2. The server forwards it to T, which trains a CycleGAN between its own tiles and tiles
   sampled from S's generator and sends back only ``G``: S's style -> T's style
   (``train.uda_translator``). The server keeps it in ``translators/`` (a resumed run reuses
   it).

Then per classifier (``models``) and arm, in both directions: the training centre (S for
``source_only`` and ``uda``, T for ``in_domain``) trains the classifier from the same
initial weights (``train.uda_classifier``; in ``uda`` on its images plus their translations
by ``G``, made inside S) and T tests it (``evaluate.uda_classifier``): records ``<arm>-<model>``
at centre T, split ``test``, metric ``auc`` with its 95 % CI. The direction of a
record is its centre: T = the digital centre is film -> digital, and the reverse. S also tests
its own ``source_only`` and ``uda`` classifiers (the paper's same-domain rows): records
``<arm>-<model>-same_domain`` at centre S.

Only weights and metrics move: generator weights (S -> server -> T), the translator (T ->
server -> S), classifier weights (trainer -> server -> T, and back to S for its same-domain
test).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord

from fedmammo.federation.messages import ARRAYS, BASELINE, METRICS
from fedmammo.federation.orchestrator import Orchestrator
from fedmammo.methods.cyclegan_uda.messages import (
    GENERATOR,
    TRANSLATOR,
    EvaluateUdaClassifier,
    TileGeneratorMetrics,
    TrainTileGenerator,
    TrainTranslator,
    TrainUdaClassifier,
    TranslatorMetrics,
    UdaTrainMetrics,
)
from fedmammo.methods.cyclegan_uda.params import (
    SOURCE_ARMS,
    CycleGanUdaParams,
    arm_name,
    same_domain_arm,
)
from fedmammo.methods.cyclegan_uda.plan import check_centres, tile_unit, translator_unit
from fedmammo.methods.cyclegan_uda.report import DIRECTIONS_META
from fedmammo.models.gans import GeneratorDescription
from fedmammo.seeds import derive_seed, evaluation_seed

__all__ = ["TRANSLATORS_DIR", "run"]

TRANSLATORS_DIR = "translators"


def _record(orc: Orchestrator, unit: str, seed: int, centre: str, values: dict) -> None:
    orc.recorder.add(
        [{"metric": k, "value": float(v)} for k, v in values.items()],
        arm=unit,
        seed=seed,
        centre=centre,
        split="generator",
    )
    orc.recorder.complete_arm(unit, seed)


def _tile_generator(
    orc: Orchestrator, p: CycleGanUdaParams, source: str, seed: int
) -> tuple[GeneratorDescription, ArrayRecord] | None:
    """Step 1: the source centre's tile generator (weights and description), None on failure."""
    unit = tile_unit(source)
    m = orc.message(
        TrainTileGenerator, arm=unit, seed=derive_seed(seed, unit), tiles=p.tiles.model_dump()
    )
    replies, failures = orc.send(m.KIND, {source: m.content()})
    orc.record_failures(failures, arm=unit, seed=seed, rnd=None, phase=m.KIND)
    if source not in replies:
        return None
    info = TileGeneratorMetrics.from_metrics(replies[source][METRICS])
    desc = GeneratorDescription(
        kind="dcgan",
        patch_size=info.tile_size,
        latent_dim=info.latent_dim,
        width=info.width,
        n_training_patches=info.n_tiles,
        epochs=info.epochs,
        centre=source,
    )
    _record(
        orc,
        unit,
        seed,
        source,
        {"n_tiles": info.n_tiles, "generator_steps": info.generator_steps},
    )
    return desc, replies[source][GENERATOR]


def _translator(
    orc: Orchestrator, p: CycleGanUdaParams, source: str, target: str, seed: int
) -> ArrayRecord | None:
    """Step 2: the target centre's CycleGAN generator source -> target (saved, reused)."""
    unit = translator_unit(source, target)
    path = orc.run_dir / TRANSLATORS_DIR / f"{source}_to_{target}_seed{seed}.pt"
    if path.is_file() and orc.recorder.is_done(unit, seed):
        return ArrayRecord(torch.load(path, weights_only=True))
    shared = _tile_generator(orc, p, source, seed)
    if shared is None:
        return None
    desc, weights = shared
    m = orc.message(
        TrainTranslator,
        arm=unit,
        seed=derive_seed(seed, unit),
        generator_description=desc.to_dict(),
        tiles=p.tiles.model_dump(),
        cyclegan=p.cyclegan.model_dump(),
    )
    replies, failures = orc.send(m.KIND, {target: m.content({GENERATOR: weights})})
    orc.record_failures(failures, arm=unit, seed=seed, rnd=None, phase=m.KIND)
    if target not in replies:
        return None
    info = TranslatorMetrics.from_metrics(replies[target][METRICS])
    translator = replies[target][TRANSLATOR]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(translator.to_torch_state_dict(), path)
    _record(
        orc,
        unit,
        seed,
        target,
        {
            "steps": info.steps,
            "cycle_loss": info.cycle_loss,
            "identity_loss": info.identity_loss,
            "n_synthetic": info.n_synthetic,
            "n_own_tiles": info.n_own_tiles,
        },
    )
    orc.console.print(
        f"  translator {source} -> {target}: {info.steps} CycleGAN steps at {target}, "
        f"cycle loss {info.cycle_loss:.3f}",
        highlight=False,
    )
    return translator


def _tested(name: str, target: str) -> str:
    """The checkpoint name of arm record ``name``'s classifier of the direction into
    ``target`` (tested there, and at its source in a same-domain record)."""
    return f"{name}@{target}"


def _compare(
    orc: Orchestrator,
    p: CycleGanUdaParams,
    key: str,
    seed: int,
    pairs: list[tuple[str, str]],
    *,
    arm: str,
    at_source: bool,
) -> None:
    """``arm`` against ``source_only`` (model ``key``) per direction, paired on the test
    images of the target centre, or of the source centre with ``at_source`` (same-domain
    records); directions compared before a resume are skipped."""
    name, base = arm_name(arm, key), arm_name("source_only", key)
    record, baseline_record = (
        (same_domain_arm(name), same_domain_arm(base)) if at_source else (name, base)
    )
    contents = {}
    for source, target in pairs:
        centre = source if at_source else target
        kept = [orc.checkpoint_path(_tested(n, target), seed, 0) for n in (name, base)]
        compared = orc.recorder.has(record, seed, "delta_auc", centre=centre)
        if compared or not all(f.is_file() for f in kept):
            continue
        m = orc.message(
            EvaluateUdaClassifier,
            arm=record,
            seed=evaluation_seed(seed, centre),  # the resamples of both arms' own CIs
            split="test",
            model=p.models[key].model_dump(),
            n_boot=p.bootstrap,
            baseline=baseline_record,
        )
        arrays, baseline = (orc.load_checkpoint(_tested(n, target), seed, 0) for n in (name, base))
        contents[centre] = m.content({ARRAYS: arrays, BASELINE: baseline})
    if contents:
        orc.record_evaluations(EvaluateUdaClassifier, contents, arm=record, seed=seed, split="test")


def _gains_over_source_only(
    orc: Orchestrator, p: CycleGanUdaParams, key: str, seed: int, pairs: list[tuple[str, str]]
) -> None:
    """Per direction, ``uda`` and ``in_domain`` against ``source_only`` (model ``key``) at
    the target centre, and ``uda`` against it at the source centre (does UDA keep the source's
    performance?): ``baseline_auc``, ``delta_auc``, ``p_value`` records of the arm."""
    if "source_only" not in p.arms:
        return
    for arm in [a for a in p.arms if a != "source_only"]:
        _compare(orc, p, key, seed, pairs, arm=arm, at_source=False)
        if arm in SOURCE_ARMS:
            _compare(orc, p, key, seed, pairs, arm=arm, at_source=True)
    orc.recorder.flush()


def _train_and_test(
    orc: Orchestrator,
    p: CycleGanUdaParams,
    *,
    arm: str,
    key: str,
    seed: int,
    trainer: str,
    target: str,
    translator: ArrayRecord | None,
) -> None:
    """One arm in one direction: train at ``trainer``, test at ``target`` (and, for an arm of
    ``SOURCE_ARMS``, at ``trainer`` too: its same-domain record)."""
    name = arm_name(arm, key)
    spec = p.models[key].model_dump()
    m = orc.message(
        TrainUdaClassifier,
        arm=name,
        seed=derive_seed(seed, name, trainer, target),
        model=spec,
        init_seed=derive_seed(seed, key, "init"),  # every arm of a model starts the same
        train=p.train.model_dump(),
        translator_arch=(
            {"width": p.cyclegan.width, "n_blocks": p.cyclegan.n_blocks} if translator else {}
        ),
        target=target,
        plot_dir="" if orc.spec.deployment or translator is None else str(orc.run_dir / "plots"),
    )
    records = {TRANSLATOR: translator} if translator is not None else {}
    replies, failures = orc.send(m.KIND, {trainer: m.content(records)})
    orc.record_failures(failures, arm=name, seed=seed, rnd=None, phase=m.KIND)
    if trainer not in replies:
        return
    info = UdaTrainMetrics.from_metrics(replies[trainer][METRICS])
    orc.recorder.add(
        [
            {"metric": "train_loss", "value": info.train_loss},
            {"metric": "n_labelled", "value": info.num_labelled},
            {"metric": "n_translated", "value": info.n_translated},
            {"metric": "train_steps", "value": info.steps},  # uda's: twice, by epochs
        ],
        arm=name,
        seed=seed,
        centre=trainer,
        split="train",
    )
    orc.checkpoint(_tested(name, target), seed, 0, replies[trainer][ARRAYS], model=spec)  # gains
    tested = {name: target}
    if arm in SOURCE_ARMS:  # the same-domain row: tested on the trainer's own test images too
        tested[same_domain_arm(name)] = trainer
    for record, centre in tested.items():
        orc.evaluate_everywhere(
            EvaluateUdaClassifier,
            arm=record,
            seed=seed,
            arrays=replies[trainer][ARRAYS],
            centres=[centre],
            split="test",
            model=spec,
            n_boot=p.bootstrap,
        )
        auc = _test_auc(orc, record, centre)
        shown = "n/a" if auc is None else f"{auc:.3f}"
        orc.console.print(f"  {record} {trainer} -> {centre}: AUROC {shown}", highlight=False)


def _test_auc(orc: Orchestrator, record: str, centre: str) -> float | None:
    """The last whole-centre test AUROC of arm record ``record`` at ``centre`` (for the log)."""
    return next(
        (
            r["value"]
            for r in reversed(orc.recorder.metrics)
            if r["arm"] == record
            and r["centre"] == centre
            and r["metric"] == "auc"
            and r["segment"] is None
            and r["split"] == "test"
        ),
        None,
    )


def run(orc: Orchestrator) -> None:
    """Translators (when a uda arm runs), then every model x arm x direction, per seed."""
    p: CycleGanUdaParams = orc.params
    pairs = check_centres(orc.scenario, p)
    orc.recorder.meta[DIRECTIONS_META] = [list(pair) for pair in pairs]  # the report's rows
    for seed in orc.scenario.seeds:
        translators: dict[tuple[str, str], ArrayRecord | None] = {}
        if "uda" in p.arms and not all(orc.recorder.is_done(a, seed) for a in p.arm_names()):
            orc.console.rule(f"[bold]CycleGAN translators[/] seed {seed}")
            for source, target in pairs:
                translators[(source, target)] = _translator(orc, p, source, target, seed)
        for key in p.models:
            for arm in p.arms:
                name = arm_name(arm, key)
                if orc.recorder.is_done(name, seed):
                    continue
                orc.console.rule(f"[bold]{name}[/] seed {seed}")
                for source, target in pairs:
                    translator = translators.get((source, target)) if arm == "uda" else None
                    if arm == "uda" and translator is None:
                        orc.recorder.note(
                            f"arm {name} seed {seed}: {source} -> {target} skipped, no "
                            "translator (see failures)"
                        )
                        continue
                    _train_and_test(
                        orc,
                        p,
                        arm=arm,
                        key=key,
                        seed=seed,
                        trainer=target if arm == "in_domain" else source,
                        target=target,
                        translator=translator,
                    )
                orc.recorder.complete_arm(name, seed)
                if arm in SOURCE_ARMS:  # its same-domain records are kept on a resume too
                    orc.recorder.complete_arm(same_domain_arm(name), seed)
            _gains_over_source_only(orc, p, key, seed, pairs)
    orc.recorder.note(
        "records: arm '<source_only|in_domain|uda>-<model>' tested at the target centre "
        f"(split test, metric auc with its 95 % CI); {p.film} tests digital -> film, "
        f"{p.digital} tests film -> digital; arm '<source_only|uda>-<model>-same_domain': the "
        "same classifier tested at its own source centre (film -> film, digital -> digital)"
    )
    orc.recorder.note(
        f"translators (target centres' CycleGAN generators, source -> target) in "
        f"{TRANSLATORS_DIR}/; no pixel left any centre"
    )
    orc.recorder.flush()
