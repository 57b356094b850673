"""The in-process simulation backend: a Flower Grid whose centres answer in this process.

Toy ServerApp / ClientApp pairs check what the grid promises (each centre its own Context,
copies both ways, a Ray actor's torch threads, Flower's error reply); the last test runs
fedavg_tiny through ``python -m fedmammo.simulate --backend inprocess`` and compares every
number with the Ray run of the same scenario.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import ServerApp
from flwr.supercore.task_identity import TaskIdentity
from helpers.run_helpers import REPO, comparable_metrics, results, run_cli

from fedmammo.federation.inprocess import (
    InProcessGrid,
    run_in_process,
    server_identity,
)
from fedmammo.federation.ray_cluster import centre_threads


def _echo_client(seen: list) -> ClientApp:
    """A ClientApp that counts its messages in its Context, records what it saw, scribbles
    on the message it got and keeps the record it replies with."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context) -> Message:
        count = int(context.state["n"]["count"]) + 1 if "n" in context.state else 1
        context.state["n"] = ConfigRecord({"count": count})
        seen.append(
            {
                "partition": context.node_config["partition-id"],
                "of": context.node_config["num-partitions"],
                "count": count,
                "threads": torch.get_num_threads(),
                "incoming": msg.content,
            }
        )
        msg.content["config"]["scribbled"] = True  # must not reach the server's message
        if msg.content["config"].get("fail"):
            raise RuntimeError("centre broke")
        reply = RecordDict({"echo": ArrayRecord([np.full(3, count, dtype=np.float32)])})
        seen[-1]["reply"] = reply
        return Message(reply, reply_to=msg)

    return app


def _server(rounds: int, replies: list, sent: list, *, fail: int | None = None) -> ServerApp:
    """``rounds`` queries to every node; the node at index ``fail`` is told to raise."""
    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        for _ in range(rounds):
            messages = [
                Message(
                    RecordDict({"config": ConfigRecord({"fail": i == fail})}),
                    dst_node_id=node,
                    message_type="query",
                )
                for i, node in enumerate(grid.get_node_ids())
            ]
            sent.extend(messages)
            replies.append(list(grid.send_and_receive(messages)))

    return app


def test_each_centre_keeps_its_own_context_and_nothing_is_shared():
    # Prepare
    seen, replies, sent = [], [], []
    threads = torch.get_num_threads()
    # Act: two rounds to three centres, each centre computing with 3 torch threads
    grid = InProcessGrid(_echo_client(seen), 3, num_threads=3)
    with server_identity():
        _server(2, replies, sent)(grid, None)
    # Assert: partition ids as Flower's simulation gives them, a state per centre
    assert [(s["partition"], s["of"]) for s in seen] == [(i, 3) for i in range(3)] * 2
    assert [s["count"] for s in seen] == [1, 1, 1, 2, 2, 2]
    assert {int(c.state["n"]["count"]) for c in grid.contexts.values()} == {2}
    # every reply answers its message, from its node, with the centre's count
    for round_replies, count in zip(replies, (1, 2), strict=True):
        assert [r.metadata.src_node_id for r in round_replies] == grid.get_node_ids()
        assert all(not r.has_error() for r in round_replies)
        assert [r.content["echo"].to_numpy_ndarrays()[0][0] for r in round_replies] == [count] * 3
    # copies both ways: the centre's scribble never reached the server, the server's reply
    # record is not the object the centre kept
    assert all("scribbled" not in m.content["config"] for m in sent)
    assert all(s["incoming"] is not m.content for s, m in zip(seen, sent, strict=True))
    kept = [s["reply"] for s in seen]
    got = [r.content for rr in replies for r in rr]
    assert all(a is not b for a, b in zip(kept, got, strict=True))
    # a centre computed with its threads; the server's are back afterwards
    assert {s["threads"] for s in seen} == {3}
    assert torch.get_num_threads() == threads
    assert grid.pull_messages(["not-a-message"]) == []


def test_a_centre_that_raises_answers_with_flowers_error_reply():
    # Prepare
    seen, replies, sent = [], [], []
    # Act: the second centre raises in its handler
    grid = run_in_process(_server(1, replies, sent, fail=1), _echo_client(seen), 3)
    # Assert: the others answered; the failing one's reply is an error naming the exception
    (round_replies,) = replies
    errors = [r for r in round_replies if r.has_error()]
    assert [r.metadata.src_node_id for r in errors] == [grid.get_node_ids()[1]]
    assert errors[0].error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert "centre broke" in errors[0].error.reason
    assert sum(not r.has_error() for r in round_replies) == 2


def test_run_in_process_sets_the_server_identity_only_while_it_runs():
    # Prepare
    before = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    during = []
    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        during.append((TaskIdentity.run_id, TaskIdentity.node_id, context.run_config))

    # Act
    grid = run_in_process(app, _echo_client([]), 2)
    # Assert: Flower's server node id (1) while running, the old identity restored after
    assert during == [(1, 1, {})]
    assert (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id) == before
    assert len(grid.get_node_ids()) == 2


