"""Sharing generators instead of images (GAN-sharing paper) with the CycleGAN-UDA paper's
translation arm.

Phase 1: every sharing centre an arm samples from trains one generator per (GAN kind, lesion
subset) on its own training lesion patches (``train.generator``, once per run, seeded by the
recipe's ``generator_seed``). Centres train in parallel; in a simulation one centre's generators
too, as many at once as the engine runs (one after another at a centre that trains under DP).
The server keeps what it received in ``generators/<centre>_<gan>_<subset>/``
(``gen-e<epoch>.pt`` state dicts of the snapshots plus ``description.json``: a
:class:`~fedmammo.models.gans.GeneratorDescription` whose ``extra`` holds the subset, training
parameters and the Frechet figures), so ``load_generators: <run dir>`` in another scenario
reuses them; an interrupted run reloads its own.

Phase 2: for each seed, lesion subset, data fraction and arm, the receiver trains and tests
its patch classifier (``train.patch_classifier``) with the arm's generators in the message.
The message seed depends on (seed, subset, fraction) only, so all arms of one seed share the
receiver's patient subset, own patches and initial weights: they differ only in what is
added. Test metrics are recorded as ``<arm>@<subset>-<percent>`` (split ``test``), the best
validation AUPRC and epoch under split ``val``, generator quality under split ``generator``.

The real-patch arm (``A+real_B``) moves pixels: it runs in simulation only, when B's profile
sets ``sharing.real_patches_in_simulation``, and is flagged in the console, in the notes of
``results.json`` and in a column of the tables (``share_gans_tables.md``, printed at the end).
"""

from __future__ import annotations

import json
import math
from functools import partial
from itertools import product
from pathlib import Path

from flwr.app import ArrayRecord, RecordDict

from fedmammo.errors import CentreSettingError, ConfigError
from fedmammo.evaluation.privacy_report import PRIVACY_FILE
from fedmammo.federation.console import safe
from fedmammo.federation.jobs import Job, JobResult
from fedmammo.federation.messages import METRICS, PRIVACY
from fedmammo.federation.orchestrator import Orchestrator
from fedmammo.federation.privacy.codec import decode_privacy
from fedmammo.federation.privacy.server import (
    generator_privacy_config,
    record_generator_privacy,
    record_generator_refusal,
)
from fedmammo.methods.share_gans.generators import (
    GENERATORS_DIR,
    SharedGenerator,
    check_patch_size,
    generator_name,
    load_shared_generator,
    save_shared_generator,
    saved_generator,
    untrained_generator,
)
from fedmammo.methods.share_gans.messages import (
    DESCRIPTION,
    EvaluatePatchGain,
    GeneratorInfo,
    GeneratorMetrics,
    TrainGenerator,
    TrainPatchClassifier,
    generator_record,
    snapshot_epoch,
)
from fedmammo.methods.share_gans.params import UNTRAINED, ArmSpec, ShareGansParams
from fedmammo.methods.share_gans.report import (
    MOVED,
    build_gan_tables,
    classifier_arm,
    generator_table,
    print_tables,
    record_arm,
    tables_markdown,
)
from fedmammo.models.gans import GeneratorDescription
from fedmammo.seeds import derive_seed
from fedmammo.training.gan import hyperparameters

__all__ = ["TABLES_FILE", "run"]

TABLES_FILE = "share_gans_tables.md"
_QUALITY = (  # GeneratorMetrics kept in the description's extra
    "frechet_distance",
    "frechet_real_floor",
    "frechet_samples",
    "generator_steps",
    "critic_steps",
    "compute_seconds",
)
_PRIVACY = ("accountant", "epsilon", "delta", "noise_multiplier", "max_grad_norm")


