"""Periodic sampling under DP, done honestly: Poisson sampling within one segment per step.

Guarantee. Step ``t`` reads only segment ``s_t = pattern[t mod len(pattern)]`` and includes
each of its examples independently with probability ``q_s`` (Poisson). An example ``x`` of
segment ``s`` can influence only the steps of ``s``; every other step is independent of it.
Under add/remove-one adjacency, with the segment of every example, the pattern and the rates
fixed in advance (public), the run is therefore ``(eps_s, delta)``-DP for the examples of
``s``, where ``eps_s`` composes the sampled-Gaussian steps of ``s`` alone (plus any steps that
touched every example), and ``(max_s eps_s, delta)``-DP as a whole. Fixed, disjoint periodic
batches would not be covered by any Poisson bound: they are never reported as such here.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from fedmammo.errors import ConfigError
from fedmammo.privacy.accounting import AccountantName, epsilon_of

__all__ = ["PoissonPeriodicSampler", "periodic_epsilon", "periodic_epsilons"]

logger = logging.getLogger(__name__)


class PoissonPeriodicSampler(Sampler[list[int]]):
    """Batch sampler: step ``t`` Poisson-samples the segment ``pattern[t mod L]`` at its rate.

    ``segments`` maps a segment key to its dataset indices; ``pattern`` lists segment keys
    (or integer positions into ``segments``) in step order; ``sample_rates`` is one rate for
    all segments or a mapping per segment. ``steps`` per iteration defaults to enough pattern
    cycles for one expected pass over every segment. Iterations continue the pattern and the
    random stream (seeded by ``seed``); batches may be empty and still count as steps.
    """

    def __init__(
        self,
        segments: Mapping[Hashable, Sequence[int]],
        pattern: Sequence[Hashable],
        sample_rates: float | Mapping[Hashable, float],
        seed: int,
        *,
        steps: int | None = None,
    ) -> None:
        super().__init__()
        keys = list(segments)
        self.segments_ = {str(k): np.asarray(v, dtype=np.int64) for k, v in segments.items()}
        self.pattern_ = [self._key(p, keys) for p in pattern]
        if not self.pattern_:
            raise ConfigError("periodic DP sampling: the pattern is empty")
        for key in set(self.pattern_):
            if len(self.segments_[key]) == 0:
                raise ConfigError(f"periodic DP sampling: segment {key!r} has no examples")
        if isinstance(sample_rates, Mapping):
            rates = {str(k): float(v) for k, v in sample_rates.items()}
        else:
            rates = {k: float(sample_rates) for k in self.segments_}
        missing = sorted(set(self.pattern_) - set(rates))
        if missing:
            raise ConfigError(f"periodic DP sampling: no sample rate for segments {missing}")
        if any(not 0 < rates[k] <= 1 for k in set(self.pattern_)):
            raise ConfigError(f"periodic DP sampling: sample rates must be in (0, 1]: {rates}")
        self.sample_rates_ = rates
        self.seed = int(seed)
        cycles = max(math.ceil(1.0 / rates[k] / self.pattern_.count(k)) for k in set(self.pattern_))
        self.steps = int(steps) if steps is not None else cycles * len(self.pattern_)
        if self.steps < 1:
            raise ConfigError(f"periodic DP sampling: steps must be >= 1, got {steps}")
        self._rng = np.random.default_rng(self.seed)
        self.position = 0  # steps drawn so far (pattern position of the next step)
        self.drawn: Counter[str] = Counter()
        self._mark: Counter[str] = Counter()

    def _key(self, p: Hashable, keys: list[Hashable]) -> str:
        if p in keys:
            return str(p)
        if isinstance(p, (int, np.integer)) and 0 <= int(p) < len(keys):
            return str(keys[int(p)])
        raise ConfigError(
            f"periodic DP sampling: pattern entry {p!r} names no segment; known {sorted(keys)}"
        )

    @classmethod
    def from_batch_size(
        cls,
        segments: Mapping[Hashable, Sequence[int]],
        pattern: Sequence[Hashable],
        batch_size: int,
        seed: int,
        *,
        steps: int | None = None,
    ) -> PoissonPeriodicSampler:
        """Rates ``min(1, batch_size / n_s)``: expected batch size ``batch_size`` per segment."""
        rates = {k: min(1.0, batch_size / max(len(v), 1)) for k, v in segments.items()}
        return cls(segments, pattern, rates, seed, steps=steps)

    def segment_of_step(self, t: int) -> str:
        """Segment read at global step ``t``."""
        return self.pattern_[t % len(self.pattern_)]

    def segment_counts(self, steps: int, *, start: int | None = None) -> dict[str, int]:
        """Steps per segment among ``steps`` steps from ``start`` (default: the next step)."""
        begin = self.position if start is None else int(start)
        length = len(self.pattern_)
        full, rest = divmod(int(steps), length)
        counts = Counter({k: full * c for k, c in Counter(self.pattern_).items()})
        counts.update(self.segment_of_step(begin + i) for i in range(rest))
        return {k: int(v) for k, v in counts.items() if v}

    @property
    def expected_batch_size(self) -> float:
        """Mean expected batch size over the pattern."""
        return float(
            np.mean([self.sample_rates_[k] * len(self.segments_[k]) for k in self.pattern_])
        )

    def mark(self) -> None:
        """Remember the drawn counts (``drawn_since_mark`` counts from here)."""
        self._mark = Counter(self.drawn)

    def drawn_since_mark(self) -> dict[str, int]:
        """Batches drawn per segment since the last :meth:`mark`."""
        return {k: v - self._mark.get(k, 0) for k, v in self.drawn.items() if v > self._mark[k]}

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            key = self.segment_of_step(self.position)
            members = self.segments_[key]
            mask = self._rng.random(len(members)) < self.sample_rates_[key]
            self.position += 1
            self.drawn[key] += 1
            yield members[mask].tolist()


def periodic_epsilons(
    history_per_segment: Mapping[str, Sequence[Sequence[float]]],
    delta: float,
    accountant: AccountantName = "rdp",
    *,
    shared_history: Sequence[Sequence[float]] = (),
) -> dict[str, float]:
    """Epsilon of each segment's examples: its own steps composed with the shared ones."""
    shared = list(shared_history)
    return {
        str(k): epsilon_of(shared + list(h), delta, accountant)
        for k, h in history_per_segment.items()
    }


def periodic_epsilon(
    history_per_segment: Mapping[str, Sequence[Sequence[float]]],
    delta: float,
    accountant: AccountantName = "rdp",
    *,
    shared_history: Sequence[Sequence[float]] = (),
) -> float:
    """Epsilon of periodic DP sampling: the maximum over segments (see the module docstring)."""
    eps: dict[str, Any] = periodic_epsilons(
        history_per_segment, delta, accountant, shared_history=shared_history
    )
    return max(eps.values(), default=epsilon_of(shared_history, delta, accountant))
