"""The run plan: every unit a run will do (arm x seed, generators), checked before anything
runs.

:func:`plan_scenario` asks the scenario's method for its plan (``Method.plan``) and checks
what a run would otherwise find out only at the centres, hours later:

- every model the recipe names exists in the model registry and builds with its options
  (on PyTorch's meta device: no memory, no time);
- every image classifier the recipe trains (:mod:`fedmammo.training.classifier`) keeps its
  contract: one batch of two blank images of the scenario's ``image_size`` (N x 1 x H x W
  floats) gives N x 2 logits (:data:`CLASSIFIER_CONTRACT`);
- every sampler exists in the sampler registry;
- every centre a unit sends a message to consents to the reply (its profile's ``sharing``
  against the consent the handler declares), and a centre that trains with DP is sent
  only DP-capable training messages, for models DP-SGD can train, with noise.

Problems are collected and raised together, one line each, naming the override or file the
value came from.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from fedmammo.config import LocalTrainingParams, ModelParams, Scenario
from fedmammo.config.loading import Origins
from fedmammo.errors import CentreSettingError, ConfigError
from fedmammo.methods.registry import PlanRow, get_method

__all__ = ["CLASSIFIER_CONTRACT", "check_models", "fault_problems", "plan_scenario"]

#: What :mod:`fedmammo.training.classifier` gives an image classifier and reads from it
#: (``cross_entropy`` of the logits against 0/1 labels; the score is ``softmax[:, 1]``).
CLASSIFIER_CONTRACT = (
    "a classifier takes N x 1 x H x W floats (H x W: the scenario's image_size) and returns "
    "N x 2 logits, index 1 malignant (docs/architecture.md, 'Your own model')"
)


def _walk(
    model: BaseModel, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], BaseModel]]:
    """Every nested pydantic model of ``model`` with its dotted path (dicts and lists too)."""
    yield path, model
    for name in type(model).model_fields:
        value = getattr(model, name)
        items: list[tuple[str, object]] = []
        if isinstance(value, BaseModel):
            items = [(name, value)]
        elif isinstance(value, dict):
            items = [(f"{name}.{k}", v) for k, v in value.items()]
        elif isinstance(value, list | tuple):
            items = [(f"{name}.{i}", v) for i, v in enumerate(value)]
        for sub, v in items:
            if isinstance(v, BaseModel):
                yield from _walk(v, (*path, *sub.split(".")))


def _where(
    scenario: Scenario, origins: Origins | None, params_path: tuple[str, ...], quick: bool
) -> str:
    """The override (or file) a recipe params value came from."""
    default = scenario.source_file or scenario.name
    if origins is None:
        return default
    default = origins.files.get("strategy", default)
    if quick:
        label = origins.label("strategy.quick", ("params", *params_path), "")
        if label:
            return label
    return origins.label("strategy", ("params", *params_path), default)


def _model_problem(model: dict, cache: dict[str, object]) -> object:
    """The built model (on the meta device), or the reason it cannot be built (a str)."""
    key = json.dumps(model, sort_keys=True, default=str)
    if key in cache:
        return cache[key]
    import torch

    from fedmammo.models import build_model, has_model
    from fedmammo.models.registry import unknown_model

    name, options = model.get("name"), dict(model.get("options") or {})
    if not has_model(name):  # torchvision's families load only for their names, or an unknown one
        result: object = unknown_model(name)
    else:
        try:
            with torch.device("meta"):
                result = build_model(name, **options)
        except ConfigError as exc:
            result = str(exc)
        except Exception as exc:  # noqa: BLE001 - any builder failure is a bad option
            result = f"model {name!r} cannot be built with options {options}: {exc}"
    cache[key] = result
    return result


def _classifiers(
    params: BaseModel, fields: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], ModelParams]]:
    """(params path, model) of every image classifier in the recipe ``params`` fields a method
    declares (:attr:`~fedmammo.methods.registry.Method.classifiers`: a model, or a dict of
    them by key)."""
    for name in fields:
        value = getattr(params, name)
        if isinstance(value, dict):
            yield from (((name, key), model) for key, model in value.items())
        else:
            yield (name,), value


def _blank_forward(name: str, options: dict, batch: Any) -> Any:
    """The model ``name`` builds, in eval mode without grad, applied to ``batch``. Its weights
    are zeros: built on the meta device, then given zeroed CPU tensors, so no random
    initialisation runs (a ResNet-50's costs 0.2 s) and the global random state is left as it
    was. A model that fails so (state its state dict does not carry) is tried again as the
    centres build it, its draws from a forked random state; what that raises is the model's."""
    import torch

    from fedmammo.models import build_model

    with torch.no_grad():
        try:
            with torch.device("meta"):
                net = build_model(name, **options)
            blank = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in net.state_dict().items()}
            net.load_state_dict(blank, assign=True)
            return net.eval()(batch)
        except Exception:  # noqa: BLE001 - tried again as built for real, which says why
            with torch.random.fork_rng(devices=[]):
                net = build_model(name, **options)
            return net.eval()(batch)