def _check_plan(orc: Orchestrator, p: ShareGansParams) -> list[ArmSpec]:
    """Validate the arms against the scenario; drop real-patch arms outside simulation."""
    names = orc.scenario.centre_names()
    receiver = p.receiver
    if receiver not in names:
        raise ConfigError(
            f"share_gans: the arms' receiver {receiver!r} is not a centre of "
            f"scenario {orc.scenario.name!r} ({names}); fix: name it so"
        )
    profile = orc.scenario.resolved_profiles[receiver]
    empty = [k for k in ("val", "test") if not profile.split.get(k)]
    if profile.data.synthetic is not None and empty:  # a dataset may bring its own split
        raise CentreSettingError(
            f"share_gans: the receiver {receiver!r} has no {' and no '.join(empty)} images "
            f"(split {profile.split}): every arm selects its model on the receiver's val "
            "images and is tested on its test images; fix: give it a split with both, e.g. "
            "split: {train: 0.2, val: 0.1, test: 0.7}, or name another receiver",
            centres=[receiver],
            key="split",
        )
    specs = []
    for spec in p.arm_specs():
        used = [c for c, _ in spec.generators] + ([spec.real] if spec.real else [])
        if UNTRAINED in used and UNTRAINED in names:
            raise ConfigError(
                f"share_gans arm {spec.name!r}: a centre is named {UNTRAINED!r}, the name of "
                "the control arms' untrained generator; rename the centre"
            )
        wrong = [c for c in used if c != UNTRAINED and (c not in names or c == receiver)]
        if wrong:
            raise ConfigError(
                f"share_gans arm {spec.name!r}: {wrong} must be other centres "
                f"of the scenario ({[n for n in names if n != receiver]})"
            )
        if spec.real:
            if orc.spec.deployment:
                orc.recorder.note(
                    f"arm {spec.name} skipped: real patches never move in a "
                    "deployment (simulation-only upper bound)"
                )
                orc.console.print(f"[yellow]arm {spec.name} skipped in deployment[/]")
                continue
            if not orc.scenario.resolved_profiles[spec.real].sharing.real_patches_in_simulation:
                raise ConfigError(
                    f"share_gans arm {spec.name!r} needs centre {spec.real!r} to allow "
                    "sharing.real_patches_in_simulation (fix: set it in that centre's scenario "
                    "overrides, or drop the arm)"
                )
        specs.append(spec)
    return specs


def _from_reply(name: str, subset: str, content: RecordDict, params: dict) -> SharedGenerator:
    info = GeneratorInfo.from_config(content[DESCRIPTION])
    metrics = GeneratorMetrics.from_metrics(content[METRICS])
    snaps = sorted(k for k, v in content.items() if isinstance(v, ArrayRecord))
    desc = GeneratorDescription(
        kind=info.kind,
        patch_size=metrics.patch_size,
        latent_dim=metrics.latent_dim,
        width=metrics.width,
        d_norm=info.d_norm,
        lesion_types=info.lesion_types,
        n_training_patches=metrics.n_training_patches,
        epochs=metrics.epochs,
        snapshot_epochs=[snapshot_epoch(k) for k in snaps],
        centre=info.centre,
        extra={
            "subset": subset,
            "training": hyperparameters(info.kind, params),
            "feature_net": info.feature_net,
            # NaN: withheld by a DP centre (a statistic of its training patches) -> None
            **{k: _finite(getattr(metrics, k)) for k in _QUALITY},
        },
    )
    if PRIVACY in content:  # a DP discriminator: the generator carries its guarantee
        dp = decode_privacy(content[PRIVACY])
        desc.extra["privacy"] = {k: dp[k] for k in _PRIVACY}
    return SharedGenerator(name, desc, [(k, content[k]) for k in snaps])


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(float(value)) else None


def _record_generator(orc: Orchestrator, gen: SharedGenerator, seed: int) -> None:
    d, extra = gen.description, gen.description.extra
    values = {
        "frechet_distance": extra.get("frechet_distance"),
        "frechet_real_floor": extra.get("frechet_real_floor"),
        "n_training_patches": d.n_training_patches,
        "epochs": d.epochs,
        "n_snapshots": len(gen.snapshots),
    }
    if "privacy" in extra:
        values["epsilon"] = float(extra["privacy"]["epsilon"])
    orc.recorder.add(
        [{"metric": k, "value": v} for k, v in values.items() if v is not None],
        arm=gen.name,
        seed=seed,
        centre=d.centre or "",
        split="generator",
    )
    orc.recorder.complete_arm(gen.name, seed)


def _private_centres(orc: Orchestrator, centres) -> set[str]:
    """Centres whose profile trains under DP (or is unknown here): their generators train
    one after another, so no two DP rounds charge one ledger at once."""
    profiles = orc.scenario.resolved_profiles
    return {c for c in centres if c not in profiles or profiles[c].privacy.enabled}


def _control_generator(
    p: ShareGansParams, name: str, gan: str, subset: str, seed: int
) -> SharedGenerator:
    """A control arm's generator (``untrained_<gan>``): the recipe's architecture, never trained."""
    g = p.gans[gan]
    return untrained_generator(
        name,
        gan,
        patch_size=p.patches.size,
        latent_dim=g.latent_dim,
        width=g.width,
        seed=derive_seed(seed, name, "gan"),
        subset=subset,
    )


