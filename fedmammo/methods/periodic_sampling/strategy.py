"""Federated periodic sampling (periodic-sampling paper) as a Flower strategy, and the scenario's
runner.

:class:`PeriodicFedAvg` is FedAvg whose rounds walk one global sampling pattern. Centres report
label counts per segment in ``query.identify`` (counts only); the server takes, per training
segment, the count of its rarest label and builds the Algorithm-1 pattern over all (centre,
segment) pairs (:func:`~fedmammo.methods.periodic_sampling.quota.global_pattern`). Round
``r`` covers the next window of ``batches_per_round x batch_size`` slots: each centre receives
its quota of samples per segment in that window plus offsets (how many it drew before), trains
on exactly that quota with alternating labels, one optimiser step per batch
(``train.periodic``), and the server averages by the quota each centre reports it trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedmammo.errors import ConfigError
from fedmammo.federation.messages import ARRAYS
from fedmammo.federation.rounds import CentreFedAvg
from fedmammo.methods.periodic_sampling.messages import TrainPeriodic
from fedmammo.methods.periodic_sampling.quota import (
    global_pattern,
    planned_quotas,
    round_offsets,
    round_quotas,
)

__all__ = ["PeriodicFedAvg"]


class PeriodicFedAvg(CentreFedAvg):
    """FedAvg over the windows of a global periodic-sampling pattern, averaged by quota.

    ``counts[c][s]`` is centre ``c``'s rarest-label count of training segment ``s``.
    ``scheme`` (the weighting) is ``"quota"`` (the method: each centre's quota of the round,
    as it reports it), ``"images"`` / ``"labelled"`` (its training images / labelled images in
    the training segments, as it reports them) or ``"uniform"``. Only centres with a positive
    quota are messaged in a round.

    Under DP set ``planned_rounds``: every message then also carries the centre's quotas of
    this and every later planned round (``dp-planned-quota``), from which it plans its noise
    once for the run; ``node_config`` adds per-centre fields (a DP ledger on resume).
    ``aggregation`` other than ``mean`` (a median or trimmed mean) counts every centre once,
    whatever its quota.
    """

    def __init__(
        self,
        nodes: dict[str, int],
        *,
        counts: dict[str, dict[str, int]],
        batches_per_round: int,
        batch_size: int,
        scheme: str = "quota",
        min_centres: int = 1,
        message: type[TrainPeriodic] = TrainPeriodic,
        faults: Iterable[tuple[str, int]] = (),
        aggregation: str = "mean",
        trim_fraction: float = 0.2,
    ):
        super().__init__(
            nodes,
            message=message,
            weighting=scheme,
            min_centres=min_centres,
            faults=faults,
            aggregation=aggregation,
            trim_fraction=trim_fraction,
        )
        unknown = sorted(set(counts) - set(nodes))
        if unknown:
            raise ConfigError(
                f"PeriodicFedAvg: counts name centres {unknown} that have no node "
                f"(nodes: {sorted(nodes)})"
            )
        self.pattern = global_pattern(counts)
        self.batches_per_round, self.batch_size = batches_per_round, batch_size
        self.min_centres = min_centres
        self.quotas: dict[str, dict[str, int]] = {}
        self.offsets: dict[str, dict[str, int]] = {}
        self.planned_rounds: int | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message per centre with a quota in this round's window (round 1 = window 0)."""
        window = (self.pattern, server_round - 1, self.batches_per_round, self.batch_size)
        self.quotas = round_quotas(*window)
        every = round_offsets(*window)
        self.offsets = {c: {s: every[c][s] for s in q} for c, q in self.quotas.items()}
        self.min_train_nodes = min(self.min_centres, len(self.quotas))
        planned = {}
        if self.planned_rounds is not None:
            planned = planned_quotas(
                self.pattern,
                server_round - 1,
                self.planned_rounds - 1,
                self.batches_per_round,
                self.batch_size,
            )
        base = self.message.from_config(config)
        msgs = []
        for centre in sorted(self.quotas):
            m = dataclasses.replace(
                self.centre_message(base, centre, server_round),
                quota=self.quotas[centre],
                offsets=self.offsets[centre],
                planned_quota=planned.get(centre, {}) if self.planned_rounds is not None else None,
            )
            msgs.append(
                Message(
                    m.content({ARRAYS: arrays}),
                    dst_node_id=self.centre_nodes[centre],
                    message_type=self.message_type,
                )
            )
        return msgs

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the replies by the weighting (the centres' reported quotas, image counts, or
        uniformly); centres without a quota this round were not asked."""
        arrays, metrics = super().aggregate_train(server_round, replies)
        self.failures = {c: r for c, r in self.failures.items() if c in self.quotas}
        return arrays, metrics
