"""The CycleGAN-UDA run plan: per seed, each direction's tile generator (source centre) and
translator (target centre) when a ``uda`` arm runs, then every arm (model x arm), each trained
at its centre and tested at the target centre of every direction."""

from __future__ import annotations

from fedmammo.config import Scenario
from fedmammo.errors import ConfigError
from fedmammo.methods.cyclegan_uda.params import CycleGanUdaParams, arm_name
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
                trainers = tuple(dict.fromkeys(t if arm == "in_domain" else s for s, t in pairs))
                targets = tuple(t for _, t in pairs)
                rows.append(
                    PlanRow(
                        arm=arm_name(arm, key),
                        seed=seed,
                        centres=tuple(dict.fromkeys(trainers + targets)),
                        messages=((TRAIN, trainers), (EVALUATE, targets)),
                        model=model.model_dump(),
                        note="tested at " + ", ".join(targets),
                    )
                )
    return rows