def _train_generators(
    orc: Orchestrator, p: ShareGansParams, specs: list[ArmSpec]
) -> dict[str, SharedGenerator]:
    """Phase 1: saved or loaded generators, else ``train.generator`` jobs at the centres."""
    seed = p.generator_seed
    root = orc.run_dir / GENERATORS_DIR
    source = Path(p.load_generators).expanduser() if p.load_generators else None
    needed = list(dict.fromkeys(g for s in specs for g in s.generators))
    gens: dict[str, SharedGenerator] = {}
    jobs: dict[str, list[tuple[str, str, str]]] = {}
    for subset in p.subsets:
        for centre, gan in needed:
            name = generator_name(centre, gan, subset)
            folder = saved_generator(orc.run_dir, name) or saved_generator(source, name)
            if folder is not None:
                gens[name] = load_shared_generator(folder)
                check_patch_size(folder, gens[name].description, p.patches.size)
                if folder.parent != root:
                    save_shared_generator(root, gens[name])
                    orc.recorder.note(f"generator {name} loaded from {folder}")
            elif centre == UNTRAINED:  # a control: made here, no centre trains it
                gens[name] = _control_generator(p, name, gan, subset, seed)
                save_shared_generator(root, gens[name])
            else:
                jobs.setdefault(centre, []).append((name, gan, subset))
    for name, gen in gens.items():
        if not orc.recorder.is_done(name, seed):
            _record_generator(orc, gen, seed)
    plot_dir = "" if orc.spec.deployment else str(orc.run_dir / "plots")

    def content(centre: str, name: str, gan: str, subset: str) -> RecordDict:
        m = orc.message(
            TrainGenerator,
            gan=gan,
            subset=subset,
            seed=derive_seed(seed, name, "gan"),
            patch=p.patches.model_dump(),
            gan_params=p.gans[gan].kwargs(gan),
            frechet_samples=p.frechet_samples,
            grid_columns=p.grid_columns,
            plot_dir=plot_dir,
            **generator_privacy_config(orc, centre, name, seed),
        )
        return m.content()

    # the centres' queues interleaved, so every centre starts at once
    queue = [
        (centre, todo[k]) for k in range(max(map(len, jobs.values()), default=0))
        for centre, todo in jobs.items() if k < len(todo)
    ]  # fmt: skip
    if queue:
        orc.console.print(f"  training generators {sorted(name for _, (name, _, _) in queue)}")
    results = orc.run_jobs(
        TrainGenerator.KIND,
        [Job(centre, partial(content, centre, *todo)) for centre, todo in queue],
        one_at_a_time=_private_centres(orc, jobs),
    )
    for result in results:
        centre, (name, gan, subset) = queue[result.index]
        if result.content is None:
            reason = result.failure or "error"
            orc.record_failures(
                {centre: reason}, arm=name, seed=seed, rnd=None, phase=TrainGenerator.KIND
            )
            record_generator_refusal(orc, centre=centre, name=name, seed=seed, reason=reason)
            continue
        gen = _from_reply(name, subset, result.content, p.gans[gan].kwargs(gan))
        record_generator_privacy(orc, centre=centre, name=name, seed=seed, content=result.content)
        save_shared_generator(root, gen)
        orc.recorder.add(  # this run's training time (not a loaded generator's)
            [{"metric": "compute_seconds", "value": gen.description.extra["compute_seconds"]}],
            arm=name,
            seed=seed,
            centre=centre,
            split="timing",
        )
        _record_generator(orc, gen, seed)
        gens[name] = gen
        fd = gen.description.extra.get("frechet_distance")
        quality = f"Frechet {fd:.3g}" if fd is not None else "Frechet withheld (DP)"
        orc.console.print(
            f"  generator {safe(name)}: {len(gen.snapshots)} snapshot(s), "
            f"{quality} ({safe(centre)} computed it)"
        )
    return gens