@functools.cache
def _contract_problem(spec: str, image_size: tuple[int, int]) -> str | None:
    """Why the model of JSON ``spec`` breaks :data:`CLASSIFIER_CONTRACT`, or None: one batch
    of two blank images of ``image_size`` through it on the CPU, in one torch thread
    (milliseconds for the shipped classifiers; two threads contend with the machine's other
    work). Once per process for a model and size (sweep points, both modes of ``--check``)."""
    import torch

    model = json.loads(spec)
    name, options = model.get("name"), dict(model.get("options") or {})
    height, width = image_size
    batch = f"2 x 1 x {height} x {width}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = _blank_forward(name, options, torch.zeros(2, 1, height, width))
    except Exception as exc:  # noqa: BLE001 - any failure is the model's: say it in one line
        reason = (str(exc).strip().splitlines() or [""])[0]
        return (
            f"model {name!r} cannot take a batch of {batch} (expected input N x 1 x H x W, "
            f"H x W the scenario's image_size): {type(exc).__name__}: {reason}"
        )
    finally:
        torch.set_num_threads(threads)
    if not isinstance(out, torch.Tensor):
        got = f"a {type(out).__name__} (not a tensor)"
    elif tuple(out.shape) != (2, 2):
        got = f"shape ({', '.join(map(str, out.shape))})"
    else:
        return None
    return f"model {name!r} returned {got} for a batch of {batch}; {CLASSIFIER_CONTRACT}"


def check_models(
    scenario: Scenario, params: BaseModel, origins: Origins | None, *, quick: bool
) -> list[str]:
    """Problems with the recipe's models and samplers (unknown names, bad options, an image
    classifier that breaks :data:`CLASSIFIER_CONTRACT`)."""
    from fedmammo.data.sampling import SAMPLERS
    from fedmammo.models import has_model

    problems, cache = [], {}
    for path, block in _walk(params):
        if isinstance(block, ModelParams):
            found = _model_problem(block.model_dump(), cache)
            if isinstance(found, str):  # an unknown name, else options the builder refused
                key = (*path, "options" if has_model(block.name) else "name")
                where = _where(scenario, origins, key, quick)
                problems.append(f"{where}: key 'params.{'.'.join(key)}': {found}")
        if isinstance(block, LocalTrainingParams) and block.sampler not in SAMPLERS:
            where = _where(scenario, origins, (*path, "sampler"), quick)
            problems.append(
                f"{where}: key 'params.{'.'.join((*path, 'sampler'))}': unknown sampler "
                f"{block.sampler!r}; valid samplers: {', '.join(sorted(SAMPLERS))}"
            )
    for path, block in _classifiers(params, get_method(scenario.recipe.kind).classifiers):
        model = block.model_dump()
        if isinstance(_model_problem(model, cache), str):
            continue  # reported above
        spec = json.dumps(model, sort_keys=True, default=str)
        if problem := _contract_problem(spec, tuple(scenario.image_size)):
            where = _where(scenario, origins, (*path, "name"), quick)
            problems.append(f"{where}: key 'params.{'.'.join(path)}': {problem}")
    return problems


def _centre_where(scenario: Scenario, origins: Origins | None, centre: str, key: tuple) -> str:
    names = scenario.centre_names()
    i = names.index(centre)
    default = f"{scenario.source_file or scenario.name} centres.{i} ({centre})"
    return origins.label(f"centre:{i}", key, default) if origins else default


