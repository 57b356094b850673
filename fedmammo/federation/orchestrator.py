"""Server-side plumbing shared by every strategy: node identity, messaging, checkpoints."""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid
from rich.console import Console

from fedmammo.config import Scenario
from fedmammo.federation.checkpoints import read_checkpoint, write_checkpoint
from fedmammo.federation.connect import role_problem
from fedmammo.federation.console import safe
from fedmammo.federation.jobs import Job, JobResult, run_jobs
from fedmammo.federation.messages import (
    ARRAYS,
    COUNTS,
    INFO,
    METRICS,
    REFERENCE,
    CentreConfig,
    CentreInfo,
    Identify,
)
from fedmammo.federation.replies import reply_node
from fedmammo.federation.run_log import SHOWN
from fedmammo.federation.runspec import RunSpec
from fedmammo.federation.window import send_and_receive, window_for
from fedmammo.seeds import evaluation_seed

if TYPE_CHECKING:  # annotations only: results load pandas
    from fedmammo.evaluation.results import RunRecorder

__all__ = ["Orchestrator", "short_reason"]

log = logging.getLogger(__name__)

C = TypeVar("C", bound=CentreConfig)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def short_reason(reason: str) -> str:
    """The informative last line of a (Ray-wrapped) ClientApp error reason."""
    text = _ANSI.sub("", reason or "error")
    found = re.findall(r"Message: (.+?)(?:'>|$)", text, flags=re.S)
    line = found[-1] if found else text.strip().splitlines()[-1]
    return " ".join(line.split())[:500]


