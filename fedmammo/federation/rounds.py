"""Federated rounds shared by the averaging methods: a FedAvg with per-centre configs and
weightings, and the resumable round loop (checkpoints, DP ledgers, failures, validation)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from rich.markup import escape

from fedmammo.config.recipe import WEIGHTINGS, weighting_name
from fedmammo.errors import ConfigError
from fedmammo.federation.aggregation import AGGREGATIONS, aggregate, rule_note
from fedmammo.federation.codec import state_to_arrays
from fedmammo.federation.messages import ARRAYS, METRICS, ModelConfig, TrainConfig, TrainMetrics
from fedmammo.federation.orchestrator import Orchestrator
from fedmammo.federation.privacy.server import ArmPrivacy
from fedmammo.federation.replies import reply_node
from fedmammo.federation.run_log import SHOWN
from fedmammo.federation.secagg import SecAggParams, centre_weight, secure_sum
from fedmammo.models import build_model
from fedmammo.seeds import derive_seed

__all__ = [
    "CentreFedAvg",
    "check_weighting",
    "initial_arrays",
    "max_weight",
    "record_round_timing",
    "record_round",
    "record_weighting",
    "round_outcome",
    "secure_round",
    "train_rounds",
]

log = logging.getLogger(__name__)

WEIGHT_KEY = "agg-weight"  # server side only: the weight aggregate_train gives each reply


def check_weighting(weighting: str) -> str:
    """The weighting's current name (old names mapped); ConfigError for an unknown one."""
    name = weighting_name(weighting)
    if name not in WEIGHTINGS:
        raise ConfigError(
            f"weighting {weighting!r}: valid are {', '.join(WEIGHTINGS)} (old names "
            "num_examples, num_images -> images; equal -> uniform)"
        )
    return name


