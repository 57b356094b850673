"""Helpers to build Flower messages outside a running Flower app."""

from __future__ import annotations

import contextlib
import time

import pytest
from flwr.app import Error, Message, Metadata, RecordDict


def make_incoming(content: RecordDict, message_type: str, *, src: int = 0, dst: int = 7) -> Message:
    """A message as a ClientApp would receive it from the server."""
    meta = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=src,
        dst_node_id=dst,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    return Message(content=content, metadata=meta)


class InProcessGrid:
    """A Flower Grid stand-in that delivers each message to fedmammo's real ClientApp
    (its handlers behind the DP guard and the egress guard), keeping a log and every reply.

    ``log``: (node id, message type, config dict); ``replies``: (centre, type, content).
    A handler's exception becomes an error reply, as in Flower; with ``strict`` it is raised.
    """

    def __init__(self, names: list[str], *, strict: bool = False) -> None:
        from flwr.app import Context, RecordDict

        self.contexts = {
            100 + i: Context(
                run_id=1,
                node_id=100 + i,
                state=RecordDict(),
                run_config={},
                node_config={"partition-id": i, "num-partitions": len(names)},
            )
            for i in range(len(names))
        }
        self.names = {100 + i: n for i, n in enumerate(names)}
        self.strict = strict
        self.log: list[tuple[int, str, dict]] = []
        self.replies: list[tuple[str, str, object]] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, timeout=None):
        from fedmammo.apps import client_app

        out = []
        for msg in messages:
            node, kind = msg.metadata.dst_node_id, msg.metadata.message_type
            cfg = dict(msg.content["config"]) if "config" in msg.content else {}
            self.log.append((node, kind, cfg))
            incoming = make_incoming(msg.content, kind, dst=node)
            try:
                reply = client_app(incoming, self.contexts[node])
            except Exception as exc:  # what Flower does: an error reply
                if self.strict:
                    raise
                reason = f"{type(exc).__name__}: {exc}"
                reply = Message(Error(code=1, reason=reason), reply_to=incoming)
            if self.strict and reply.has_error():  # the ClientApp's error mod caught it
                raise AssertionError(f"{self.names[node]} {kind}: {reply.error.reason}")
            if not reply.has_error():
                self.replies.append((self.names[node], kind, reply.content))
            out.append(reply)
        return out


@contextlib.contextmanager
def in_process_identity():
    """Let the server side build Flower Messages outside a running ServerApp."""
    from flwr.supercore.task_identity import TaskIdentity

    with pytest.MonkeyPatch.context() as mp:
        for attr in ("_run_id", "_node_id", "_task_id"):  # what a server-side Message() reads
            mp.setattr(TaskIdentity, attr, 1)
        yield


def run_strategy_in_process(spec, scenario, runner, *, resume: bool = False, strict: bool = False):
    """Run a strategy ``runner(orc)`` for ``spec`` / ``scenario`` through an
    :class:`InProcessGrid` (no Ray); returns (orchestrator, grid)."""
    import dataclasses
    from pathlib import Path

    from fedmammo.evaluation.results import RunRecorder
    from fedmammo.federation.orchestrator import Orchestrator
    from fedmammo.federation.runspec import ENV_VAR

    spec = dataclasses.replace(spec, node_order=scenario.centre_names(), resume=resume)
    Path(spec.run_dir).mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp, contextlib.ExitStack() as stack:
        mp.setenv(ENV_VAR, str(spec.save()))
        stack.enter_context(in_process_identity())
        grid = InProcessGrid(spec.node_order, strict=strict)
        recorder = RunRecorder(spec.run_dir, resume=resume)
        orc = Orchestrator(grid=grid, spec=spec, scenario=scenario, recorder=recorder)
        orc.identify(len(grid.contexts))
        runner(orc)
        orc.recorder.flush()
    return orc, grid


def run_tiny_in_process(
    tiny,
    tmp_path,
    monkeypatch,
    kind: str,
    sets: dict | None = None,
    *,
    run_dir=None,
    grid_cls=None,
    resume: bool = False,
    report=None,
    with_pooled: bool = False,
):
    """Run method ``kind`` on scenario ``tiny`` through the server's own ``run_scenario`` and
    the real ClientApp in process; returns (results.json as a dict, the grid).

    Data in ``tmp_path/data``, the run in ``run_dir`` (default ``tmp_path/run``); ``grid_cls``
    replaces :class:`InProcessGrid` (a grid that fails on purpose), ``resume`` continues the
    run folder as ``flwr run ... resume=true`` does, ``report`` replaces the method's report;
    ``with_pooled`` adds the pooled what-if node when an arm needs it (as simulation does).
    """
    import dataclasses
    import json
    from pathlib import Path

    from fedmammo.config import load_scenario
    from fedmammo.federation.runspec import ENV_VAR, RunSpec, node_order
    from fedmammo.federation.server_app import resumed, run_scenario
    from fedmammo.methods import METHODS

    sets = {"data_dir": str(tmp_path / "data"), **(sets or {})}
    scenario = load_scenario(tiny, sets=sets)
    spec = RunSpec(
        scenario_file=str(tiny),
        run_dir=str(run_dir or tmp_path / "run"),
        sets=sets,
        node_order=node_order(scenario) if with_pooled else scenario.centre_names(),
    )
    Path(spec.run_dir).mkdir(parents=True, exist_ok=True)
    if resume:
        spec = resumed(spec)
    monkeypatch.setenv(ENV_VAR, str(spec.save()))
    method = METHODS[kind]
    with in_process_identity():
        grid = (grid_cls or InProcessGrid)(spec.node_order, strict=True)
        run_scenario(grid, dataclasses.replace(spec), method.run, report or method.report)
    return json.loads((Path(spec.run_dir) / "results.json").read_text()), grid
