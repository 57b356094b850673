"""The method registry: strategy ``kind`` -> everything the method is made of.

A method is one folder under ``fedmammo/methods/`` with the same files in each
(``params.py``, ``messages.py``, ``client.py``, ``server.py``, ``report.py``, ``plan.py``;
docs/architecture.md) and registers itself once, in
its ``__init__.py``, with :func:`register`. The scenario's ``strategy`` kind resolves here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel

from fedmammo.config.recipe import register_params
from fedmammo.federation.handlers import Handler

if TYPE_CHECKING:  # annotations only
    from rich.console import Console

    from fedmammo.config import Scenario
    from fedmammo.evaluation.results import RunRecorder
    from fedmammo.federation.orchestrator import Orchestrator

__all__ = ["METHODS", "Method", "PlanRow", "get_method", "register"]


@dataclass(frozen=True)
class PlanRow:
    """One unit of a run's plan (an arm at a seed, a generator to train): what ``--check``
    prints and checks before anything runs.

    ``messages`` pairs each message type the unit sends with the centres it goes to (the
    consent and DP guards of those centres are checked against the handlers' declarations);
    ``model`` is the model the unit trains at those centres (``{"name", "options"}``), checked
    against the model registry and, at DP centres, for layers DP-SGD cannot train.
    """

    arm: str
    seed: int | None
    centres: tuple[str, ...]
    rounds: int | None = None
    messages: tuple[tuple[str, tuple[str, ...]], ...] = ()
    first_round: int = 1  # a later phase continues the numbering (mtl fine-tuning)
    model: dict | None = field(default=None, compare=False)
    note: str = ""

    @property
    def last_round(self) -> int | None:
        """The number of the unit's last round (None without rounds)."""
        return self.first_round + self.rounds - 1 if self.rounds else None


@dataclass(frozen=True)
class Method:
    """One method: its recipe parameters, server phases, centre handlers and report.

    ``run(orc)`` drives the server side; ``handlers`` answer its messages at the centres;
    ``report(recorder, console)`` returns the method's section of ``results.md`` (and may
    print its tables). ``plan(scenario, params)`` (optional) lists the run's units in running
    order and raises ConfigError for what the scenario cannot run; without it the plan is one
    row per seed (``fedmammo.methods.planning``). ``roles``: the centre roles the method gives
    a meaning (``--check`` refuses a centre with another). ``classifiers``: the ``params``
    fields holding the image classifiers :mod:`fedmammo.training.classifier` trains (a model,
    or a dict of them), whose contract ``--check`` tries on one blank batch.
    """

    kind: str
    description: str
    params: type[BaseModel]
    run: Callable[[Orchestrator], None]
    handlers: tuple[Handler, ...]
    report: Callable[[RunRecorder, Console], str]
    plan: Callable[[Scenario, BaseModel], list[PlanRow]] | None = None
    roles: tuple[str, ...] = ("train", "receiver", "test")
    classifiers: tuple[str, ...] = ()

    @property
    def message_types(self) -> list[str]:
        """The message types this method's handlers answer."""
        return [h.message_type for h in self.handlers]

    def __post_init__(self) -> None:
        types = self.message_types
        if len(set(types)) != len(types):
            raise ValueError(f"method {self.kind!r}: a message type is handled twice: {types}")


#: kind -> Method, in registration order.
METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Register ``method`` under its kind (and its parameter model with the config loader)."""
    if method.kind in METHODS:
        raise ValueError(f"method {method.kind!r} registered twice")
    register_params(method.kind, method.params)
    METHODS[method.kind] = method
    return method


def get_method(kind: str) -> Method:
    """The method registered as ``kind`` (ValueError listing the valid kinds when unknown)."""
    if kind not in METHODS:
        raise ValueError(
            f"unknown strategy kind {kind!r}; valid kinds: {', '.join(sorted(METHODS))}"
        )
    return METHODS[kind]