def _check_rows(
    scenario: Scenario, rows: list[PlanRow], handlers: dict, origins, *, secure: bool | None
) -> list[str]:
    """Consent, the DP guard and DP-compatible models at every centre the plan sends to;
    ``secure``: the recipe's switch that runs averaged rounds of two or more centres under
    secure aggregation (None: the recipe has none)."""
    from fedmammo.federation.consent import REPLY_KINDS

    problems: list[str] = []
    seen: set[tuple] = set()
    cache: dict[str, object] = {}
    profiles = scenario.resolved_profiles
    for row in rows:
        for message_type, centres in row.messages:
            h = handlers.get(message_type)
            for c in centres:
                profile = profiles.get(c)
                if profile is None or h is None:
                    continue  # the pooled what-if node, or centres known only from data
                i = scenario.centre_names().index(c)
                if h.consent and not getattr(profile.sharing, h.consent):
                    key = ("consent", c, h.consent)
                    if key not in seen:
                        seen.add(key)
                        where = _centre_where(scenario, origins, c, ("sharing", h.consent))
                        problems.append(
                            f"{where}: centre {c!r} does not share {REPLY_KINDS[h.consent]} "
                            f"(sharing.{h.consent}: false) but {row.arm!r} (a unit of the "
                            f"plan) needs its {message_type!r} replies; fix: allow it "
                            f"(centres.{i}.overrides: {{sharing.{h.consent}: true}}), change "
                            "the centre's role, or drop the arm"
                        )
                masked = bool(secure) and h.averaged and len(centres) > 1
                key = ("masked", c, row.arm)
                if (
                    h.consent == "models"
                    and profile.sharing.require_secure_aggregation
                    and not masked
                    and key not in seen
                ):
                    seen.add(key)
                    where = _centre_where(
                        scenario, origins, c, ("sharing", "require_secure_aggregation")
                    )
                    problems.append(
                        f"{where}: {_unmasked_problem(c, i, row.arm, message_type, h, secure)}"
                    )
                if not (message_type.startswith("train.") and profile.privacy.enabled):
                    continue
                where = _centre_where(scenario, origins, c, ("privacy",))
                if not h.dp:
                    key = ("dp-guard", c, message_type)
                    if key not in seen:
                        seen.add(key)
                        problems.append(
                            f"{where}: centre {c!r} trains with DP (privacy in its profile) but "
                            f"{message_type!r} (arm {row.arm!r}) has no DP path, so the centre "
                            f"would refuse it; fix: give it no privacy for this strategy "
                            f"(centres.{i}.overrides: {{privacy: {{}}}})"
                        )
                    continue
                if profile.privacy.noise_multiplier == 0 and ("noise", c) not in seen:
                    seen.add(("noise", c))
                    problems.append(
                        f"{where}: centre {c!r}: privacy.noise_multiplier 0 adds no noise "
                        "(epsilon is infinite); fix: give a positive noise_multiplier or only "
                        "a target_epsilon"
                    )
                if row.model is None:
                    continue
                built = _model_problem(row.model, cache)
                if isinstance(built, str):
                    continue  # reported by check_models / the arm's own check
                from fedmammo.privacy.engine import dp_incompatible_layers  # Opacus: ~1 s

                bad = dp_incompatible_layers(built)
                key = ("dp-model", c, json.dumps(row.model, sort_keys=True, default=str))
                if bad and key not in seen:
                    seen.add(key)
                    layer, kind, reason = bad[0]
                    more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
                    problems.append(
                        f"{where}: centre {c!r} trains with DP but the model of arm {row.arm!r} "
                        f"({row.model.get('name')}) has layers DP-SGD cannot train: {layer} "
                        f"({kind}: {reason}){more}; fix: a DP-ready norm "
                        "(params.model.options.norm: group) or no privacy at this centre"
                    )
    return problems


def _unmasked_problem(
    centre: str, index: int, arm: str, message_type: str, h: Any, secure: bool | None
) -> str:
    """Why a unit sends ``centre`` (which requires secure aggregation) a plain round, and the
    fix that exists for it."""
    if secure is None:
        why = "this recipe has no secure aggregation: drop the arm or"
    elif not h.averaged:
        why = "its replies are never averaged: drop the arm or"
    elif secure:
        why = "it trains one centre alone: drop the arm or"
    else:
        why = "fix: set strategy.params.secure_aggregation: true, or"
    return (
        f"centre {centre!r} sends model weights only in secure-aggregation rounds of two or "
        f"more centres, but {arm!r} asks for them in the clear ({message_type!r}); {why} lift "
        f"the requirement in the centre's profile (in this scenario: centres.{index}.overrides: "
        "{sharing.require_secure_aggregation: false})"
    )


def _min_centres_problem(
    scenario: Scenario, params: BaseModel, origins: Origins | None, *, quick: bool
) -> str | None:
    """The recipe's ``min_centres`` above the scenario's training centres: the federated arm
    could never aggregate as the recipe asks (one line), or None."""
    minimum = getattr(params, "min_centres", None)
    trainers = _trainers(scenario)
    if minimum is None or minimum <= len(trainers):
        return None
    others = ", ".join(
        f"{c} ({scenario.entry(c).role})" for c in scenario.centre_names() if c not in trainers
    )
    where = _where(scenario, origins, ("min_centres",), quick)
    return (
        f"{where}: key 'params.min_centres': {minimum}, but the scenario has "
        f"{len(trainers)} training centre(s) (role train or receiver): "
        f"{', '.join(trainers) or 'none'}"
        + (f"; {others} only evaluate" if others else "")
        + "; fix: give more centres role train, or lower params.min_centres"
    )


