"""The job queue: bounded messages in flight, results in the order of the jobs."""

from __future__ import annotations

import uuid

import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict
from helpers.flower_messages import in_process_identity

from fedmammo.federation.jobs import Job, run_jobs

NODES = {"A": 11, "B": 12, "C": 13}


class ScriptedGrid:
    """A grid whose nodes answer job ``i`` after ``delays[i]`` pulls (None: never; "error":
    an error reply after one pull), keeping track of what was in flight."""

    def __init__(self, delays: dict[int, int | str | None]) -> None:
        self.delays = delays
        self.flying: dict[str, tuple[Message, int]] = {}  # id -> (message, pulls so far)
        self.pushed: list[int] = []
        self.most_in_flight = 0
        self.most_per_node: dict[int, int] = {}

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            message_id = str(uuid.uuid4())
            msg.metadata.__dict__["_message_id"] = message_id  # as Flower's grids do
            self.flying[message_id] = (msg, 0)
            self.pushed.append(int(msg.content["config"]["job"]))
            ids.append(message_id)
        self.most_in_flight = max(self.most_in_flight, len(self.flying))
        for node in {m.metadata.dst_node_id for m, _ in self.flying.values()}:
            n = sum(m.metadata.dst_node_id == node for m, _ in self.flying.values())
            self.most_per_node[node] = max(self.most_per_node.get(node, 0), n)
        return ids

    def pull_messages(self, message_ids):
        replies = []
        for message_id in list(message_ids):
            msg, pulls = self.flying[message_id]
            job = int(msg.content["config"]["job"])
            delay = self.delays.get(job, 1)
            if delay is None or (delay != "error" and pulls + 1 < delay):
                self.flying[message_id] = (msg, pulls + 1)
                continue
            del self.flying[message_id]
            if delay == "error":
                replies.append(Message(Error(code=0, reason=f"job {job} failed"), reply_to=msg))
            else:
                content = RecordDict({"config": ConfigRecord({"answer": job * 10})})
                replies.append(Message(content, reply_to=msg))
        return replies


def _jobs(centres: str, built: list[int] | None = None) -> list[Job]:
    def content(i: int) -> RecordDict:
        if built is not None:
            built.append(i)
        return RecordDict({"config": ConfigRecord({"job": i})})

    return [Job(c, lambda i=i: content(i)) for i, c in enumerate(centres)]


def _run(grid, jobs, *, in_flight, per_centre=lambda c: 9, timeout=60.0):
    with in_process_identity():
        return list(
            run_jobs(
                grid, NODES, "train.x", jobs, timeout=timeout, in_flight=in_flight,
                per_centre=per_centre,
            )
        )  # fmt: skip


def test_results_come_in_job_order_whatever_order_the_replies_come_in():
    # Prepare: job 0 is the slowest, job 3 the fastest
    grid = ScriptedGrid({0: 6, 1: 3, 2: 2, 3: 1, 4: 2})
    # Act
    results = _run(grid, _jobs("AAAAA"), in_flight=3)
    # Assert: in order, each with its own reply; never more than 3 out at once
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert [r.content["config"]["answer"] for r in results] == [0, 10, 20, 30, 40]
    assert [r.failure for r in results] == [None] * 5
    assert grid.most_in_flight == 3


def test_a_full_centre_lets_the_next_jobs_of_other_centres_go_first():
    # Prepare: A takes one job at a time, B up to two; two slots in all
    grid = ScriptedGrid({0: 4, 1: 1, 2: 1, 3: 1})
    built: list[int] = []
    # Act
    results = _run(
        grid, _jobs("AABB", built), in_flight=2, per_centre=lambda c: 1 if c == "A" else 2
    )
    # Assert: job 1 (A) waits for job 0 while B's jobs use the other slot
    assert grid.pushed == [0, 2, 3, 1]
    assert built == grid.pushed  # a job's content is built when it is sent, not before
    assert grid.most_per_node == {11: 1, 12: 1}
    assert grid.most_in_flight == 2
    assert [r.content["config"]["answer"] for r in results] == [0, 10, 20, 30]


def test_without_a_bound_every_centre_gets_its_own_jobs_one_at_a_time():
    # real sites: one message at a time per centre, all centres at once
    grid = ScriptedGrid({})
    _run(grid, _jobs("ABCABC"), in_flight=None, per_centre=lambda c: 1)
    assert grid.most_in_flight == 3
    assert set(grid.most_per_node.values()) == {1}


def test_errors_timeouts_and_unknown_centres_are_failures_of_their_job_only():
    # Prepare: job 1 errs, job 2 never answers, job 3 is for a centre that is not connected
    grid = ScriptedGrid({1: "error", 2: None})
    jobs = _jobs("AAAA")
    jobs[3] = Job("D", jobs[3].content)
    # Act
    results = _run(grid, jobs, in_flight=2, timeout=0.3)
    # Assert
    assert [r.content is None for r in results] == [False, True, True, True]
    assert results[1].failure == "job 1 failed"
    assert results[2].failure == "no reply within message_timeout.train=0.3 s"
    assert results[3].failure == "centre D is not connected"
    assert [r.centre for r in results] == ["A", "A", "A", "D"]


def test_a_result_is_handed_over_before_the_next_job_is_sent():
    # A server killed while sending job k has recorded every job before it (resume)
    grid = ScriptedGrid({})
    seen: list[tuple[str, int]] = []
    original = grid.push_messages

    def push(messages):
        messages = list(messages)
        seen.append(("push", int(messages[0].content["config"]["job"])))
        return original(messages)

    grid.push_messages = push
    with in_process_identity():
        for result in run_jobs(
            grid, NODES, "train.x", _jobs("AAA"), timeout=60, in_flight=1, per_centre=lambda c: 1
        ):
            seen.append(("result", result.index))
    assert seen == [(step, i) for i in range(3) for step in ("push", "result")]


@pytest.mark.parametrize("in_flight", [1, 2, None])
def test_no_jobs_no_messages(in_flight):
    grid = ScriptedGrid({})
    assert _run(grid, [], in_flight=in_flight) == []
    assert grid.pushed == []


@pytest.mark.parametrize(
    ("deployment", "workers", "in_flight", "at_a", "at_b"),
    [(False, 3, 3, 3, 1), (False, 1, 1, 1, 1), (True, 3, None, 1, 1)],
)
def test_the_orchestrator_sends_as_many_as_the_engine_runs(
    monkeypatch, deployment, workers, in_flight, at_a, at_b
):
    # simulation: RunSpec.workers in flight, at one centre too except the one_at_a_time
    # ones; real sites: one per centre, no overall bound
    from types import SimpleNamespace

    from fedmammo.federation import orchestrator
    from fedmammo.federation.runspec import RunSpec

    seen = {}
    monkeypatch.setattr(orchestrator, "run_jobs", lambda *a, **kw: seen.update(kw) or iter(()))
    recipe = SimpleNamespace(message_timeout=SimpleNamespace(of=lambda kind: 42.0))
    orc = orchestrator.Orchestrator(
        grid=None,
        spec=RunSpec("s.yaml", "run", deployment=deployment, workers=workers),
        scenario=SimpleNamespace(recipe=recipe),
        recorder=None,
    )
    list(orc.run_jobs("train.x", [], one_at_a_time={"B"}))
    assert (seen["in_flight"], seen["timeout"]) == (in_flight, 42.0)
    assert (seen["per_centre"]("A"), seen["per_centre"]("B")) == (at_a, at_b)