def _classifier_config(
    orc: Orchestrator,
    p: ShareGansParams,
    spec: ArmSpec,
    *,
    seed: int,
    subset: str,
    fraction: float,
    gens: list[SharedGenerator],
    draw: bool,
    label: str,
    classifier: dict,
):
    m = orc.message(
        TrainPatchClassifier,
        arm=record_arm(spec.name, subset, fraction, label),
        seed=derive_seed(seed, subset, fraction),  # every classifier: the same patches
        subset=subset,
        fraction=fraction,
        patch=p.patches.model_dump(),
        classifier=classifier,
        cyclegan=p.cyclegan.model_dump(),
        harmonise=spec.harmonised,
        draw=draw,
        n_synthetic=p.n_synthetic,
        real_from=spec.real or "",
        own_lesions=spec.own_lesions,
        grid_columns=p.grid_columns,
        plot_dir="" if orc.spec.deployment else str(orc.run_dir / "plots"),
        n_boot=p.bootstrap,
        run_key=orc.run_dir.name,  # the receiver keeps the test scores for the paired gain
        generators=[
            {
                "description": g.description.to_dict(),
                "records": [generator_record(i, r) for r, _ in g.snapshots],
            }
            for i, g in enumerate(gens)
        ],
    )
    return m.content(
        {generator_record(i, r): arrays for i, g in enumerate(gens) for r, arrays in g.snapshots}
    )


def _arm_job(
    orc: Orchestrator,
    p: ShareGansParams,
    spec: ArmSpec,
    gens: dict,
    *,
    seed: int,
    subset: str,
    fraction: float,
    draw: bool,
    label: str,
    classifier: dict,
) -> Job | None:
    """The receiver's job for one arm run; None when it is done or a generator is missing."""
    rec = record_arm(spec.name, subset, fraction, label)
    if orc.recorder.is_done(rec, seed):
        return None
    names = [generator_name(c, g, subset) for c, g in spec.generators]
    missing = [n for n in names if n not in gens]
    if missing:
        orc.recorder.note(f"arm {rec} seed {seed}: skipped, generator(s) {missing} missing")
        return None
    content = partial(
        _classifier_config,
        orc,
        p,
        spec,
        seed=seed,
        subset=subset,
        fraction=fraction,
        gens=[gens[n] for n in names],
        draw=draw,
        label=label,
        classifier=classifier,
    )
    return Job(spec.receiver, content)


def _record_arm(orc: Orchestrator, rec: str, seed: int, result: JobResult) -> None:
    """Record one arm run's reply (test metrics, best validation epoch) or its failure."""
    kind, receiver = TrainPatchClassifier.KIND, result.centre
    if result.content is None:
        orc.record_failures(
            {receiver: result.failure or "error"}, arm=rec, seed=seed, rnd=None, phase=kind
        )
        return
    metrics = TrainPatchClassifier.REPLY.from_metrics(result.content[METRICS])
    orc.recorder.add(metrics.records, arm=rec, seed=seed, centre=receiver, split="test")
    extra = {
        "auprc": metrics.val_auprc,
        "best_epoch": metrics.best_epoch,
        "n_added_lesion": metrics.n_added_lesion,
        "n_own_lesion": metrics.n_own_lesion,
        "healthy_shortfall": metrics.healthy_shortfall,
        "real_pixels_moved": metrics.real_pixels_moved,
    }
    orc.recorder.add(
        [{"metric": k, "value": float(v)} for k, v in extra.items()],
        arm=rec,
        seed=seed,
        centre=receiver,
        split="val",
    )
    orc.recorder.add(
        [{"metric": "compute_seconds", "value": metrics.compute_seconds}],
        arm=rec,
        seed=seed,
        centre=receiver,
        split="timing",
    )
    if metrics.healthy_shortfall:
        orc.recorder.note(
            f"arm {rec} seed {seed}: {metrics.healthy_shortfall} healthy "
            "patches short of class balance (too few healthy images)"
        )
    orc.recorder.complete_arm(rec, seed)
    auc = next((r["value"] for r in metrics.records if r["metric"] == "auc"), None)
    orc.console.print(
        f"  {rec} seed {seed}: AUROC {'n/a' if auc is None else f'{auc:.3f}'} "
        f"(epoch {metrics.best_epoch}, +{metrics.n_added_lesion})",
        highlight=False,
    )


