"""Before anything else: which of the scenario's centres can the server reach?

The server polls the nodes it can reach, asks every new one who it is (``query.identify``)
and says every few seconds which centres are connected and which are missing, in Flower's
log (``flwr log``, ``flwr run --stream``) and in the run log. Simulated nodes are all there
at once (once Flower has registered them: :func:`simulated_node_ids`), so a simulation
federation with fewer SuperNodes than the scenario needs fails at once, naming the command
that fixes it; real sites get the recipe's ``connect_timeout``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, Protocol

from flwr.common.logger import log as flwr_log

from fedmammo.config import Scenario
from fedmammo.errors import FedmammoError
from fedmammo.federation.runspec import POOLED, RunSpec


class Identifying(Protocol):
    """What the connect step needs of the orchestrator (it never imports it: no loop)."""

    grid: Any
    scenario: Scenario
    nodes: dict[str, int]
    roles: dict[str, str]
    counts: dict[str, dict[str, int]]
    profiles: dict[str, str | None]
    references: dict[str, dict[str, float]]

    def timeout_for(self, kind: str) -> float: ...

    def identify_nodes(self, node_ids: Iterable[int], *, timeout: float) -> dict[int, str]: ...


__all__ = [
    "Connection",
    "ConnectError",
    "FederationTooSmall",
    "expected_nodes",
    "say",
    "other_profiles",
    "role_problem",
    "simulated_node_ids",
    "simulation_size_fix",
    "wait_for_centres",
]

log = logging.getLogger(__name__)

IDENTIFY = "query.identify"


class ConnectError(FedmammoError):
    """Centres the run needs did not connect (the message names them and the fix)."""


class FederationTooSmall(ConnectError):
    """A simulation federation has fewer SuperNodes than the scenario has nodes."""


def say(level: int, text: str) -> None:
    """One line in Flower's log (``flwr log`` / ``--stream``) and in the run log."""
    flwr_log(level, "%s", text)
    if level < WARNING:  # Flower's records reach run.log only from WARNING up
        log.log(level, text)


def expected_nodes(spec: RunSpec, scenario: Scenario, *, simulated: bool) -> list[str]:
    """The centres whose nodes the run waits for: real sites, or every simulated node
    (the pooled what-if node included, under the name it identifies with)."""
    if simulated and spec.node_order:
        return ["pooled" if n == POOLED else n for n in spec.node_order]
    return scenario.centre_names()


def simulated_node_ids(grid: Any, need: int, *, wait: float = 10.0) -> list[int]:
    """The simulated SuperNodes' ids, once Flower has registered them.

    Flower's simulation (flwr 1.41, ``run_simulation``) starts the ServerApp's thread before
    its engine registers the SuperNodes, so a ServerApp that asks at once can find none. Asks
    again while there are none, for up to ``wait`` seconds; fewer than ``need`` are read once
    more 0.2 s later (the engine registers them all in one loop).
    """
    deadline = time.monotonic() + wait
    ids = list(grid.get_node_ids())
    while not ids and time.monotonic() < deadline:
        time.sleep(0.05)
        ids = list(grid.get_node_ids())
    if 0 < len(ids) < need:
        time.sleep(0.2)
        ids = list(grid.get_node_ids())
    return ids


def simulation_size_fix(have: int, need: list[str], scenario: str) -> str:
    """One line: both numbers and the Flower 1.41 commands that resize the federation."""
    n = len(need)
    return (
        f"the simulation federation has {have} SuperNodes but scenario {scenario!r} needs {n} "
        f"({', '.join(need)}); fix: flwr federation simulation-config --num-supernodes {n} "
        f"(once), or this run only: flwr run . --federation-config 'num-supernodes={n}' ..."
    )


def _refused_settings(centre: str, reason: str) -> bool:
    """True if ``reason`` (an identify error reply) is ``centre``'s refusal of the run's image
    size or data seed (centre_runtime.DataSettingsRefusal, whose text names the centre)."""
    return f"DataSettingsRefusal: centre {centre} refused:" in reason


@dataclass
class Connection:
    """Who answered: centres connected and missing, nodes that failed to identify."""

    expected: list[str]
    connected: list[str]
    missing: list[str]
    errors: dict[int, str] = field(default_factory=dict)  # node id -> why it did not identify
    seconds: float = 0.0

    @property
    def refusing(self) -> list[str]:
        """Missing centres whose node refused the run's data settings (a wait cannot help)."""
        return [
            c for c in self.missing if any(_refused_settings(c, r) for r in self.errors.values())
        ]

    def missing_line(self, timeout: float | None) -> str:
        """One line naming the missing centres, the connected ones and why nodes failed
        (``timeout``: the connect_timeout waited; None: simulated nodes, no wait)."""
        if self.missing and set(self.refusing) == set(self.missing):  # stopped without a wait
            text = (
                f"every missing centre refused the run's data settings: "
                f"{', '.join(self.missing)} (connected: {', '.join(self.connected) or 'none'})"
            )
        else:
            waited = "(simulated)" if timeout is None else f"within connect_timeout={timeout:g} s"
            text = (
                f"centres {', '.join(self.missing)} did not connect {waited} "
                f"(connected: {', '.join(self.connected) or 'none'})"
            )
        if self.errors:
            text += "; nodes that failed to identify: " + "; ".join(
                f"{n}: {r}" for n, r in self.errors.items()
            )
        return text


