"""Quota arithmetic of federated periodic sampling (pure Python; the strategy wraps it).

Centres report, per data segment, the number of images with the rarest label (counts only).
The server builds one Algorithm-1 pattern over every (centre, segment) pair
(:func:`global_pattern`). Round ``r`` covers the next window of ``batches_per_round *
batch_size`` slots of that pattern, cyclically (:func:`round_quotas`). Centre ``c`` receives
``q[c][s]``, the number of slots of its segment ``s`` in the window, and ``o[c][s]``, the
number of slots of that segment in all earlier windows (:func:`round_offsets`); it trains on
exactly ``q[c][s]`` samples that continue its label-alternating stream from ``o[c][s]``
(``fedmammo.data.sampling.QuotaBatchSampler``). The server averages the returned weights in
proportion to ``sum_s q[c][s]`` (``weighting: quota``: each centre reports the quota it
trained on, ``fedmammo.federation.rounds``). Over a full cycle of the
pattern each segment contributes ``counts / sum(counts)`` of the samples, as centrally.

Reduction to centralised periodic sampling. Take ``batches_per_round = 1`` and one local SGD
step per round. The window of round ``r`` is the batch ``B_r`` that the centralised sampler
draws at step ``r`` from the same pattern, split by centre into sub-batches ``B_r^c`` of
sizes ``q_c``. Centre ``c`` returns ``theta - lr * g_c`` with ``g_c`` the mean gradient over
``B_r^c``; averaging with weights ``q_c / |B_r|`` gives ``theta - lr * sum_c (q_c / |B_r|)
g_c = theta - lr * (mean gradient over B_r)``: the centralised step on a batch of the same
segment composition. With the same seed, and centralised segment keys that are unique across
centres and sort like the (centre, segment) pairs, the offsets make it the very same images
with the same label alternation as ``PeriodicBatchSampler`` draws centrally. The equality
needs plain SGD and per-sample losses; it becomes an approximation with several local steps
per round (client drift), optimiser state kept per centre (Adam moments), batch-dependent
layers (BatchNorm statistics per sub-batch) and per-centre DP noise. The per-cycle segment
proportions hold in every case.

Weighting schemes for comparison: ``"quota"`` (the above), ``"num_images"`` (FedAvg by local
dataset size) and ``"equal"`` (every participating centre alike).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from fedmammo.data.sampling import build_sampling_pattern
from fedmammo.errors import ConfigError, DataError

__all__ = [
    "global_pattern",
    "pattern_window",
    "planned_quotas",
    "round_offsets",
    "round_quotas",
]


def global_pattern(counts_by_centre: Mapping[str, Mapping[str, int]]) -> list[tuple[str, str]]:
    """Return the Algorithm-1 pattern over all (centre, segment) pairs, sorted by name.

    ``counts_by_centre[c][s]`` is centre ``c``'s rarest-label count of segment ``s``; a
    (centre, segment) pair with count 0 never appears.
    """
    pairs: list[tuple[str, str]] = []
    counts: list[int] = []
    for centre in sorted(counts_by_centre, key=str):
        for segment in sorted(counts_by_centre[centre], key=str):
            count = counts_by_centre[centre][segment]
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise DataError(
                    f"centre {centre!r} reported count {count!r} for segment {segment!r}; "
                    "counts must be non-negative integers"
                )
            pairs.append((centre, segment))
            counts.append(count)
    if not any(counts):
        raise DataError(
            "no centre reported a positive rarest-label count; periodic sampling needs at "
            "least one segment holding both labels"
        )
    return [pairs[k] for k in build_sampling_pattern(counts).tolist()]


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def pattern_window(
    pattern: Sequence[tuple[str, str]], round_index: int, batches_per_round: int, batch_size: int
) -> list[tuple[str, str]]:
    """Return the slots of the pattern that round ``round_index`` (0-based) covers, cyclically."""
    if not pattern:
        raise DataError("the sampling pattern is empty")
    if isinstance(round_index, bool) or not isinstance(round_index, int) or round_index < 0:
        raise ConfigError(f"round_index must be an integer >= 0, got {round_index!r}")
    width = _positive("batches_per_round", batches_per_round) * _positive("batch_size", batch_size)
    start = round_index * width
    return [pattern[(start + k) % len(pattern)] for k in range(width)]


def round_quotas(
    pattern: Sequence[tuple[str, str]], round_index: int, batches_per_round: int, batch_size: int
) -> dict[str, dict[str, int]]:
    """Return ``{centre: {segment: samples}}`` for round ``round_index`` (positive quotas only).

    The quotas sum to ``batches_per_round * batch_size``; centres absent from the result
    have nothing to train on this round.
    """
    counts = Counter(pattern_window(pattern, round_index, batches_per_round, batch_size))
    quotas: dict[str, dict[str, int]] = {}
    for centre, segment in sorted(counts, key=lambda pair: (str(pair[0]), str(pair[1]))):
        quotas.setdefault(centre, {})[segment] = counts[(centre, segment)]
    return quotas


def round_offsets(
    pattern: Sequence[tuple[str, str]], round_index: int, batches_per_round: int, batch_size: int
) -> dict[str, dict[str, int]]:
    """Return ``{centre: {segment: slots}}`` taken by rounds ``0 .. round_index - 1`` (all pairs).

    A centre passes its entry as ``offsets`` to ``QuotaBatchSampler`` so that its segment
    streams continue where the previous round stopped.
    """
    pattern_window(pattern, round_index, batches_per_round, batch_size)  # validates
    full, rest = divmod(round_index * batches_per_round * batch_size, len(pattern))
    per_cycle = Counter(pattern)
    prefix = Counter(pattern[:rest])
    offsets: dict[str, dict[str, int]] = {}
    for centre, segment in sorted(per_cycle, key=lambda pair: (str(pair[0]), str(pair[1]))):
        pair = (centre, segment)
        offsets.setdefault(centre, {})[segment] = full * per_cycle[pair] + prefix[pair]
    return offsets


def planned_quotas(
    pattern: Sequence[tuple[str, str]],
    first_index: int,
    last_index: int,
    batches_per_round: int,
    batch_size: int,
) -> dict[str, dict[str, dict[str, int]]]:
    """``{centre: {segment: {quota: rounds}}}`` over rounds ``first_index..last_index`` (0-based).

    What remains of a DP run's quotas (the current round included): a centre plans its noise
    from them once for the whole run (``fedmammo.privacy.periodic.PeriodicDPSession``).
    """
    out: dict[str, dict[str, dict[str, int]]] = {}
    for r in range(int(first_index), int(last_index) + 1):
        for centre, quotas in round_quotas(pattern, r, batches_per_round, batch_size).items():
            for segment, q in quotas.items():
                per = out.setdefault(centre, {}).setdefault(segment, {})
                per[str(q)] = per.get(str(q), 0) + 1
    return out