class CentreFedAvg(FedAvg):
    """FedAvg that trains a named set of centres, per-node configs, and chosen weighting.

    ``message``: the kind of the train messages (its config is what ``configure_train``
    receives; each centre's copy gets the round, its own seed, an injected fault and the
    fields in ``node_config``). ``weighting`` (:data:`fedmammo.config.recipe.WEIGHTINGS`):
    each reply is weighted by the count the centre reported for it (``images``: its training
    images, ``labelled``: those labelled for the task, ``quota``: its periodic quota this
    round) or equally (``uniform``); the server never sets a centre's weight itself.
    ``weights`` holds the last round's normalised weights per centre.
    ``aggregation`` (:mod:`fedmammo.federation.aggregation`): ``mean`` averages the updates
    by those weights; ``median`` and ``trimmed_mean`` (dropping ``trim_fraction`` of the
    updates at each end) count every centre once, so their weighting is ``uniform``; a
    strategy of one centre is its mean.
    """

    def __init__(
        self,
        nodes: dict[str, int],
        *,
        message: type[TrainConfig],
        weighting: str = "images",
        min_centres: int = 1,
        faults: Iterable[tuple[str, int]] = (),
        aggregation: str = "mean",
        trim_fraction: float = 0.2,
    ):
        super().__init__(min_train_nodes=min_centres, min_available_nodes=min_centres)
        if aggregation not in AGGREGATIONS:
            raise ConfigError(f"aggregation {aggregation!r}: valid are {', '.join(AGGREGATIONS)}")
        if len(nodes) <= 1:  # one centre's update is its own average, whatever the rule
            aggregation = "mean"
        self.aggregation, self.trim_fraction = aggregation, trim_fraction
        self.centre_nodes = dict(nodes)
        self.faults = set(faults)
        self.message = message
        self.message_type = message.KIND
        self.weighting = check_weighting(weighting) if aggregation == "mean" else "uniform"
        self.weights: dict[str, float] = {}
        self.failures: dict[str, str] = {}
        self.sent: list[Message] = []  # the round's messages (replies are matched to them)
        self.node_config: dict[str, dict] = {}  # per-centre message fields (DP ledger on resume)
        self.no_reply = "no reply"  # the failure of a centre that did not answer (site gone)

    def centre_message(self, base: TrainConfig, centre: str, server_round: int) -> TrainConfig:
        """``base`` for ``centre`` in ``server_round``: its seed, fault and node fields."""
        return dataclasses.replace(
            base,
            server_round=server_round,
            seed=derive_seed(base.seed, centre, server_round),
            inject_fault=(centre, server_round) in self.faults,
            **self.node_config.get(centre, {}),
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        base = self.message.from_config(config)
        self.sent = [
            Message(
                self.centre_message(base, centre, server_round).content({ARRAYS: arrays}),
                dst_node_id=node,
                message_type=self.message_type,
            )
            for centre, node in self.centre_nodes.items()
        ]
        return self.sent

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = self.weigh(replies)
        if len(valid) < self.min_train_nodes:
            return None, None
        arrays = aggregate(
            valid, self.aggregation, weight_key=WEIGHT_KEY, trim_fraction=self.trim_fraction
        )
        metrics = self.train_metrics_aggr_fn(valid, WEIGHT_KEY)
        return arrays, metrics

    def weigh(self, replies: Iterable[Message]) -> list[RecordDict]:
        """The successful replies' contents, each given its weight (``WEIGHT_KEY``);
        ``failures`` set to the centres without one."""
        names = {n: c for c, n in self.centre_nodes.items()}
        replies = list(replies)
        self.failures = {c: self.no_reply for c in self.centre_nodes}
        valid, weights = [], {}
        for msg in replies:
            centre = names.get(reply_node(msg, self.sent), "?")
            if msg.has_error():
                self.failures[centre] = msg.error.reason or "error"
                continue
            self.failures.pop(centre, None)
            metrics = msg.content[METRICS]
            w = centre_weight(metrics, self.weighting, centre=centre)
            metrics[WEIGHT_KEY] = w
            weights[centre] = w
            valid.append(msg.content)
        total = sum(weights.values())
        if valid and total <= 0:  # nothing to weigh: no centre holds what the weighting counts
            reason = f"weight 0 (weighting: {self.weighting})"
            self.failures.update({c: reason for c in weights})
            self.weights = {}
            return []
        self.weights = {c: w / total for c, w in weights.items()}
        return valid


def record_weighting(orc: Orchestrator, arm: str, strategy: CentreFedAvg) -> None:
    """Keep the arm's weighting in results.json (``meta.weighting``: ``{arm: name}``) and a
    robust aggregation rule (``meta.aggregation``: ``{arm: rule}``, with a run note when the
    arm's centres are too few for the rule to differ from their mean)."""
    orc.recorder.meta.setdefault("weighting", {})[arm] = strategy.weighting
    if strategy.aggregation == "mean":
        return
    rule = strategy.aggregation
    if rule == "trimmed_mean":
        rule += f" (trim_fraction {strategy.trim_fraction:g})"
    orc.recorder.meta.setdefault("aggregation", {})[arm] = rule
    note = rule_note(strategy.aggregation, len(strategy.centre_nodes), strategy.trim_fraction)
    if note:
        orc.recorder.note(f"arm {arm}: {note}")


def max_weight(orc: Orchestrator, centres: list[str], train: dict | None = None) -> float:
    """The largest weight the ``centres`` can report together for one round (SecAgg+'s
    ``max_weight``): per centre, its images as reported at identify (``n-images``, every
    split, unlabelled ones too: a bound of ``images`` and ``labelled``), or a round's fixed
    steps x batch size of ``train`` (local training params) when larger (a quota)."""
    train = train or {}
    steps, batch = train.get("steps_per_epoch"), int(train.get("batch_size") or 1)
    total = 0
    for c in centres:
        counts = orc.counts.get(c, {})
        labelled = sum(v for k, v in counts.items() if k.startswith("n|train|"))
        images = max(int(counts.get("n-images", 0)), labelled)
        total += max(images, int(steps or 0) * batch)
    return float(max(total, 1))


def secure_round(
    orc: Orchestrator,
    strategy: CentreFedAvg,
    messages: list[Message],
    *,
    seed: int,
    rnd: int,
    train: dict | None = None,
) -> tuple[list[Message], ArrayRecord | None, MetricRecord | None]:
    """One training round under SecAgg+ (:func:`fedmammo.federation.secagg.secure_sum`):
    the replies as the server holds them (metrics and privacy reports, no arrays), the
    weighted average (None when the round failed) and the averaged metrics.

    The centres weight their own updates by the strategy's ``weighting`` (their own count,
    capped through :func:`max_weight`; or uniform).
    """
    params = SecAggParams(
        max_weight=max_weight(orc, list(strategy.centre_nodes), train),
        weighting=strategy.weighting,
        timeout=orc.timeout,
        seed=derive_seed(seed, "secagg", rnd),
    )
    by_node = {m.metadata.dst_node_id: m for m in messages}
    result = secure_sum(orc.grid, messages, params=params)
    replies = [Message(content, reply_to=by_node[n]) for n, content in result.replies.items()]
    replies += [
        Message(error=Error(code=0, reason=reason), reply_to=by_node[n])
        for n, reason in result.failures.items()
        if n in by_node and n not in result.replies
    ]
    valid = strategy.weigh(replies)
    if result.arrays is None or len(valid) < strategy.min_train_nodes:
        if result.reason:
            orc.recorder.note(f"secure aggregation, round {rnd}: {result.reason}")
        return replies, None, None
    return replies, result.arrays, strategy.train_metrics_aggr_fn(valid, WEIGHT_KEY)


def record_round(
    orc: Orchestrator,
    strategy: CentreFedAvg,
    metrics: MetricRecord | None,
    replies: Iterable[Message],
    *,
    arm: str,
    seed: int,
    rnd: int,
) -> None:
    """A round's training records (split ``train``): each averaged centre's optimiser steps
    and examples seen (``train_steps``, ``train_examples``: what an arm's training budget is
    made of, which arms compared in one table need not share) and its share of the average
    (its normalised weight, ``fedavg_share``) when two or more were averaged by weight (not
    under a median or trimmed mean), as the weighting can count the arm's labelled images;
    and the training loss averaged over the replies, unless a centre withheld its own (NaN: a
    DP centre sends no noise-free statistic of its images)."""
    names = {n: c for c, n in orc.nodes.items()}
    weights = strategy.weights
    for msg in replies:
        centre = names.get(msg.metadata.src_node_id)
        if msg.has_error() or centre not in weights or METRICS not in msg.content:
            continue
        sent = TrainMetrics.from_metrics(msg.content[METRICS], strict=False)
        orc.recorder.add(
            [
                {"metric": "train_steps", "value": float(sent.steps)},
                {"metric": "train_examples", "value": float(sent.num_examples)},
            ],
            arm=arm,
            seed=seed,
            centre=centre,
            split="train",
            round=rnd,
        )
    if len(weights) > 1 and strategy.aggregation == "mean":
        for centre, share in weights.items():
            orc.recorder.add(
                [{"metric": "fedavg_share", "value": float(share)}],
                arm=arm,
                seed=seed,
                centre=centre,
                split="train",
                round=rnd,
            )
    loss = float(metrics[TrainMetrics.key("train_loss")]) if metrics is not None else math.nan
    if math.isfinite(loss):
        orc.recorder.add(
            [{"metric": "train_loss", "value": loss}],
            arm=arm,
            seed=seed,
            centre="all",
            split="train",
            round=rnd,
        )


def record_round_timing(
    orc: Orchestrator, replies: list[Message], wall: float, *, arm: str, seed: int, rnd: int
) -> None:
    """Wall time of a training round next to the centres' own compute (measured in handlers),
    recorded and logged as one line per round (per-centre compute and the messaging rest)."""
    names = {n: c for c, n in orc.nodes.items()}
    per_centre = {}
    for m in replies:
        if m.has_error():
            continue
        sent = TrainMetrics.from_metrics(m.content[METRICS], strict=False)
        if sent.compute_seconds is not None:
            per_centre[names.get(m.metadata.src_node_id, "?")] = float(sent.compute_seconds)
    compute = list(per_centre.values())
    records = [{"metric": "round_wall_seconds", "value": wall}]
    if compute:
        records += [
            {"metric": "centre_compute_seconds_max", "value": max(compute)},
            {"metric": "centre_compute_seconds_sum", "value": sum(compute)},
        ]
    orc.recorder.add(records, arm=arm, seed=seed, centre="all", split="timing", round=rnd)
    centres = ", ".join(f"{c} {s:.1f} s" for c, s in sorted(per_centre.items()))
    rest = wall - max(compute, default=0.0)
    log.info(
        "%s seed %s round %s: %.1f s wall; compute %s; messages and aggregation %.1f s",
        arm,
        seed,
        rnd,
        wall,
        centres or "n/a",
        rest,
    )


def initial_arrays(model_spec: dict, seed: int) -> ArrayRecord:
    torch.manual_seed(derive_seed(seed, "init"))
    return state_to_arrays(build_model(model_spec["name"], **model_spec["options"]).state_dict())


def round_outcome(
    orc: Orchestrator,
    strategy: CentreFedAvg,
    asked: int,
    *,
    arm: str,
    seed: int,
    rnd: int,
    stopped: bool,
) -> bool:
    """After a round of ``asked`` centres that left ``strategy.failures``: when it gave no
    model (``stopped``), the arm stops in one line (console, run.log, the arm's progress:
    how many centres sent an update and why that was not enough; completed rounds kept) and
    True is returned; when it went on without some centres, a note and a warning name them.
    """
    missing = sorted(strategy.failures)
    sent = asked - len(missing)
    if stopped:
        why = (
            f"fewer than min_centres={strategy.min_train_nodes}"
            if sent < strategy.min_train_nodes
            else "too few for its secure-aggregation round (SecAgg+ needs 2 or more centres' "
            "masked updates and no dropout past its threshold)"
        )
        whose = f"none from {', '.join(missing)}, whose reasons are" if missing else "reasons"
        line = (
            f"arm {arm} seed {seed}: stopped at round {rnd}: {sent} of {asked} centres sent an "
            f"update, {why} ({whose} in the failures); completed rounds kept"
        )
        orc.recorder.stop_arm(arm, seed, line)
        log.error("%s", line, extra=SHOWN)  # run.log (the console prints it below)
        orc.console.print(f"[red]{escape(line)}[/]", highlight=False)
        orc.recorder.flush()
        return True
    if missing:
        line = (
            f"arm {arm} seed {seed} round {rnd}: aggregated without {missing} "
            f"(min_centres={strategy.min_train_nodes})"
        )
        orc.recorder.note(line)
        log.warning("%s", line)
    return False


def train_rounds(
    orc: Orchestrator,
    *,
    arm: str,
    seed: int,
    centres: list[str],
    arrays: ArrayRecord,
    weighting,
    message: type[TrainConfig],
    evaluate: type[ModelConfig],
    model: dict,
    fields: dict | None = None,
    evaluate_fields: dict | None = None,
    first_round: int = 1,
    last_round: int | None = None,
) -> ArrayRecord | None:
    """Rounds of training at ``centres`` (averaged when several), resumable per round.

    Every round sends ``message`` (the ``model`` spec plus ``fields``) and validates the
    average at every centre with ``evaluate`` messages (``evaluate_fields`` added). Rounds
    ``first_round..last_round`` (default ``1..params.rounds``; a later phase continues the
    numbering: ``first_round`` > 1 starts from ``arrays``).
    """
    p = orc.params
    fields, evaluate_fields = fields or {}, evaluate_fields or {}
    last = p.rounds if last_round is None else last_round
    start = max(first_round - 1, orc.recorder.last_round(arm, seed))
    if start >= first_round:
        arrays = orc.load_checkpoint(arm, seed, start)
    faults = [(f.centre, f.round) for f in orc.scenario.faults if f.arm == arm]
    strategy = CentreFedAvg(
        {c: orc.nodes[c] for c in centres},
        message=message,
        weighting=weighting,
        faults=faults,
        min_centres=min(getattr(p, "min_centres", 1), len(centres)),
        aggregation=getattr(p, "aggregation", "mean"),
        trim_fraction=getattr(p, "trim_fraction", 0.2),
    )
    strategy.no_reply = f"no reply within message_timeout.train={orc.timeout:g} s"
    record_weighting(orc, arm, strategy)
    val_centres = [c for c in centres if c != "pooled"]
    dp = ArmPrivacy(
        orc, arm=arm, seed=seed, centres=centres, first_round=first_round, last_round=last
    )  # DP: planned rounds, privacy.json, budget refusals
    # secure aggregation (recipe switch) wherever there is a sum to hide: two or more centres
    secure = bool(getattr(p, "secure_aggregation", False)) and len(centres) > 1
    if secure and start < last:
        orc.recorder.note(
            f"arm {arm} seed {seed}: rounds {start + 1}..{last} under secure aggregation "
            f"(SecAgg+): the server received only masked updates of {', '.join(centres)}"
        )
    for rnd in range(start + 1, last + 1):
        strategy.node_config = dp.node_config(centres)  # the record as of the last round
        cfg = orc.message(
            message, arm=arm, seed=seed, run_seed=seed, model=model, **fields, **dp.config()
        )
        t_round = time.perf_counter()
        messages = list(strategy.configure_train(rnd, arrays, cfg.to_config(), orc.grid))
        if secure:
            replies, new_arrays, metrics = secure_round(
                orc, strategy, messages, seed=seed, rnd=rnd, train=fields.get("train")
            )
        else:
            replies = orc.exchange(messages, timeout=orc.timeout)
        record_round_timing(
            orc, replies, time.perf_counter() - t_round, arm=arm, seed=seed, rnd=rnd
        )
        if not secure:
            new_arrays, metrics = strategy.aggregate_train(rnd, replies)
        orc.record_failures(strategy.failures, arm=arm, seed=seed, rnd=rnd, phase="train")
        names = {n: c for c, n in strategy.centre_nodes.items()}
        if dp.after_round(rnd, replies, names, strategy.failures):  # a centre refused
            return arrays if rnd > first_round else None
        if round_outcome(
            orc, strategy, len(messages), arm=arm, seed=seed, rnd=rnd, stopped=new_arrays is None
        ):
            return None
        arrays = new_arrays
        record_round(orc, strategy, metrics, replies, arm=arm, seed=seed, rnd=rnd)
        if val_centres:
            orc.evaluate_everywhere(
                evaluate,
                arm=arm,
                seed=seed,
                arrays=arrays,
                centres=val_centres,
                split="val",
                rnd=rnd,
                model=model,
                n_boot=0,
                **evaluate_fields,
            )
        orc.checkpoint(arm, seed, rnd, arrays, model=model)
        orc.recorder.complete_round(arm, seed, rnd)
        orc.console.print(f"  {arm} seed {seed}: round {rnd}/{last} done")
    return arrays