@dataclass
class Orchestrator:
    """What a strategy runner uses to talk to centres and record results."""

    grid: Grid
    spec: RunSpec
    scenario: Scenario
    recorder: RunRecorder
    console: Console = field(default_factory=Console)
    nodes: dict[str, int] = field(default_factory=dict)  # centre name -> node id
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    profiles: dict[str, str | None] = field(default_factory=dict)  # centre -> its own digest
    threads: dict[str, int | None] = field(default_factory=dict)  # centre -> torch threads
    # centre -> its brightest-pixel reference AUROC of its test images (identify's "reference")
    references: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def params(self):
        return self.scenario.recipe.typed_params(quick=self.spec.quick)

    @property
    def run_dir(self) -> Path:
        return Path(self.spec.run_dir)

    def timeout_for(self, message_type: str) -> float:
        """Seconds to wait for the replies to ``message_type`` (recipe ``message_timeout``)."""
        return self.scenario.recipe.message_timeout.of(message_type)

    @property
    def timeout(self) -> float:
        """Seconds to wait for one training round's replies (``message_timeout.train``)."""
        return self.timeout_for("train")

    def message(self, kind: type[C], **fields) -> C:
        """A message of ``kind`` with the scenario's image size and data seed, plus ``fields``."""
        return kind(
            image_size=tuple(self.scenario.image_size), data_seed=self.scenario.data_seed, **fields
        )

    # ------------------------------------------------------------------ identity
    def identify(self, expected: int | None = None) -> None:
        """Wait for every centre's node and map node ids to centres; raise naming the missing
        ones. ``expected``: the number of simulated nodes (None: real sites, which get the
        recipe's ``connect_timeout``)."""
        from fedmammo.federation.connect import ConnectError, expected_nodes, wait_for_centres

        simulated = expected is not None
        names = expected_nodes(self.spec, self.scenario, simulated=simulated)
        conn = wait_for_centres(
            self, names, timeout=self.scenario.recipe.connect_timeout, simulated=simulated
        )
        if conn.missing:
            timeout = None if simulated else self.scenario.recipe.connect_timeout
            raise ConnectError(conn.missing_line(timeout))

    def identify_nodes(self, node_ids: Iterable[int], *, timeout: float) -> dict[int, str]:
        """Ask ``node_ids`` who they are (``query.identify``) and record the centres that
        answer; return the others (node id -> why)."""
        node_ids = list(node_ids)
        msgs = [
            Message(self.message(Identify).content(), dst_node_id=n, message_type=Identify.KIND)
            for n in node_ids
        ]
        failed = {n: f"no reply within {timeout:g} s" for n in node_ids}
        for reply in self.exchange(msgs, timeout=timeout):
            src = reply_node(reply, msgs)
            if reply.has_error():
                failed[src] = short_reason(reply.error.reason)
                continue
            info = CentreInfo.from_config(reply.content[INFO])
            if self.nodes.get(info.centre, src) != src:  # a second node claiming a centre
                failed[src] = (
                    f"refused: centre {info.centre} is already connected from node "
                    f"{self.nodes[info.centre]}"
                )
                line = f"node {src} claims centre {info.centre}, {failed[src]}"
                log.warning("%s", line)
                self.recorder.note(  # in results.json and results.md: whose numbers these are
                    f"{line}: centre {info.centre}'s results are node "
                    f"{self.nodes[info.centre]}'s (a site started twice, or another node "
                    "serving its name: check which)"
                )
                continue
            wrong_role = role_problem(self.scenario, info.centre, info.role)
            if wrong_role:
                failed[src] = f"refused: {wrong_role}"
                log.warning("node %s refused: %s", src, wrong_role)
                continue
            failed.pop(src, None)
            self.nodes[info.centre] = src
            self.roles[info.centre] = info.role
            self.counts[info.centre] = {k: int(v) for k, v in reply.content[COUNTS].items()}
            self.profiles[info.centre] = info.profile
            self.threads[info.centre] = info.torch_threads
            if REFERENCE in reply.content:
                self.references[info.centre] = dict(reply.content[REFERENCE])
        return failed

    # ------------------------------------------------------------------ messaging
    def exchange(self, messages: Sequence[Message], *, timeout: float) -> list[Message]:
        """The replies to ``messages`` (``grid.send_and_receive``); in a simulation a few per
        engine worker out at once (:mod:`fedmammo.federation.window`: Flower's engine scans
        every stored message for every node), at real sites all at once."""
        window = None if self.spec.deployment else window_for(self.spec.workers)
        return send_and_receive(self.grid, messages, timeout=timeout, window=window)

    def send(
        self, message_type: str, contents: Mapping[str, RecordDict]
    ) -> tuple[dict[str, RecordDict], dict[str, str]]:
        """Send one message per centre; return replies and failures (centre -> reason)."""
        by_node = {self.nodes[c]: c for c in contents}
        msgs = [
            Message(content, dst_node_id=self.nodes[c], message_type=message_type)
            for c, content in contents.items()
        ]
        replies: dict[str, RecordDict] = {}
        timeout = self.timeout_for(message_type)
        phase = message_type.split(".")[0]
        failures = {c: f"no reply within message_timeout.{phase}={timeout:g} s" for c in contents}
        for reply in self.exchange(msgs, timeout=timeout):
            centre = by_node.get(reply_node(reply, msgs), "?")
            if reply.has_error():
                failures[centre] = reply.error.reason or "error"
                continue
            replies[centre] = reply.content
            failures.pop(centre, None)
        return replies, failures

    def run_jobs(
        self, message_type: str, jobs: Sequence[Job], *, one_at_a_time: Collection[str] = ()
    ) -> Iterator[JobResult]:
        """Independent jobs, their results in order (:func:`~fedmammo.federation.jobs.run_jobs`).

        In a simulation as many at once as the engine runs (``RunSpec.workers``: one in
        process), also at one centre except the ``one_at_a_time`` centres (those whose jobs may
        charge a privacy ledger); at real sites one at a time per centre, all centres at once.
        """
        if self.spec.deployment:
            in_flight, most = None, 1
        else:
            in_flight = most = max(1, self.spec.workers)
        return run_jobs(
            self.grid,
            self.nodes,
            message_type,
            jobs,
            timeout=self.timeout_for(message_type),
            in_flight=in_flight,
            per_centre=lambda centre: 1 if centre in one_at_a_time else most,
        )

    def centres(self, *roles: str) -> list[str]:
        """Scenario centres with one of ``roles`` (all real centres when none given); once
        identified, only those connected (a run may go on without some: ``min_centres``)."""
        return [
            c
            for c in self.scenario.centre_names()
            if (not roles or self.scenario.entry(c).role in roles)
            and (not self.nodes or c in self.nodes)
        ]

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_path(self, arm: str, seed: int, rnd: int) -> Path:
        return self.run_dir / "checkpoints" / arm / f"seed{seed}_round{rnd:03d}.pt"

    def checkpoint(
        self,
        arm: str,
        seed: int,
        rnd: int,
        arrays: ArrayRecord,
        *,
        model: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the model ``arrays`` of ``arm`` and ``seed`` after round ``rnd`` whole, a plain
        state dict (``torch.load(path, weights_only=True)``), and its sidecar
        (:func:`sidecar_path`): the file's sha256, arm, seed, round, image size, scenario,
        code, and ``model`` (the spec, ``{"name", "options"}``, of the weights) when it builds
        a model with exactly these keys and shapes (else null)."""
        meta = self.recorder.meta
        about = {
            "arm": arm,
            "seed": seed,
            "round": rnd,
            "model": model,
            "image_size": list(self.scenario.image_size),
            "scenario": self.scenario.name,
            "strategy": self.scenario.recipe.name,
            "git_commit": meta.get("git_commit"),
            "git_dirty": meta.get("git_dirty"),
            "fedmammo_version": (meta.get("versions") or {}).get("fedmammo"),
        }
        path = self.checkpoint_path(arm, seed, rnd)
        return write_checkpoint(path, arrays.to_torch_state_dict(), about)

    def load_checkpoint(self, arm: str, seed: int, rnd: int) -> ArrayRecord:
        """The model :meth:`checkpoint` wrote (checked: :func:`read_checkpoint`)."""
        return ArrayRecord(read_checkpoint(self.checkpoint_path(arm, seed, rnd)))

    def record_failures(
        self, failures: Mapping[str, str], *, arm: str, seed: int, rnd: int | None, phase: str
    ) -> None:
        for centre, reason in failures.items():
            reason = short_reason(reason)
            self.recorder.failure(
                arm=arm, seed=seed, centre=centre, reason=reason, round=rnd, phase=phase
            )
            line = f"centre {centre} failed in {phase} (arm {arm}, round {rnd}): {reason}"
            log.warning("%s", line, extra=SHOWN)  # run.log (the console prints it below)
            self.console.print(f"[yellow]{safe(line)}[/]", highlight=False)

    def evaluate_everywhere(
        self,
        kind: type[CentreConfig],
        *,
        arm: str,
        seed: int,
        arrays: ArrayRecord,
        centres: Iterable[str],
        split: str,
        rnd: int | None = None,
        **fields,
    ) -> None:
        """Evaluate one model at several centres with ``kind`` messages (``split`` and
        ``fields``, the message seed derived per centre) and record the metric records of the
        replies (``kind.REPLY``, an :class:`~fedmammo.federation.messages.EvaluationMetrics`).

        The seed does not depend on the arm: every arm tested at a centre sees the same
        bootstrap resamples of its test images, so two arms' CIs are comparable."""
        contents = {
            c: self.message(
                kind,
                arm=arm,
                seed=evaluation_seed(seed, c),
                run_seed=seed,
                split=split,
                **fields,
            ).content({ARRAYS: arrays})
            for c in centres
        }
        self.record_evaluations(kind, contents, arm=arm, seed=seed, split=split, rnd=rnd)

    def record_evaluations(
        self,
        kind: type[CentreConfig],
        contents: Mapping[str, RecordDict],
        *,
        arm: str,
        seed: int,
        split: str,
        rnd: int | None = None,
        rename: Mapping[str, str] | None = None,
    ) -> None:
        """Send the ``kind`` messages ``contents`` (centre -> content) and record the metric
        records of the replies under ``arm``, ``seed`` and ``split`` (metrics named in
        ``rename`` under their new names); failures too."""
        replies, failures = self.send(kind.KIND, contents)
        self.record_failures(failures, arm=arm, seed=seed, rnd=rnd, phase=f"evaluate-{split}")
        rename = rename or {}
        for c, content in replies.items():
            records = kind.REPLY.from_metrics(content[METRICS]).records
            self.recorder.add(
                [{**r, "metric": rename.get(r["metric"], r["metric"])} for r in records],
                arm=arm,
                seed=seed,
                centre=c,
                split=split,
                round=rnd,
            )
