"""Batch samplers over data segments: periodic sampling (periodic-sampling paper) and its
baselines."""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import Sampler

from fedmammo.errors import ConfigError, DataError
from fedmammo.progress import labelled

__all__ = [
    "SAMPLERS",
    "BalancedLabelSampler",
    "BalancedSegmentSampler",
    "PeriodicBatchSampler",
    "QuotaBatchSampler",
    "RandomBatchSampler",
    "build_sampler",
    "build_sampling_pattern",
]

logger = logging.getLogger(__name__)


def build_sampling_pattern(counts: Sequence[int]) -> np.ndarray:
    """Return the periodic sampling pattern of the periodic-sampling paper's Algorithm 1.

    Parameters
    ----------
    counts
        ``counts[i]`` is the number of images with the rarest label in segment ``i``.
        A zero count means segment ``i`` never appears in the pattern.

    Returns
    -------
    np.ndarray
        Segment indices (int64) of length ``sum(counts)`` in which segment ``i`` appears
        ``counts[i]`` times. Segments are placed in ascending order of counts (ties keep
        their input order) at the evenly spaced positions ``floor(j * L / counts[i])``,
        ``j < counts[i]`` (``linspace(0, L, counts[i])`` without its endpoint, which would
        fall off the end); a taken slot moves to the next free slot, wrapping around.
    """
    values = _validate_counts(counts)
    length = sum(values)
    pattern = [-1] * length
    # Union-find "next free slot" pointers make the collision walk near-linear.
    parent = list(range(length))

    def next_free(slot: int) -> int:
        root = slot
        while parent[root] != root:
            root = parent[root]
        while parent[slot] != root:
            parent[slot], slot = root, parent[slot]
        return root

    for segment in sorted(range(len(values)), key=values.__getitem__):
        n = values[segment]
        for j in range(n):
            slot = next_free(j * length // n)
            pattern[slot] = segment
            parent[slot] = (slot + 1) % length
    return np.asarray(pattern, dtype=np.int64)


def _validate_counts(counts: Sequence[int]) -> list[int]:
    values = list(counts)
    if not values:
        raise DataError("sampling-pattern counts are empty; give one count per data segment")
    for i, value in enumerate(values):
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
            raise DataError(f"sampling-pattern counts[{i}] = {value!r} is not an integer")
        if value < 0:
            raise DataError(f"sampling-pattern counts[{i}] = {value} is negative")
    if not any(values):
        raise DataError("sampling-pattern counts are all zero; at least one must be positive")
    return [int(v) for v in values]


def _is_binary(value: Any) -> bool:
    if isinstance(value, str):
        return False
    try:
        return bool(value == 0 or value == 1)
    except TypeError:  # pd.NA
        return False


def _binary_labels(labels: Any) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DataError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind in "biuf":
        ok = (arr == 0) | (arr == 1)
    else:
        ok = np.fromiter((_is_binary(v) for v in arr), dtype=bool, count=arr.size)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        raise DataError(
            f"labels must be 0 or 1: {bad.size} of {arr.size} are not (first at position "
            f"{bad[0]}: {arr[bad[0]]!r}); drop images with a missing label (malignant NA) "
            "before building a sampler"
        )
    return arr.astype(np.int8)


def _segment_groups(segments: Any, labels: np.ndarray) -> tuple[list[Hashable], list[Any]]:
    """Return the segment keys (sorted by their text) and, per key, image indices by label."""
    keys = np.asarray(segments, dtype=object)
    if keys.ndim != 1 or keys.size != labels.size:
        raise DataError(
            f"segments has shape {keys.shape} but labels has {labels.size} entries; give one "
            "segment key per image"
        )
    if keys.size == 0:
        raise DataError("no images: segments and labels are empty")
    missing = pd.isna(keys)
    if missing.any():
        raise DataError(
            f"{int(missing.sum())} images have no segment key (first at position "
            f"{int(np.flatnonzero(missing)[0])}); fill the manifest's segment column"
        )
    codes, uniques = pd.factorize(keys)
    order = sorted(range(len(uniques)), key=lambda k: str(uniques[k]))
    groups = []
    for k in order:
        members = np.flatnonzero(codes == k)
        groups.append((members[labels[members] == 0], members[labels[members] == 1]))
    return [uniques[k] for k in order], groups


class _SegmentStream:
    """One segment's endless Algorithm-2 stream, addressable by position.

    Draw ``j`` has label ``(start + j) % 2`` (``start`` a random bit per segment; a
    single-label segment always yields its label) and takes the next image of that label from
    cycle ``k`` of the label, a permutation seeded by ``(seed, segment, label, k)``. The stream
    depends only on the seed, the segment key and its images, so a sampler can resume it at any
    offset (later epochs, later federated rounds) without carrying state.
    """

    def __init__(self, key: Hashable, pools: Any, seed: int, offset: int = 0) -> None:
        self._pools = pools
        self._key = zlib.crc32(str(key).encode("utf-8"))
        self._seed = seed
        present = [len(pools[0]) > 0, len(pools[1]) > 0]
        self._alternate = all(present)
        if self._alternate:
            start = int(np.random.default_rng([seed, self._key]).integers(2))
            self._next = (start + offset) % 2
            before = [(offset + (start == 0)) // 2, (offset + (start == 1)) // 2]
        else:
            self._next = 0 if present[0] else 1
            before = [offset if present[0] else 0, offset if present[1] else 0]
        self._pos = before  # draws already taken from each label's stream
        self._cycle: list[int] = [-1, -1]
        self._perm: list[np.ndarray | None] = [None, None]

    def draw(self) -> int:
        label = self._next
        if self._alternate:
            self._next = 1 - label
        pool = self._pools[label]
        cycle, within = divmod(self._pos[label], len(pool))
        if cycle != self._cycle[label]:
            rng = np.random.default_rng([self._seed, self._key, label, cycle])
            self._perm[label], self._cycle[label] = rng.permutation(pool), cycle
        self._pos[label] += 1
        return int(self._perm[label][within])


def _occurrences(pattern: np.ndarray, n_groups: int, slots: int) -> np.ndarray:
    """How often each group appears in the first ``slots`` slots of the cyclic pattern."""
    full, rest = divmod(slots, pattern.size)
    return full * np.bincount(pattern, minlength=n_groups) + np.bincount(
        pattern[:rest], minlength=n_groups
    )


def _warn_single_label(groups: Sequence[tuple[Hashable, Any]]) -> None:
    for key, pools in groups:
        if len(pools[0]) == 0 or len(pools[1]) == 0:
            label = 0 if len(pools[0]) else 1
            logger.warning(
                "%s",
                labelled(
                    f"segment {key!r} has only label {label} ({len(pools[label])} images): its "
                    "label alternation falls back to that label"
                ),
            )


def _pattern_groups(sampler: _SegmentBatchSampler) -> list[tuple[Hashable, Any]]:
    keys = sampler.segment_keys_
    groups = [(key, sampler._by_segment[k]) for k, key in enumerate(keys) if sampler.counts_[key]]
    if not groups:
        raise DataError("no segment can be sampled: every segment has a single label")
    return groups


def _positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"sampler {name} must be a positive integer, got {value!r}")
    return int(value)


class _SegmentBatchSampler(Sampler[list[int]]):
    """Shared machinery: walk a pattern over groups, alternating labels within each group."""

    def __init__(
        self,
        segments: Any,
        labels: Any,
        batch_size: int,
        num_batches: int | None = None,
        seed: int = 0,
        *,
        min_count: int = 1,
    ) -> None:
        super().__init__()
        self.batch_size = _positive_int("batch_size", batch_size)
        self.seed = int(seed)
        self.epoch = 0
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 0:
            raise ConfigError(f"sampler min_count must be an integer >= 0, got {min_count!r}")
        self.labels_ = _binary_labels(labels)
        self.segment_keys_, self._by_segment = _segment_groups(segments, self.labels_)
        counts = [min(len(g[0]), len(g[1])) for g in self._by_segment]
        self.counts_ = {
            key: (c if c > 0 else min_count) for key, c in zip(self.segment_keys_, counts)
        }
        for key, count in zip(self.segment_keys_, counts):
            if count == 0 and min_count == 0:
                logger.warning(
                    "%s",
                    labelled(f"segment {key!r} has a single label and min_count=0: never sampled"),
                )
        self._groups, self.pattern_ = self._build()
        _warn_single_label(self._groups)
        default = math.ceil(sum(self.counts_.values()) / self.batch_size)
        self.num_batches = _positive_int("num_batches", num_batches, allow_none=True) or default

    def _build(self) -> tuple[list[tuple[Hashable, Any]], np.ndarray]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch, which changes the shuffle (like ``DistributedSampler``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        total = self.num_batches * self.batch_size
        begin = self.epoch * total  # epoch e continues the stream where epoch e-1 stopped
        offsets = _occurrences(self.pattern_, len(self._groups), begin)
        streams = [
            _SegmentStream(key, pools, self.seed, int(offsets[k]))
            for k, (key, pools) in enumerate(self._groups)
        ]
        pattern = self.pattern_.tolist()
        start = begin % len(pattern)
        flat = [streams[pattern[(start + k) % len(pattern)]].draw() for k in range(total)]
        for b in range(self.num_batches):
            yield flat[b * self.batch_size : (b + 1) * self.batch_size]


class PeriodicBatchSampler(_SegmentBatchSampler):
    """Periodic sampling (periodic-sampling paper, Algorithm 2): segments in proportion to their
    rarest label.

    ``segments`` and ``labels`` (0/1; exclude images whose label is NA) give one entry per
    dataset index. Batches walk the Algorithm-1 pattern (``pattern_``, indices into
    ``segment_keys_``) cyclically; within a segment labels alternate from a random start, each
    label drawing from its own reshuffled cycle. A segment with a single label enters the
    pattern ``min_count`` times (it has no rarest-label count; ``min_count=0`` drops it) and
    always yields that label (logged). ``num_batches`` defaults to one pass over the pattern.
    The draws form one endless stream fixed by ``seed``: epoch ``e`` (``set_epoch``, as with
    ``DistributedSampler``; without it every epoch repeats) continues where epoch ``e-1``
    stopped, so the pattern position, label alternation and shuffles carry over.
    """

    def _build(self) -> tuple[list[tuple[Hashable, Any]], np.ndarray]:
        groups = _pattern_groups(self)
        pattern = build_sampling_pattern([self.counts_[key] for key, _ in groups])
        return groups, pattern


class BalancedSegmentSampler(_SegmentBatchSampler):
    """ "Bal. segments": every segment equally often, labels alternating within each segment.

    The pattern is Algorithm 1 with equal counts (a round-robin over segments). Same interface
    and defaults as :class:`PeriodicBatchSampler` (same number of samples per pass).
    """

    def _build(self) -> tuple[list[tuple[Hashable, Any]], np.ndarray]:
        groups = _pattern_groups(self)
        return groups, build_sampling_pattern([1] * len(groups))


class BalancedLabelSampler(_SegmentBatchSampler):
    """ "Bal. labels": labels alternate 0/1 over the pooled set, whatever the segment.

    Same interface and defaults as :class:`PeriodicBatchSampler` (same number of samples per
    pass); segments are only validated.
    """

    def _build(self) -> tuple[list[tuple[Hashable, Any]], np.ndarray]:
        pooled = (np.flatnonzero(self.labels_ == 0), np.flatnonzero(self.labels_ == 1))
        return [("<all>", pooled)], np.zeros(1, dtype=np.int64)


class RandomBatchSampler(_SegmentBatchSampler):
    """Plain shuffled batches without balancing; ``num_batches`` defaults to one epoch."""

    def __init__(
        self,
        segments: Any,
        labels: Any,
        batch_size: int,
        num_batches: int | None = None,
        seed: int = 0,
        *,
        min_count: int = 1,
    ) -> None:
        super().__init__(segments, labels, batch_size, num_batches, seed, min_count=min_count)
        if num_batches is None:
            self.num_batches = math.ceil(self.labels_.size / self.batch_size)

    def _build(self) -> tuple[list[tuple[Hashable, Any]], np.ndarray]:
        return [], np.zeros(0, dtype=np.int64)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        total = self.num_batches * self.batch_size
        n_perm = math.ceil(total / self.labels_.size)
        flat = np.concatenate([rng.permutation(self.labels_.size) for _ in range(n_perm)])
        for b in range(self.num_batches):
            yield flat[b * self.batch_size : (b + 1) * self.batch_size].tolist()


class QuotaBatchSampler(Sampler[list[int]]):
    """Batches covering exactly ``quota[s]`` samples of each segment ``s`` (one federated round).

    Segments are interleaved by Algorithm 1 over the quotas (evenly, like the centre's slots
    in the global pattern window); each segment continues the same label-alternating stream as
    :class:`PeriodicBatchSampler` from ``offsets[s]``, the number of its samples drawn in
    earlier rounds (``fedmammo.methods.periodic_sampling.quota.round_offsets``), so rounds
    chain without repeats within a cycle. The last batch holds the remainder:
    ``len(self) == ceil(sum(quota) / batch_size)``; an all-zero quota yields no batch.
    """

    def __init__(
        self,
        segments: Any,
        labels: Any,
        quota: Mapping[Hashable, int],
        batch_size: int,
        seed: int = 0,
        *,
        offsets: Mapping[Hashable, int] | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = _positive_int("batch_size", batch_size)
        self.seed = int(seed)
        self.labels_ = _binary_labels(labels)
        keys, by_segment = _segment_groups(segments, self.labels_)
        index = {key: k for k, key in enumerate(keys)}
        offsets = dict(offsets or {})
        unknown = [s for s in [*quota, *offsets] if s not in index]
        if unknown:
            raise DataError(
                f"quota or offsets name segments {unknown!r} that this centre does not hold; "
                f"its segments are {keys!r}"
            )
        for name, mapping in (("quota", quota), ("offsets", offsets)):
            for s, q in mapping.items():
                if isinstance(q, bool) or not isinstance(q, int | np.integer) or q < 0:
                    raise DataError(f"{name}[{s!r}] = {q!r} is not a non-negative integer")
        self.quota = {s: int(q) for s, q in quota.items() if q > 0}
        self.offsets = {s: int(offsets.get(s, 0)) for s in self.quota}
        self._groups = [(s, by_segment[index[s]]) for s in sorted(self.quota, key=str)]
        _warn_single_label(self._groups)
        self.pattern_ = (
            build_sampling_pattern([self.quota[s] for s, _ in self._groups])
            if self.quota
            else np.zeros(0, dtype=np.int64)
        )

    def __len__(self) -> int:
        return math.ceil(self.pattern_.size / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        streams = [
            _SegmentStream(key, pools, self.seed, self.offsets[key]) for key, pools in self._groups
        ]
        flat = [streams[k].draw() for k in self.pattern_.tolist()]
        for start in range(0, len(flat), self.batch_size):
            yield flat[start : start + self.batch_size]


SAMPLERS: dict[str, type[_SegmentBatchSampler]] = {
    "balanced_labels": BalancedLabelSampler,
    "balanced_segments": BalancedSegmentSampler,
    "periodic": PeriodicBatchSampler,
    "random": RandomBatchSampler,
}


def build_sampler(
    name: str,
    *,
    segments: Any,
    labels: Any,
    batch_size: int,
    num_batches: int | None = None,
    seed: int = 0,
    min_count: int = 1,
) -> _SegmentBatchSampler:
    """Build a registered batch sampler by name (``SAMPLERS``)."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; valid names: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name](
        segments, labels, batch_size, num_batches=num_batches, seed=seed, min_count=min_count
    )
