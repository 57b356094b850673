"""Helpers to build Flower messages outside a running Flower app."""

from __future__ import annotations

import contextlib
import time

import pytest
import torch
from flwr.app import Message, Metadata, RecordDict

from fedmammo.federation import inprocess


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


class InProcessGrid(inprocess.InProcessGrid):
    """fedmammo's in-process grid over the real ClientApp (its handlers behind the DP, consent
    and egress guards), one node per name, keeping a log and every reply; the centres compute
    with the torch threads the test has when it makes the grid.

    ``log``: (node id, message type, config dict); ``replies``: (centre, type, content).
    A failing centre answers with an error reply, as in Flower; with ``strict`` it is raised.
    """

    def __init__(self, names: list[str], *, strict: bool = False) -> None:
        from fedmammo.apps import client_app

        super().__init__(client_app, len(names), num_threads=torch.get_num_threads())
        self.names = dict(zip(self.contexts, names, strict=True))
        self.strict = strict
        self.log: list[tuple[int, str, dict]] = []
        self.replies: list[tuple[str, str, object]] = []

    def send_and_receive(self, messages, timeout=None):
        return super().send_and_receive(messages, timeout=timeout)

    def _deliver(self, message, message_id):
        node, kind = message.metadata.dst_node_id, message.metadata.message_type
        cfg = dict(message.content["config"]) if "config" in message.content else {}
        self.log.append((node, kind, cfg))
        reply = super()._deliver(message, message_id)
        if self.strict and reply.has_error():
            raise AssertionError(f"{self.names[node]} {kind}: {reply.error.reason}")
        if not reply.has_error():
            self.replies.append((self.names[node], kind, reply.content))
        return reply


#: Let the server side build Flower Messages outside a running ServerApp.
in_process_identity = inprocess.server_identity


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
