"""The GAN-sharing run plan: phase 1's generators (one per sharing centre, GAN kind and lesion
subset, once per run), then every arm x subset x fraction x seed at the receiver, each
compared with the receiver alone there; the arms checked against the scenario by the
server's own :func:`~.server._check_plan`."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from fedmammo.config import Scenario
from fedmammo.errors import ConfigError
from fedmammo.methods.registry import PlanRow
from fedmammo.methods.share_gans.params import UNTRAINED, ArmSpec, ShareGansParams

__all__ = ["plan"]


def _checked_arms(scenario: Scenario, p: ShareGansParams):
    """The server's plan check on the part of the orchestrator it reads (a simulation)."""
    from fedmammo.methods.share_gans.server import _check_plan

    view = SimpleNamespace(scenario=scenario, spec=SimpleNamespace(deployment=False))
    return _check_plan(view, p)  # type: ignore[arg-type]


def _note(spec: ArmSpec) -> str:
    if spec.real:
        return "moves real pixels (simulation only)"
    return "control: own lesion patches again" if spec.own_lesions else ""


def plan(scenario: Scenario, p: ShareGansParams) -> list[PlanRow]:
    """Generators first (seeded from the first seed), then the receiver's classifier arms."""
    from fedmammo.methods.share_gans.generators import (
        GENERATORS_DIR,
        check_patch_size,
        generator_name,
        read_description,
        saved_generator,
    )
    from fedmammo.methods.share_gans.report import record_arm

    specs = _checked_arms(scenario, p)
    source = None
    if p.load_generators:
        source = Path(p.load_generators).expanduser()
        if not source.is_dir():
            raise ConfigError(
                f"key 'params.load_generators': folder {source} not found; name a run folder "
                f"(or its {GENERATORS_DIR}/ folder) of an earlier share_gans run, or remove it"
            )
    rows = []
    needed = list(dict.fromkeys(g for s in specs for g in s.generators))
    for subset in p.subsets:
        for centre, gan in needed:
            name = generator_name(centre, gan, subset)
            loaded = saved_generator(source, name)
            if loaded is not None:  # no centre trains it
                check_patch_size(loaded, read_description(loaded), p.patches.size)
            trained = centre != UNTRAINED and loaded is None
            if loaded is not None:
                note = f"{gan}, loaded from {loaded}"
            elif trained:
                note = f"{gan}, {p.gans[gan].epochs} epochs"
            else:  # a control's generator: the server initialises it
                note = f"{gan}, untrained"
            rows.append(
                PlanRow(
                    arm=name,
                    seed=p.generator_seed,
                    centres=(centre,) if trained else (),
                    rounds=None,
                    messages=(("train.generator", (centre,)),) if trained else (),
                    note=note,
                )
            )
    for seed in scenario.seeds:
        for subset in p.subsets:
            for fraction in p.fractions:
                for spec, label, classifier in p.classifier_runs(specs):
                    messages = [("train.patch_classifier", (spec.receiver,))]
                    if spec.name != spec.receiver and any(s.name == s.receiver for s in specs):
                        messages.append(("evaluate.patch_gain", (spec.receiver,)))  # vs alone
                    rows.append(
                        PlanRow(
                            arm=record_arm(spec.name, subset, fraction, label),
                            seed=seed,
                            centres=(spec.receiver,),
                            messages=tuple(messages),
                            model=classifier["model"],
                            note=_note(spec),
                        )
                    )
    return rows
