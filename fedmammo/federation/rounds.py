"""Federated rounds shared by the averaging methods: a FedAvg with per-centre configs and
weightings, and the resumable round loop (checkpoints, DP ledgers, failures, validation)."""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedmammo.federation.codec import state_to_arrays
from fedmammo.federation.orchestrator import Orchestrator, derive_seed
from fedmammo.federation.privacy.server import ArmPrivacy
from fedmammo.models import build_model

__all__ = ["CentreFedAvg", "initial_arrays", "record_round_timing", "train_rounds"]

WEIGHT_KEY = "agg-weight"


class CentreFedAvg(FedAvg):
    """FedAvg that trains a named set of centres, per-node configs, and chosen weighting.

    ``weighting``: ``num_examples`` (Flower's default), ``equal`` (every centre the same), or a
    mapping centre -> weight (e.g. periodic-sampling quotas).
    """

    def __init__(
        self,
        nodes: dict[str, int],
        *,
        message_type: str = "train.classifier",
        weighting: str | dict[str, float] = "num_examples",
        min_centres: int = 1,
        faults: Iterable[tuple[str, int]] = (),
    ):
        super().__init__(min_train_nodes=min_centres, min_available_nodes=min_centres)
        self.centre_nodes = dict(nodes)
        self.faults = set(faults)
        self.message_type = message_type
        self.weighting = weighting
        self.failures: dict[str, str] = {}
        self.node_config: dict[str, dict] = {}  # per-centre extra config (DP ledger on resume)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        msgs = []
        for centre, node in self.centre_nodes.items():
            cfg = ConfigRecord(dict(config))
            cfg["server-round"] = server_round
            cfg["seed"] = derive_seed(config.get("seed", 0), centre, server_round)
            if (centre, server_round) in self.faults:
                cfg["inject-fault"] = True
            for key, value in self.node_config.get(centre, {}).items():
                cfg[key] = value
            msgs.append(
                Message(
                    RecordDict({"arrays": arrays, "config": cfg}),
                    dst_node_id=node,
                    message_type=self.message_type,
                )
            )
        return msgs

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        names = {n: c for c, n in self.centre_nodes.items()}
        replies = list(replies)
        self.failures = {c: "no reply" for c in self.centre_nodes}
        valid = []
        for msg in replies:
            centre = names.get(msg.metadata.src_node_id, "?")
            if msg.has_error():
                self.failures[centre] = msg.error.reason or "error"
                continue
            self.failures.pop(centre, None)
            metrics = msg.content["metrics"]
            if self.weighting == "num_examples":
                w = float(metrics["num-examples"])
            elif self.weighting == "equal":
                w = 1.0
            else:
                w = float(self.weighting.get(centre, 0.0))
            metrics[WEIGHT_KEY] = w
            valid.append(msg.content)
        if len(valid) < self.min_train_nodes:
            return None, None
        arrays = aggregate_arrayrecords(valid, WEIGHT_KEY)
        metrics = self.train_metrics_aggr_fn(valid, WEIGHT_KEY)
        return arrays, metrics


def record_round_timing(
    orc: Orchestrator, replies: list[Message], wall: float, *, arm: str, seed: int, rnd: int
) -> None:
    """Wall time of a training round next to the centres' own compute (measured in handlers)."""
    compute = [
        float(m.content["metrics"]["compute-seconds"])
        for m in replies
        if not m.has_error() and "compute-seconds" in m.content["metrics"]
    ]
    records = [{"metric": "round_wall_seconds", "value": wall}]
    if compute:
        records += [
            {"metric": "centre_compute_seconds_max", "value": max(compute)},
            {"metric": "centre_compute_seconds_sum", "value": sum(compute)},
        ]
    orc.recorder.add(records, arm=arm, seed=seed, centre="all", split="timing", round=rnd)


def initial_arrays(model_spec: dict, seed: int) -> ArrayRecord:
    torch.manual_seed(derive_seed(seed, "init"))
    return state_to_arrays(build_model(model_spec["name"], **model_spec["options"]).state_dict())