def wait_for_centres(
    orc: Identifying,
    expected: list[str],
    *,
    timeout: float,
    simulated: bool,
    every: float = 5.0,
    poll: float = 1.0,
) -> Connection:
    """Identify nodes as they connect until every ``expected`` centre has (or ``timeout``
    seconds pass; simulated nodes: at once); report progress every ``every`` seconds.

    Raises :class:`FederationTooSmall` when simulated nodes are fewer than ``expected``.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout
    asked: set[int] = set()
    errors: dict[int, str] = {}
    next_report = t0  # a first word after the first answers, then every few seconds
    while True:
        ids = list(orc.grid.get_node_ids())
        if simulated and len(ids) < len(expected):
            raise FederationTooSmall(simulation_size_fix(len(ids), expected, orc.scenario.name))
        new = [n for n in ids if n not in asked]
        if new:
            asked.update(new)
            before = dict(orc.nodes)
            limit = orc.timeout_for(IDENTIFY)
            if not simulated:  # connect_timeout bounds the whole wait (10 s to answer at least)
                limit = min(limit, max(deadline - time.monotonic(), 10.0))
            failed = orc.identify_nodes(new, timeout=limit)
            errors.update(failed)
            _check_identities(orc, expected, before)
            for node, reason in failed.items():
                if reason.startswith("refused: centre"):  # a second node claiming a centre
                    say(WARNING, f"node {node} refused: {reason.removeprefix('refused: ')}")
                elif not simulated:  # simulated nodes beyond the scenario fail by design
                    say(WARNING, f"node {node} failed to identify: {reason}")
        connected = [c for c in expected if c in orc.nodes]
        missing = [c for c in expected if c not in orc.nodes]
        now = time.monotonic()
        conn = Connection(expected, connected, missing, errors, round(now - t0, 2))
        if missing and set(conn.refusing) == set(missing):
            say(
                WARNING,
                f"every missing centre refused the run's data settings: {', '.join(missing)}",
            )
            return conn
        if not missing:
            say(INFO, f"all {len(expected)} centres connected: {', '.join(connected)}")
            if len(ids) > len(expected):
                say(INFO, f"{len(ids) - len(expected)} more nodes than centres: left idle")
        elif not simulated and now >= next_report:
            say(
                INFO,
                f"waiting for centres: connected {len(connected)}/{len(expected)} "
                f"({', '.join(connected) or 'none'}), missing {', '.join(missing)}; "
                f"{max(deadline - now, 0):.0f} s of connect_timeout left",
            )
            next_report = now + every
        if not missing or simulated or now >= deadline:
            return conn
        time.sleep(poll)


_SPLITS = {True: "every image in the test split", False: "its images split train/val/test"}


def role_problem(scenario: Any, centre: str, role: str) -> str | None:
    """Why a site running ``centre`` as ``role`` (its node config) cannot take part in
    ``scenario`` (None when it can, or when the scenario does not name it): a test centre keeps
    every image in the test split, the other roles split theirs, so a mismatch would test on
    other images than the scenario means, without a word. The node is refused."""
    try:
        planned = scenario.entry(centre).role
    except KeyError:
        return None
    if (planned == "test") == (role == "test"):
        return None
    return (
        f"centre {centre}'s site runs it as role {role!r} (its node config), but scenario "
        f"{scenario.name!r} gives it role {planned!r} ({_SPLITS[planned == 'test']}); fix: at "
        f"the site, `python -m fedmammo.federation.deployment prepare ... --role {planned}` "
        f"and restart its SuperNode with `node-config ... --role {planned}`"
    )


def other_profiles(orc: Identifying, connected: Iterable[str]) -> list[str]:
    """One line per connected centre whose own profile (what its site runs: data, labels,
    splits, consent, privacy) is not the one the scenario resolved for it, e.g. the scenario's
    overrides, which a real site does not take from the server."""
    lines = []
    for centre in connected:
        own, planned = orc.profiles.get(centre), orc.scenario.resolved_profiles.get(centre)
        if own is None or planned is None or own == planned.digest():
            continue
        lines.append(
            f"centre {centre} runs its own profile, not the one scenario "
            f"{orc.scenario.name!r} resolved for it (its overrides, quick block or profile "
            "file differ from what the site prepared): the site's data, consent and privacy "
            "apply, so the plan checked before the run may not be what runs; fix: prepare the "
            "site with the scenario's profile and overrides, or drop them from the scenario"
        )
    return lines


def _check_identities(orc: Identifying, expected: list[str], before: dict[str, int]) -> None:
    """Drop centres the scenario does not name; keep a connected centre on its first node
    (``identify_nodes`` refuses a second node claiming it)."""
    for name in [c for c in orc.nodes if c not in expected]:
        node = orc.nodes.pop(name)
        orc.roles.pop(name, None)
        orc.counts.pop(name, None)
        orc.references.pop(name, None)
        say(
            WARNING,
            f"node {node} is centre {name!r}, which the scenario does not name "
            f"(expected: {', '.join(expected)}); ignored",
        )
    for name, node in before.items():
        if orc.nodes.get(name) not in (None, node):
            say(
                WARNING,
                f"node {orc.nodes[name]} claims centre {name!r}, connected from node "
                f"{node}: refused",
            )
            orc.nodes[name] = node
