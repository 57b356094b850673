"""A name -> builder registry for models, like torchvision's ``get_model``.

The families whose modules import torchvision at definition (the contrastive encoders and the
FCOS detector) are imported the first time a name is looked up that the families already
loaded do not register, so that a centre training a plain classifier never imports
torchvision (1.3 s and 155 MB of the import, measured in BENCHMARKS.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fedmammo.errors import ConfigError

__all__ = [
    "build_model",
    "build_model_to_load",
    "has_model",
    "list_models",
    "register_model",
    "unknown_model",
]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
#: Families imported on demand (by :func:`build_model` of a name not registered yet, and by
#: :func:`list_models`): they import torchvision at definition.
LAZY_FAMILIES = ("fedmammo.models.contrastive", "fedmammo.models.detection")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a keyword-only model builder under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = fn
        return fn

    return deco


def _load_lazy_families() -> None:
    for module in LAZY_FAMILIES:
        importlib.import_module(module)


def list_models() -> list[str]:
    """Names of every registered model."""
    _load_lazy_families()
    return sorted(_BUILDERS)


def has_model(name: str) -> bool:
    """Whether a builder is registered as ``name``; the torchvision families are imported only
    when the families already loaded do not register it (never on the ``meta`` device of a
    build, where a tensor made at import would be an empty shell)."""
    if name not in _BUILDERS:
        _load_lazy_families()
    return name in _BUILDERS


def unknown_model(name: object) -> str:
    """What to say of a model name no builder is registered as (one line, with the fix)."""
    return (
        f"unknown model {name!r}; valid models: {', '.join(list_models())}; a model of your "
        "own: name its module in FEDMAMMO_PLUGINS (README, 'Your own models and methods')"
    )


def build_model(name: str, **options: Any) -> nn.Module:
    """Build the model registered as ``name`` with keyword ``options``."""
    if not has_model(name):
        raise ConfigError(unknown_model(name))
    if problem := _option_type_problem(_BUILDERS[name], options):
        raise ConfigError(f"model {name!r}: option {problem}")
    try:
        return _BUILDERS[name](**options)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: bad options {options}: {exc}") from exc


def _option_type_problem(builder: Callable[..., nn.Module], options: dict[str, Any]) -> str | None:
    """The first option whose value its builder's annotations refuse (``width='four'``: "width
    'four': Input should be a valid integer ..."), or None. A builder taking ``**options``
    is checked against the ``__init__`` of the class it returns; unannotated options pass."""
    import inspect
    import typing

    import pydantic

    target: Any = builder
    if all(p.kind is p.VAR_KEYWORD for p in inspect.signature(builder).parameters.values()):
        returned = typing.get_type_hints(builder).get("return")
        target = returned.__init__ if isinstance(returned, type) else None
    try:
        hints = typing.get_type_hints(target) if target is not None else {}
    except Exception:  # annotations that do not resolve: the builder's own errors say it
        return None
    fields = {k: (hints[k], ...) for k in options if k in hints}
    if not fields:
        return None
    try:
        model = pydantic.create_model(
            "Options", __config__=pydantic.ConfigDict(strict=True), **fields
        )
        model.model_validate({k: options[k] for k in fields})
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0])
        return f"{key} {options[key]!r}: {error['msg']}"
    return None


def build_model_to_load(name: str, **options: Any) -> nn.Module:
    """The model :func:`build_model` makes, its parameters and buffers allocated on the CPU
    but not initialised: for weights about to be loaded (``load_state_dict``, strict as by
    default, then sets every one).

    It is built on PyTorch's ``meta`` device and given empty storage (``to_empty``), so the
    random initialisation is skipped (a ResNet-50's 25 M draws, about 0.15 s a build) and the
    global random state is left as it was. A model that keeps state no state dict carries (a
    non-persistent buffer, a plain tensor attribute) is built as :func:`build_model` builds it.
    """
    has_model(name)  # its family imported here, not on the meta device
    with torch.device("meta"):
        model = build_model(name, **options)
    if _state_outside_state_dict(model):
        return build_model(name, **options)
    return model.to_empty(device="cpu")


def _state_outside_state_dict(model: nn.Module) -> bool:
    for module in model.modules():
        if module._non_persistent_buffers_set:
            return True
        if any(isinstance(v, torch.Tensor) for v in vars(module).values()):
            return True  # a tensor attribute that is neither a parameter nor a buffer
    return False