def _gains_over_receiver_alone(orc: Orchestrator, p: ShareGansParams, specs: list[ArmSpec]):
    """Phase 3: every finished arm run against the receiver-alone arm run of its cell and seed
    (``evaluate.patch_gain``, computed by the receiver from the test scores it kept):
    ``baseline_auc``, ``delta_auc`` and ``p_value`` records of the arm run. Runs compared
    before a resume are not compared again."""
    alone = next((s for s in specs if s.name == s.receiver), None)
    if alone is None:
        return
    jobs, runs = [], []
    cells = product(orc.scenario.seeds, p.subsets, p.fractions, p.classifier_runs(specs))
    for seed, subset, fraction, (spec, label, _) in cells:
        rec = record_arm(spec.name, subset, fraction, label)
        base = record_arm(alone.name, subset, fraction, label)
        done = orc.recorder.is_done(rec, seed) and orc.recorder.is_done(base, seed)
        if spec is alone or not done or orc.recorder.has(rec, seed, "delta_auc"):
            continue
        m = orc.message(
            EvaluatePatchGain,
            arm=rec,
            seed=derive_seed(seed, subset, fraction),  # the runs' own
            baseline=base,
            run_key=orc.run_dir.name,
            n_boot=p.bootstrap,
        )
        jobs.append(Job(spec.receiver, m.content))
        runs.append((rec, seed))
    if jobs:
        orc.console.print(
            f"  {len(jobs)} arm run(s) against {alone.name} alone: paired, inside {alone.receiver}"
        )
    for result in orc.run_jobs(EvaluatePatchGain.KIND, jobs):
        rec, seed = runs[result.index]
        if result.content is None:
            orc.record_failures(
                {result.centre: result.failure or "error"},
                arm=rec,
                seed=seed,
                rnd=None,
                phase=EvaluatePatchGain.KIND,
            )
            continue
        records = EvaluatePatchGain.REPLY.from_metrics(result.content[METRICS]).records
        orc.recorder.add(records, arm=rec, seed=seed, centre=result.centre, split="test")
    orc.recorder.flush()


def run(orc: Orchestrator) -> None:
    """Phase 1 (shared generators) then every arm x subset x fraction x seed; the tables."""
    p: ShareGansParams = orc.params
    specs = _check_plan(orc, p)
    moving = [s.name for s in specs if s.moves_pixels]
    for arm in moving:
        warning = (
            f"arm {arm} MOVES REAL PIXELS between centres ({MOVED}): the data-sharing "
            "upper bound of GAN-sharing paper, read from the shared simulation data directory"
        )
        orc.console.print(f"[bold red]WARNING: {warning}[/]")
        orc.recorder.note(f"WARNING: {warning}")
    orc.console.rule("[bold]phase 1: shared generators[/]")
    gens = _train_generators(orc, p, specs)
    orc.console.rule("[bold]phase 2: the receiver's patch classifier per arm[/]")
    jobs, runs = [], []  # every arm run not yet done, in the tables' order
    for n, seed in enumerate(orc.scenario.seeds):
        for subset in p.subsets:
            for k, fraction in enumerate(p.fractions):
                for spec, label, classifier in p.classifier_runs(specs):
                    job = _arm_job(
                        orc,
                        p,
                        spec,
                        gens,
                        seed=seed,
                        subset=subset,
                        fraction=fraction,
                        draw=n == 0 and k == 0 and not label,
                        label=label,
                        classifier=classifier,
                    )
                    if job is not None:
                        jobs.append(job)
                        runs.append((record_arm(spec.name, subset, fraction, label), seed))
    for result in orc.run_jobs(TrainPatchClassifier.KIND, jobs):
        _record_arm(orc, *runs[result.index], result)
    _gains_over_receiver_alone(orc, p, specs)
    orc.recorder.note(
        "records: arm '<arm>@<subset>-<percent of the receiver's training "
        "data>' ('<arm>~<label>@...' for classifier.extra_models); metric 'auc' is the AUROC"
    )
    where = "each centre's <output-dir>/plots" if orc.spec.deployment else "plots/"
    orc.recorder.note(
        f"sample grids `synthetic_samples_<centre>_<gan>_<subset>.png` in {where}: "
        "drawn by each sharing centre itself; its real patches never left it"
    )
    orc.recorder.note(f"shared generators (weights + description.json) in {GENERATORS_DIR}/")
    order = [classifier_arm(s.name, label) for s, label, _ in p.classifier_runs(specs)]
    tables = build_gan_tables(orc.recorder.frame(), arm_order=order)
    spent = orc.run_dir / PRIVACY_FILE  # each sharer's generators composed (DP only)
    privacy = json.loads(spent.read_text()) if spent.is_file() else None
    gen_table = generator_table(orc.recorder.frame(), privacy=privacy)
    print_tables(tables, orc.console, gen_table)
    heading = f"# {orc.scenario.name}: GAN-sharing paper tables"
    text = tables_markdown(tables, gen_table, heading=heading)
    (orc.run_dir / TABLES_FILE).write_text(text + "\n")
    orc.recorder.meta["share_gans_tables_markdown"] = text
    orc.recorder.note(
        f"GAN-sharing paper Table 1-2 layout (arms x accuracy, F1, AUROC, AUPRC per "
        f"subset and fraction): {TABLES_FILE}"
    )
    orc.recorder.flush()
