"""The CycleGAN-UDA run plan: per seed, each direction's tile generator (source centre) and
translator (target centre) when a ``uda`` arm runs, then every arm (model x arm), each trained
at its centre and tested at the target centre of every direction (``source_only`` and ``uda``
at their source centre too)."""

from __future__ import annotations

from fedmammo.config import Scenario
from fedmammo.errors import ConfigError
from fedmammo.methods.cyclegan_uda.params import SOURCE_ARMS, CycleGanUdaParams, arm_name
from fedmammo.methods.registry import PlanRow

__all__ = ["check_centres", "plan", "translator_unit", "tile_unit"]

TILES, TRANSLATOR = "train.uda_tile_generator", "train.uda_translator"
TRAIN, EVALUATE = "train.uda_classifier", "evaluate.uda_classifier"


def tile_unit(source: str) -> str:
    """The unit (record arm) of the source centre's shared tile generator."""
    return f"tile_gan-{source}"


def translator_unit(source: str, target: str) -> str:
    """The unit (record arm) of the target centre's CycleGAN generator source -> target."""
    return f"translator-{source}_to_{target}"


def _tested_note(arm: str, pairs: list[tuple[str, str]]) -> str:
    """Where ``arm``'s model of each direction trains and is tested: one model (and line) per
    direction, so the note does not read as one model tested everywhere."""
    if arm in SOURCE_ARMS:
        lines = [f"trained at {s}, tested at {t} (target) and {s} (source)" for s, t in pairs]
    else:
        lines = [f"trained and tested at {t} (the target of {s} -> {t})" for s, t in pairs]
    return "\n".join(lines)


def check_centres(scenario: Scenario, p: CycleGanUdaParams) -> list[tuple[str, str]]:
    """The (source, target) pairs; ConfigError unless film and digital are scenario centres."""
    names = scenario.centre_names()
    for key in ("film", "digital"):
        centre = getattr(p, key)
        if centre not in names:
            raise ConfigError(
                f"cyclegan_uda: params.{key} names centre {centre!r}, which scenario "
                f"{scenario.name!r} does not have ({', '.join(names)}); fix: set params.{key} "
                "to the centre that owns that domain"
            )
    return p.pairs()


def plan(scenario: Scenario, p: CycleGanUdaParams) -> list[PlanRow]:
    """Generators and translators first (per seed), then arm x seed in running order."""
    pairs = check_centres(scenario, p)
    rows = []
    for seed in scenario.seeds:
        if "uda" in p.arms:
            for source, target in pairs:
                rows.append(
                    PlanRow(
                        arm=tile_unit(source),
                        seed=seed,
                        centres=(source,),
                        messages=((TILES, (source,)),),
                        note=f"DCGAN, {p.tiles.epochs} epochs, {p.tiles.tile_size}-px tiles",
                    )
                )
                rows.append(
                    PlanRow(
                        arm=translator_unit(source, target),
                        seed=seed,
                        centres=(target,),
                        messages=((TRANSLATOR, (target,)),),
                        note=f"CycleGAN, {p.cyclegan.epochs} epochs; replies G {source}->{target}",
                    )
                )
        for key, model in p.models.items():
            for arm in p.arms:
                at_source = arm in SOURCE_ARMS  # trained at the source, also tested there
                trainers = tuple(dict.fromkeys(s if at_source else t for s, t in pairs))
                targets = tuple(t for _, t in pairs)
                tested = tuple(dict.fromkeys(targets + (trainers if at_source else ())))
                rows.append(
                    PlanRow(
                        arm=arm_name(arm, key),
                        seed=seed,
                        centres=tuple(dict.fromkeys(trainers + tested)),
                        messages=((TRAIN, trainers), (EVALUATE, tested)),
                        model=model.model_dump(),
                        note=_tested_note(arm, pairs),
                    )
                )
    return rows