def train_rounds(
    orc: Orchestrator,
    *,
    arm: str,
    seed: int,
    centres: list[str],
    arrays: ArrayRecord,
    weighting,
    message_type: str = "train.classifier",
    evaluate_type: str = "evaluate.classifier",
    model: dict | None = None,
    config: dict | None = None,
    first_round: int = 1,
    last_round: int | None = None,
) -> ArrayRecord | None:
    """Rounds of training at ``centres`` (averaged when several), resumable per round.

    Defaults train the recipe's classifier for rounds ``1..params.rounds``. Other methods
    pass their message types, ``model`` spec, ``config`` (extra keys of every train and
    validation message; default the recipe's ``train`` and ``batchnorm``) and round range
    (a later phase continues the numbering: ``first_round`` > 1 starts from ``arrays``).
    """
    p = orc.params
    model = p.model.model_dump() if model is None else model
    if config is None:
        config = {"train": p.train.model_dump(), "batchnorm": p.batchnorm}
    last = p.rounds if last_round is None else last_round
    start = max(first_round - 1, orc.recorder.last_round(arm, seed))
    if start >= first_round:
        arrays = orc.load_checkpoint(arm, seed, start)
    faults = [(f.centre, f.round) for f in orc.scenario.faults if f.arm == arm]
    strategy = CentreFedAvg(
        {c: orc.nodes[c] for c in centres},
        message_type=message_type,
        weighting=weighting,
        faults=faults,
        min_centres=min(getattr(p, "min_centres", 1), len(centres)),
    )
    val_centres = [c for c in centres if c != "pooled"]
    val_extra = {k: v for k, v in config.items() if k != "train"}
    dp = ArmPrivacy(
        orc, arm=arm, seed=seed, centres=centres, first_round=first_round, last_round=last
    )  # DP: planned rounds, privacy.json, budget refusals
    strategy.node_config = dp.node_config(centres)
    for rnd in range(start + 1, last + 1):
        cfg = orc.base_config(arm=arm, seed=seed, model=model, **config, **dp.config())
        t_round = time.perf_counter()
        replies = list(
            orc.grid.send_and_receive(
                list(strategy.configure_train(rnd, arrays, cfg, orc.grid)), timeout=orc.timeout
            )
        )
        record_round_timing(
            orc, replies, time.perf_counter() - t_round, arm=arm, seed=seed, rnd=rnd
        )
        new_arrays, metrics = strategy.aggregate_train(rnd, replies)
        orc.record_failures(strategy.failures, arm=arm, seed=seed, rnd=rnd, phase="train")
        names = {n: c for c, n in strategy.centre_nodes.items()}
        if dp.after_round(rnd, replies, names, strategy.failures):  # a centre refused
            return arrays if rnd > first_round else None
        if new_arrays is None:
            orc.recorder.note(
                f"arm {arm} seed {seed}: stopped at round {rnd}: fewer than "
                f"{strategy.min_train_nodes} centres replied"
            )
            orc.recorder.flush()
            return None
        if len(strategy.failures):
            orc.recorder.note(
                f"arm {arm} seed {seed} round {rnd}: aggregated without "
                f"{sorted(strategy.failures)} (minimum {strategy.min_train_nodes})"
            )
        arrays = new_arrays
        if metrics is not None:
            orc.recorder.add(
                [{"metric": "train_loss", "value": float(metrics["train-loss"])}],
                arm=arm,
                seed=seed,
                centre="all",
                split="train",
                round=rnd,
            )
        if val_centres:
            orc.evaluate_everywhere(
                arm=arm,
                seed=seed,
                arrays=arrays,
                model=model,
                message_type=evaluate_type,
                centres=val_centres,
                split="val",
                n_boot=0,
                rnd=rnd,
                extra=val_extra,
            )
        orc.checkpoint(arm, seed, rnd, arrays)
        orc.recorder.complete_round(arm, seed, rnd)
        orc.console.print(f"  {arm} seed {seed}: round {rnd}/{last} done")
    return arrays