def _role_problems(
    scenario: Scenario, roles: tuple[str, ...], origins: Origins | None
) -> list[str]:
    """A centre whose role the method gives no meaning (a ``sharer`` under fedavg would
    neither train nor be tested on all its images): one line each, with the fix."""
    kind = scenario.recipe.kind
    problems = []
    for i, entry in enumerate(scenario.centres):
        if entry.role in roles:
            continue
        where = f"{scenario.source_file or scenario.name} centres.{i} ({entry.name})"
        if origins is not None:
            where = origins.label("scenario", ("centres", str(i), "role"), where)
        problems.append(
            f"{where}: key 'centres.{i}.role': {entry.role!r}, which {kind} does not use "
            f"(its roles: {', '.join(roles)}); fix: role train to train, or test to evaluate "
            f"on all its images (--set centres.{i}.role=test)"
        )
    return problems


def fault_problems(
    scenario: Scenario, rows: list[PlanRow], origins: Origins | None = None
) -> list[str]:
    """Faults no round of the plan ``rows`` can fire: an arm the plan does not train in
    rounds, a round past that arm's last, a centre the arm does not train at (one line each).
    Checked for the mode a run uses only: a fault of round 3 is fine in the full run of a
    scenario whose --quick run has one round."""
    problems = []
    default = str(scenario.source_file or scenario.name)
    for i, fault in enumerate(scenario.faults):
        where = origins.label("scenario", ("faults", str(i)), default) if origins else default
        trained = [r for r in rows if r.arm == fault.arm and r.rounds]
        if not trained:
            armed = sorted({r.arm for r in rows if r.rounds})
            problems.append(
                f"{where}: key 'faults.{i}.arm': no arm {fault.arm!r} trains in rounds in "
                f"this plan; arms with rounds: {', '.join(armed) or 'none'}"
            )
        elif not any(r.first_round <= fault.round <= (r.last_round or 0) for r in trained):
            first = min(r.first_round for r in trained)
            last = max(r.last_round or 0 for r in trained)
            problems.append(
                f"{where}: key 'faults.{i}.round': {fault.round}, but arm {fault.arm!r} "
                + (f"trains {last} round(s)" if first == 1 else f"trains rounds {first}..{last}")
            )
        elif not any(fault.centre in r.centres for r in trained):
            problems.append(
                f"{where}: key 'faults.{i}.centre': arm {fault.arm!r} does not train at "
                f"{fault.centre!r}; it trains at {', '.join(trained[0].centres)}"
            )
    return problems


def _trainers(scenario: Scenario) -> tuple[str, ...]:
    """The scenario's training centres (role train or receiver), in its order."""
    return tuple(
        c for c in scenario.centre_names() if scenario.entry(c).role in ("train", "receiver")
    )


def _default_plan(scenario: Scenario) -> list[PlanRow]:
    return [PlanRow(arm="(every arm)", seed=s, centres=_trainers(scenario)) for s in scenario.seeds]


def _plan_error_where(scenario: Scenario, origins: Origins | None, exc: Exception) -> str:
    """Where a method's plan error comes from: the override (``--set``, strategy_overrides)
    of the recipe parameter it names (``strategy params.<key> ...``), the centres' settings
    a :class:`CentreSettingError` names, else the scenario."""
    if isinstance(exc, CentreSettingError):
        key = tuple(exc.key.split("."))
        places = (_centre_where(scenario, origins, c, key) for c in exc.centres)
        return "; ".join(dict.fromkeys(places))
    default = str(scenario.source_file or scenario.name)
    key = re.match(r"strategy (params(?:\.[\w-]+)+)", str(exc))
    if origins is None or key is None:
        return default
    return origins.label("strategy", key.group(1).split("."), default)


def plan_scenario(
    scenario: Scenario, *, quick: bool, origins: Origins | None = None
) -> list[PlanRow]:
    """The run plan of one (sweep point's) scenario; ConfigError listing every problem."""
    from fedmammo.federation.client_app import collect_handlers

    method = get_method(scenario.recipe.kind)
    params = scenario.recipe.typed_params(quick=quick)
    problems = _role_problems(scenario, method.roles, origins)
    problems += check_models(scenario, params, origins, quick=quick)
    if problem := _min_centres_problem(scenario, params, origins, quick=quick):
        problems.append(problem)
    try:
        rows = method.plan(scenario, params) if method.plan else _default_plan(scenario)
    except (ConfigError, ValueError) as exc:
        problems.append(f"{_plan_error_where(scenario, origins, exc)}: {exc}")
        rows = []
    secure = getattr(params, "secure_aggregation", None)
    problems += _check_rows(
        scenario, rows, collect_handlers(method.handlers), origins, secure=secure
    )
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))
    return rows
