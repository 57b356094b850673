"""Periodic sampling under DP, done honestly: Poisson sampling within one segment per step.

Guarantee. Step ``t`` reads only segment ``s_t = pattern[t mod len(pattern)]`` and includes
each of its examples independently with probability ``q_s`` (Poisson). An example ``x`` of
segment ``s`` can influence only the steps of ``s``; every other step is independent of it.
Under add/remove-one adjacency, with the segment of every example, the pattern and the rates
fixed in advance (public), the run is therefore ``(eps_s, delta)``-DP for the examples of
``s``, where ``eps_s`` composes the sampled-Gaussian steps of ``s`` alone (plus any steps that
touched every example), and ``(max_s eps_s, delta)``-DP as a whole. Fixed, disjoint periodic
batches would not be covered by any Poisson bound: they are never reported as such here.

Heterogeneous rates (a segment's rate may change between rounds) keep the argument: each
example's privacy loss composes the sampled-Gaussian steps that could include it, each at the
rate it was included with (individualised sampling rates, as in Boenisch et al. 2023,
"Have it your way: individualized privacy assignment for DP-SGD"). The guarantee treats the
segment sizes and rarest-label counts that fix the pattern and the rates as public (centres
report them in ``query.identify``); they are not protected by the DP noise.

:class:`PeriodicDPSession` is a :class:`~fedmammo.privacy.engine.DPSession` whose noise is
planned once over the per-segment steps of the whole remaining run (given per segment as
``[(rate, steps), ...]``), and whose ``attach`` uses its :class:`PoissonPeriodicSampler`, so
that ``training.classifier.train_classifier`` trains with it unchanged.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from fedmammo.data.sampling import build_sampling_pattern
from fedmammo.errors import ConfigError
from fedmammo.privacy.accounting import (
    AccountantName,
    CentreAccountant,
    PrivacyBudget,
    bisect_sigma,
    epsilon_of,
    over_target,
)
from fedmammo.privacy.engine import DPSession

__all__ = [
    "PeriodicDPSession",
    "PoissonPeriodicSampler",
    "periodic_epsilon",
    "periodic_epsilons",
    "quota_steps",
    "step_pattern",
]

logger = logging.getLogger(__name__)


class PoissonPeriodicSampler(Sampler[list[int]]):
    """Batch sampler: step ``t`` Poisson-samples the segment ``pattern[t mod L]`` at its rate.

    ``segments`` maps a segment key to its dataset indices; ``pattern`` lists segment keys
    (or integer positions into ``segments``) in step order; ``sample_rates`` is one rate for
    all segments or a mapping per segment. ``steps`` per iteration defaults to enough pattern
    cycles for one expected pass over every segment. Iterations continue the pattern and the
    random stream (seeded by ``seed``); batches may be empty and still count as steps.
    ``example_rates`` optionally gives a segment one rate per member (label-balanced
    sampling, :mod:`~fedmammo.privacy.label_sampling`); its accounted rate in
    ``sample_rates`` must be their maximum.
    """

    def __init__(
        self,
        segments: Mapping[Hashable, Sequence[int]],
        pattern: Sequence[Hashable],
        sample_rates: float | Mapping[Hashable, float],
        seed: int,
        *,
        steps: int | None = None,
        example_rates: Mapping[Hashable, np.ndarray] | None = None,
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
        self.example_rates_ = {
            str(k): np.asarray(v, float) for k, v in (example_rates or {}).items()
        }
        for key, each in self.example_rates_.items():
            if each.shape != self.segments_[key].shape or not np.isclose(each.max(), rates[key]):
                raise ConfigError(
                    f"periodic DP sampling: segment {key!r} needs one rate per member, the "
                    f"largest being its accounted rate {rates[key]}"
                )
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
        return float(np.mean([self._expected_batch(k) for k in self.pattern_]))

    def _expected_batch(self, key: str) -> float:
        each = self.example_rates_.get(key)
        if each is None:
            return self.sample_rates_[key] * len(self.segments_[key])
        return float(each.sum())

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
            rate = self.example_rates_.get(key, self.sample_rates_[key])  # per member or one
            mask = self._rng.random(len(members)) < rate
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


def step_pattern(steps_per_segment: Mapping[str, int]) -> list[str]:
    """Segment of every step: Algorithm 1 of periodic-sampling paper over the steps per segment.

    Segments are taken in sorted order; those with no step never appear. The result has
    ``sum(steps_per_segment.values())`` entries, each segment's spread evenly.
    """
    keys = sorted(str(k) for k, v in steps_per_segment.items() if int(v) > 0)
    if not keys:
        raise ConfigError("periodic DP sampling: no segment has a step")
    counts = {str(k): int(v) for k, v in steps_per_segment.items()}
    return [keys[i] for i in build_sampling_pattern([counts[k] for k in keys]).tolist()]


def quota_steps(quota: int, n_examples: int, batch_size: int) -> tuple[int, float]:
    """``(steps, rate)`` that take ``quota`` samples of a segment of ``n_examples`` in expectation.

    ``steps = max(ceil(quota / batch_size), ceil(quota / n_examples))`` Poisson steps at rate
    ``quota / (steps * n_examples)`` (at most ``batch_size / n_examples`` and at most 1): the
    DP form of a federated periodic-sampling quota round (expected, not exact, quota).
    """
    if quota < 1 or n_examples < 1 or batch_size < 1:
        raise ConfigError(
            f"quota_steps needs quota, n_examples, batch_size >= 1; got {quota}, "
            f"{n_examples}, {batch_size}"
        )
    steps = max(math.ceil(quota / batch_size), math.ceil(quota / n_examples))
    return int(steps), float(quota) / (steps * n_examples)


Plan = Mapping[str, Sequence[tuple[float, int]]]


class PeriodicDPSession(DPSession):
    """A DP session of periodic sampling with Poisson sampling within one segment per step.

    ``remaining`` maps each segment to ``[(sample_rate, steps), ...]``: the steps the rest of
    the planned run (this round included) will take on it. With a target epsilon the noise
    multiplier is chosen once so that the worst segment of the whole planned run ends at the
    target, and reused while the planned total (steps done + remaining) does not change.
    ``sampler`` is the round's :class:`PoissonPeriodicSampler`; :meth:`attach` uses it.
    """

    def __init__(
        self,
        budget: PrivacyBudget,
        accountant: CentreAccountant,
        *,
        remaining: Plan,
        sampler: PoissonPeriodicSampler,
        phase: str,
        centre: str,
        seed: int,
        grad_sample_mode: str = "bk",
    ) -> None:
        self.remaining = {
            str(k): [(float(q), int(n)) for q, n in v if int(n) > 0] for k, v in remaining.items()
        }
        done = sum(int(e[2]) for e in accountant.phases.get(phase, []))
        planned = done + sum(n for v in self.remaining.values() for _, n in v)
        super().__init__(
            budget,
            accountant,
            planned_steps=max(planned, 1),
            phase=phase,
            centre=centre,
            seed=seed,
            grad_sample_mode=grad_sample_mode,
        )
        self.periodic_sampler = sampler

    def project(self, sigma: float, extra: Plan) -> float:
        """Epsilon (max over segments) after ``extra`` steps per segment at noise ``sigma``."""
        acc, delta = self.accountant, self.budget.delta
        shared = list(acc.opacus_accountant.history)
        keys = set(acc.segment_history) | {k for k, v in extra.items() if v}
        if not keys:
            return epsilon_of(shared, delta, acc.mechanism)
        return max(
            epsilon_of(
                shared
                + list(acc.segment_history.get(k, []))
                + [(sigma, q, n) for q, n in extra.get(k, []) if n],
                delta,
                acc.mechanism,
            )
            for k in keys
        )

    def _resolve_noise(self, sample_rate: float, segment_rates: dict | None = None) -> float:
        target = self.budget.target_epsilon
        fixed, spent = self._fixed_noise_or_spent(any(self.remaining.values()))
        if fixed is not None:
            return fixed
        plan = self.accountant.plans.get(self.phase)
        if plan and plan["planned_steps"] == float(self.planned_steps):
            return float(plan["noise_multiplier"])
        if plan:
            logger.warning(
                "centre %s phase %s: the planned periodic steps changed; re-planning the noise "
                "for what remains of the budget",
                self.centre,
                self.phase,
            )
        if spent >= target:
            raise self._refuse(spent, "budget already spent")
        sigma = bisect_sigma(lambda s: self.project(s, self.remaining), target, 0.01)
        steps = [n for v in self.remaining.values() for _, n in v]
        rates = [q for v in self.remaining.values() for q, _ in v]
        self.accountant.plans[self.phase] = {
            "noise_multiplier": float(sigma),
            "sample_rate": float(np.average(rates, weights=steps)),
            "planned_steps": float(self.planned_steps),
        }
        logger.info(
            "centre %s phase %s: noise multiplier %.4f planned for %d periodic steps (target "
            "epsilon %.3g, worst segment)",
            self.centre,
            self.phase,
            sigma,
            sum(steps),
            target,
        )
        return float(sigma)

    def check_round(self) -> float:
        """Projected epsilon after the sampler's steps; BudgetExceeded before any step."""
        sampler = self.periodic_sampler
        rates = sampler.sample_rates_
        sigma = self._resolve_noise(float(np.mean([rates[k] for k in sampler.pattern_])), rates)
        counts = sampler.segment_counts(len(sampler))
        projected = self.project(sigma, {k: [(rates[k], n)] for k, n in counts.items()})
        self.charges = [(sigma, rates[k], int(n), str(k)) for k, n in counts.items() if n]
        target = self.budget.target_epsilon
        if over_target(projected, target):
            raise self._refuse(projected)
        return projected

    def attach(self, model: Any, optimizer: Any, loader: Any):  # type: ignore[override]
        """:meth:`attach_periodic` with this session's sampler over ``loader.dataset``."""
        return self.attach_periodic(
            model, optimizer, loader.dataset, self.periodic_sampler, collate_fn=loader.collate_fn
        )
