"""Benchmark: the cost of secure aggregation (SecAgg+ adapter) against a plain weighted average.

    python benchmarks/bench_secagg.py [--params 100000 1000000] [--centres 3 5] [--repeat 2]

Runs one aggregation round in process (no Flower processes, the ClientApp reply path
egress_error_mod -> egress_mod -> secagg_mod -> a train handler that returns a fixed update)
and measures, per (model size, centres):

* wall seconds of the whole round (server + all centres, one core) plain vs secure;
* the centres' share (key agreement, Shamir shares, quantisation, masking) and the server's
  (mask reconstruction, dequantisation);
* bytes uploaded per centre and messages per centre (1 plain, 4 secure);
* the largest absolute error of the secure average against the plain one.

In deployment each message costs about 6 s (a fresh ClientApp process), so the three extra
stages add about 18 s per round there, whatever the model size. Prints a markdown section.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore.task_identity import TaskIdentity

from fedmammo.federation.egress import declare_egress, egress_error_mod, egress_mod
from fedmammo.federation.secagg import SecAggParams, secagg_mod, secure_sum


class _Grid:
    """In-process centres; counts client seconds and uploaded bytes."""

    def __init__(self, n_params: int, n_centres: int, *, seed: int = 0):
        rng = np.random.default_rng(seed)
        side = 1000
        shapes = {"w": (n_params // side, side), "b": (n_params % side or 1,)}
        self.model = {k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in shapes.items()}
        self.updates = {
            100 + i: {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in shapes.items()}
            for i in range(n_centres)
        }
        self.weights = {n: 10 * (i + 1) for i, n in enumerate(self.updates)}
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={})
            for n in self.updates
        }
        self.client_seconds = 0.0
        self.uploaded = 0
        self.messages = 0

    def _train(self, msg: Message, context: Context) -> Message:
        node = context.node_id
        sent = msg.content["arrays"]
        local = {k: sent[k].numpy() + self.updates[node][k] for k in sent}
        declare_egress(context, local, copies=1)
        metrics = MetricRecord(
            {"num-examples": self.weights[node], "num-images": self.weights[node]}
        )
        arrays = ArrayRecord({k: Array(v) for k, v in local.items()})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    def send_and_receive(self, messages, timeout=None):
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            meta = Metadata(
                run_id=1,
                message_id="m",
                src_node_id=0,
                dst_node_id=node,
                reply_to_message_id="",
                group_id="",
                created_at=time.time(),
                ttl=3600.0,
                message_type=msg.metadata.message_type,
            )
            incoming = Message(content=msg.content, metadata=meta)
            t0 = time.perf_counter()
            reply = egress_error_mod(
                incoming,
                self.contexts[node],
                lambda m, c: egress_mod(m, c, lambda m2, c2: secagg_mod(m2, c2, self._train)),
            )
            self.client_seconds += time.perf_counter() - t0
            if not reply.has_error():
                self.uploaded += sum(
                    len(a.data) for r in reply.content.array_records.values() for a in r.values()
                )
                self.uploaded += sum(
                    len(v) if isinstance(v, bytes) else 8
                    for r in reply.content.config_records.values()
                    for vs in r.values()
                    for v in (vs if isinstance(vs, list) else [vs])
                )
            self.messages += 1
            out.append(reply)
        return out

    def train_messages(self) -> list[Message]:
        arrays = ArrayRecord({k: Array(v) for k, v in self.model.items()})
        cfg = ConfigRecord({"seed": 1})
        return [
            Message(
                RecordDict({"arrays": arrays, "config": cfg}),
                dst_node_id=n,
                message_type="train.classifier",
            )
            for n in self.updates
        ]


def _plain(grid: _Grid) -> dict[str, np.ndarray]:
    replies = grid.send_and_receive(grid.train_messages())
    contents = [r.content for r in replies]
    avg = aggregate_arrayrecords(contents, "num-examples")
    return {k: avg[k].numpy() for k in grid.model}


def _secure(grid: _Grid) -> dict[str, np.ndarray]:
    total = float(sum(grid.weights.values()))
    result = secure_sum(grid, grid.train_messages(), params=SecAggParams(max_weight=total))
    assert result.arrays is not None, result.reason
    return {k: result.arrays[k].numpy() for k in grid.model}


def _measure(n_params: int, n_centres: int, repeat: int) -> dict:
    rows = {}
    for name, run in (("plain", _plain), ("secure", _secure)):
        best = None
        for _ in range(repeat):
            grid = _Grid(n_params, n_centres)
            t0 = time.perf_counter()
            out = run(grid)
            wall = time.perf_counter() - t0
            if best is None or wall < best[0]:
                best = (
                    wall,
                    grid.client_seconds,
                    grid.uploaded / n_centres,
                    grid.messages / n_centres,
                    out,
                )
        rows[name] = best
    err = max(
        float(np.abs(rows["secure"][4][k] - rows["plain"][4][k]).max()) for k in rows["plain"][4]
    )
    return {"rows": rows, "err": err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--centres", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    for attr in ("_run_id", "_node_id", "_task_id"):  # server-side Message() outside Flower
        setattr(TaskIdentity, attr, 1)
    print(
        f"## Secure aggregation cost ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, one process)\n"
    )
    print(
        "| params | centres | plain s | secure s | x | centres s (secure) | server s (secure) "
        "| upload/centre plain | upload/centre secure | msgs/centre | max abs err |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n_params in args.params:
        for n_centres in args.centres:
            m = _measure(n_params, n_centres, args.repeat)
            plain, secure = m["rows"]["plain"], m["rows"]["secure"]
            print(
                f"| {n_params:,} | {n_centres} | {plain[0]:.2f} | {secure[0]:.2f} | "
                f"{secure[0] / plain[0]:.1f} | {secure[1]:.2f} | {secure[0] - secure[1]:.2f} | "
                f"{plain[2] / 1e6:.2f} MB | {secure[2] / 1e6:.2f} MB | "
                f"{plain[3]:.0f} / {secure[3]:.0f} | {m['err']:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