def test_a_message_to_a_node_that_does_not_exist_is_an_error():
    grid = InProcessGrid(_echo_client([]), 2)
    with server_identity():
        message = Message(RecordDict(), dst_node_id=5, message_type="query")
    with pytest.raises(ValueError, match=r"no simulated node 5 \(nodes: \[1001, 1002\]\)"):
        grid.push_messages([message])


@pytest.mark.parametrize(
    ("env", "num_cpus", "threads"), [(None, 1, 1), (None, 2.5, 2), (None, 0.5, 1), ("3", 1, 1)]
)
def test_a_centre_gets_the_threads_of_a_ray_actor(monkeypatch, env, num_cpus, threads):
    # floor(num_cpus), at least 1, as Ray gives an actor; a shell's OMP_NUM_THREADS does not
    # count (it changed a run's numbers: float sums in another order)
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    assert centre_threads(num_cpus) == threads


@pytest.mark.slow
def test_inprocess_simulation_gives_the_numbers_of_the_ray_simulation(
    tmp_path, fedavg_tiny_simulation
):
    # Prepare: the Ray run of scenarios/fedavg_tiny.yaml (session fixture)
    ray_res = results(fedavg_tiny_simulation)
    # Act: the same scenario, every centre in the simulate process
    proc, run_dir = run_cli(
        [str(REPO / "scenarios" / "fedavg_tiny.yaml"), "--backend", "inprocess"], out=tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = results(run_dir)

    # Assert: every metric (all arms, centres, rounds, CIs) equal; only the timings differ
    assert len(comparable_metrics(res)) > 100
    assert comparable_metrics(res) == comparable_metrics(ray_res)
    assert res["failures"] == ray_res["failures"] == []
    assert (res["meta"]["backend"], ray_res["meta"]["backend"]) == ("inprocess", "ray")
    for run in (res, ray_res):  # each centre's torch threads, as it reported them
        assert {c["torch_threads"] for c in run["meta"]["centres"].values()} == {1}
    assert "Ray" not in proc.stdout + proc.stderr  # no Ray instance was started


TINY = str(REPO / "tests" / "methods" / "fedavg" / "tiny.yaml")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--ray-address", "127.0.0.1:6379"], "cluster of --ray-address 127.0.0.1:6379"),
        (["--set", "simulation.ray_address=10.0.0.2:6379"], "simulation.ray_address 10.0.0.2"),
    ],
)
def test_inprocess_with_a_ray_cluster_is_one_line_before_anything_is_made(
    tmp_path, capsys, extra, expected
):
    from fedmammo.simulate import main

    argv = [TINY, "--backend", "inprocess", "--out", str(tmp_path / "out"), *extra]
    assert main([*argv, "--set", f"data_dir={tmp_path / 'data'}"]) == 2
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out, out
    assert errors[0].startswith("error: backend inprocess runs every centre in this process")
    assert expected in errors[0] and "fix: drop one of them" in errors[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


def test_an_unknown_backend_is_one_line(tmp_path, capsys):
    from fedmammo.simulate import main

    assert main([TINY, "--check", "--set", "simulation.backend=threads"]) == 2
    assert "simulation.backend" in capsys.readouterr().out
    assert main([TINY, "--check", "--backend", "threads"]) == 2
    assert "argument --backend: invalid choice: 'threads'" in capsys.readouterr().out


def test_an_inprocess_run_resumes_in_process(tmp_path, capsys):
    # Prepare: a finished in-process run of the tiny scenario, made in this process
    from fedmammo.simulate import main

    argv = [TINY, "--backend", "inprocess", "--out", str(tmp_path / "out")]
    assert main([*argv, "--set", f"data_dir={tmp_path / 'data'}"]) == 0
    (run_dir,) = (tmp_path / "out").glob("*/*")
    first = results(run_dir)
    assert not first["failures"]
    capsys.readouterr()
    # Act: resume it without saying where (Ray's RAY_ADDRESS does not apply in process)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_ADDRESS", "127.0.0.1:1")
        assert main(["--resume", str(run_dir)]) == 0
    # Assert: it ran in process again (and said so), left no run-log handler behind, and kept
    # every number
    assert "backend inprocess: the centres answer in this process" in capsys.readouterr().out
    logs = [getattr(h, "baseFilename", "") for h in logging.getLogger().handlers]
    assert not [f for f in logs if f.startswith(str(tmp_path))], logs
    assert "round 2" in (run_dir / "run.log").read_text()
    again = results(run_dir)
    assert again["meta"]["backend"] == "inprocess"
    keep = [m for m in first["metrics"] if m["split"] != "timing"]
    assert keep and [m for m in again["metrics"] if m["split"] != "timing"] == keep
    # the first start is kept, the resume listed, and the wall time adds the second process's
    assert again["meta"]["started"] == first["meta"]["started"]
    assert len(again["meta"]["resumed"]) == 1
    assert again["meta"]["wall_seconds"] > first["meta"]["wall_seconds"]
    assert first["meta"]["finished"] is True and again["meta"]["finished"] is True
