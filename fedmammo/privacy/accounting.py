"""Privacy budgets, noise calibration and the per-centre accountant that composes all rounds."""

from __future__ import annotations

import copy
import functools
import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from fedmammo.errors import ConfigError, FedmammoError

__all__ = [
    "bisect_sigma",
    "BudgetExceeded",
    "CentreAccountant",
    "PrivacyBudget",
    "PrivacyUsageError",
    "default_delta",
    "epsilon_of",
    "plan_noise",
]

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

logger = logging.getLogger(__name__)


def create_accountant(mechanism: str) -> IAccountant:
    """Opacus' accountant by name (Opacus is imported on first use: it weighs ~2 s)."""
    from opacus.accountants import create_accountant as create

    return create(mechanism=mechanism)


AccountantName = Literal["rdp", "prv"]
_ACCOUNTANTS = ("rdp", "prv")
_MAX_SIGMA = 1e4


def over_target(epsilon: float, target: float | None) -> bool:
    """True if ``epsilon`` exceeds ``target`` (None: no target) beyond float rounding: a
    centre refuses such work. Planned noise ends at or below the target by construction."""
    return target is not None and epsilon > target * (1 + 1e-9)


class PrivacyUsageError(FedmammoError, ValueError):
    """The privacy machinery was called in a way that would void the guarantee."""


class BudgetExceeded(FedmammoError):
    """A centre refuses work that would take its epsilon above its target."""

    def __init__(
        self,
        *,
        centre: str,
        spent: float,
        requested: float,
        target: float,
        delta: float,
        phase: str | None = None,
        why: str = "",
    ) -> None:
        self.centre, self.spent, self.requested = centre, float(spent), float(requested)
        self.target, self.delta, self.phase = float(target), float(delta), phase
        where = f" in phase {phase}" if phase else ""
        if why:  # the budget is (nearly) spent or the plan used up, not exceeded by this work
            state = f"{why}: epsilon spent so far {self.spent:.4g} of target {self.target:.4g}"
        else:
            state = (
                f"epsilon spent so far {self.spent:.4g}; the requested steps would bring it "
                f"to {self.requested:.4g} > target {self.target:.4g}"
            )
        super().__init__(
            f"centre {centre!r} refuses the requested work{where}: {state} (delta "
            f"{self.delta:.3g}). Plan fewer rounds or steps, raise privacy.target_epsilon in "
            "the centre profile, or stop training at this centre."
        )


def default_delta(n_examples: int) -> float:
    """Default delta for ``n_examples`` records: ``min(1e-5, 1 / (10 n))``, always below 1/n."""
    if n_examples < 1:
        raise ConfigError(f"privacy: need at least one training example, got {n_examples}")
    return min(1e-5, 1.0 / (10.0 * n_examples))


@dataclass(frozen=True)
class PrivacyBudget:
    """A centre's DP settings: target epsilon and/or noise multiplier, delta, clipping norm."""

    target_epsilon: float | None
    noise_multiplier: float | None
    delta: float
    max_grad_norm: float = 1.0
    accountant: AccountantName = "rdp"

    def __post_init__(self) -> None:
        if self.target_epsilon is None and self.noise_multiplier is None:
            raise ConfigError(
                "privacy: set privacy.target_epsilon or privacy.noise_multiplier to enable DP"
            )
        if self.accountant not in _ACCOUNTANTS:
            raise ConfigError(
                f"privacy.accountant {self.accountant!r} is unknown; use one of {_ACCOUNTANTS}"
            )
        if not 0 < self.delta < 1:
            raise ConfigError(f"privacy.delta must be in (0, 1), got {self.delta}")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"privacy.max_grad_norm must be > 0, got {self.max_grad_norm}")

    @classmethod
    def from_spec(cls, spec: Any, n_examples: int) -> PrivacyBudget:
        """Build from a ``fedmammo.config.PrivacySpec``; delta defaults to ``default_delta(n)``.

        A noise multiplier given together with a target epsilon is used as is and the target
        acts as a cap (work beyond it is refused). An explicit delta must stay below 1/n.
        """
        default = default_delta(n_examples)
        delta = default if spec.delta is None else float(spec.delta)
        if delta >= 1.0 / n_examples:
            raise ConfigError(
                f"privacy.delta={delta:g} is not below 1/n = {1.0 / n_examples:.3g} for "
                f"{n_examples} examples; remove it (default {default:.3g}) or lower it"
            )
        return cls(
            target_epsilon=spec.target_epsilon,
            noise_multiplier=spec.noise_multiplier,
            delta=delta,
            max_grad_norm=float(spec.max_grad_norm),
            accountant=spec.accountant,
        )


def _clean(history: Iterable[Sequence[float]]) -> list[tuple[float, float, int]]:
    out: list[tuple[float, float, int]] = []
    for entry in history:
        if len(entry) != 3:
            raise PrivacyUsageError(
                f"accountant history entries are [noise_multiplier, sample_rate, steps]; "
                f"got {list(entry)!r}"
            )
        sigma, q, steps = float(entry[0]), float(entry[1]), int(entry[2])
        if steps < 0 or not 0 <= q <= 1 or sigma < 0:
            raise PrivacyUsageError(f"invalid accountant history entry {list(entry)!r}")
        if steps:
            out.append((sigma, q, steps))
    return out


def _append(history: list[tuple[float, float, int]], sigma: float, q: float, steps: int) -> None:
    """Append an entry, merging with the last one when sigma and q are equal (as Opacus does)."""
    if steps <= 0:
        return
    if history and history[-1][0] == sigma and history[-1][1] == q:
        history[-1] = (sigma, q, history[-1][2] + steps)
    else:
        history.append((sigma, q, steps))


def epsilon_of(
    history: Iterable[Sequence[float]], delta: float, accountant: AccountantName = "rdp"
) -> float:
    """Epsilon of a composed history of ``[noise_multiplier, sample_rate, steps]`` entries."""
    entries = _clean(history)
    if not entries:
        return 0.0
    if any(sigma == 0 and q > 0 for sigma, q, _ in entries):
        return math.inf
    return _epsilon_cached(tuple(entries), float(delta), accountant)


@functools.lru_cache(maxsize=4096)
def _epsilon_cached(
    entries: tuple[tuple[float, float, int], ...], delta: float, name: str
) -> float:
    acc = create_accountant(mechanism=name)
    acc.history = list(entries)
    with warnings.catch_warnings():  # large sigmas in noise planning hit the largest order
        warnings.filterwarnings("ignore", message=".*Optimal order is the largest alpha.*")
        return float(acc.get_epsilon(delta=delta))


def plan_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    total_steps: int,
    accountant: AccountantName = "rdp",
    *,
    prior_history: Iterable[Sequence[float]] | None = None,
    epsilon_tolerance: float = 0.01,
) -> float:
    """Noise multiplier so that ``total_steps`` at ``sample_rate`` end at ``target_epsilon``.

    Chosen once for the whole planned run. With ``prior_history`` (budget already spent, e.g.
    by an earlier phase) the planned steps get only what remains of the target.
    """
    if target_epsilon <= 0 or total_steps < 1 or not 0 < sample_rate <= 1:
        raise PrivacyUsageError(
            f"plan_noise needs target_epsilon > 0, total_steps >= 1 and 0 < sample_rate <= 1; "
            f"got {target_epsilon}, {total_steps}, {sample_rate}"
        )
    prior = _clean(prior_history or [])
    if not prior:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*Optimal order is the largest.*")
                from opacus.accountants.utils import get_noise_multiplier

                sigma = get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=int(total_steps),
                    accountant=accountant,
                    epsilon_tolerance=epsilon_tolerance,
                )
            return float(sigma)
        except ValueError as err:
            raise PrivacyUsageError(
                f"no noise multiplier reaches epsilon {target_epsilon} in {total_steps} steps "
                f"at sample rate {sample_rate:.3g}: {err}"
            ) from err
    return bisect_sigma(
        lambda s: epsilon_of([*prior, (s, sample_rate, total_steps)], delta, accountant),
        target_epsilon,
        epsilon_tolerance,
    )


def bisect_sigma(eps_fn: Any, target: float, tol: float) -> float:
    """Smallest sigma (within ``tol`` in epsilon) whose ``eps_fn(sigma) <= target``."""
    lo, hi = 0.0, 10.0
    eps_hi = eps_fn(hi)
    while eps_hi > target:
        lo, hi = hi, 2 * hi
        if hi > _MAX_SIGMA:
            raise PrivacyUsageError(
                f"the target epsilon {target} is already spent or too small for the planned "
                "steps; raise the target or plan fewer steps"
            )
        eps_hi = eps_fn(hi)
    while target - eps_hi > tol and hi - lo > 1e-6:
        mid = (lo + hi) / 2
        eps = eps_fn(mid)
        if eps < target:
            hi, eps_hi = mid, eps
        else:
            lo = mid
    return hi


class CentreAccountant:
    """One centre's privacy ledger, composed over every round and phase (one budget).

    Wraps an Opacus accountant (``opacus_accountant``) whose ``history`` holds the steps
    that touched every training example. Steps of periodic DP sampling touch one segment
    only and go to ``segment_history``; epsilon is then the maximum over segments of the
    shared history composed with that segment's steps. ``phases`` keeps a per-phase copy
    of every entry for reporting.
    """

    def __init__(self, accountant: AccountantName = "rdp", *, centre: str = "centre") -> None:
        if accountant not in _ACCOUNTANTS:
            raise ConfigError(
                f"privacy.accountant {accountant!r} is unknown; use one of {_ACCOUNTANTS}"
            )
        self.mechanism: AccountantName = accountant
        self.centre = centre
        self.opacus_accountant: IAccountant = create_accountant(mechanism=accountant)
        self.segment_history: dict[str, list[tuple[float, float, int]]] = {}
        self.phases: dict[str, list[list[Any]]] = {}
        self.plans: dict[str, dict[str, float]] = {}

    # ---- state ---------------------------------------------------------------------------
    @property
    def history(self) -> list[list[float]]:
        """Entries ``[noise_multiplier, sample_rate, steps]`` that touched every example."""
        return [[float(s), float(q), int(n)] for s, q, n in self.opacus_accountant.history]

    @property
    def total_steps(self) -> int:
        """Steps in the shared history (every example at risk)."""
        return sum(int(n) for _, _, n in self.opacus_accountant.history)

    def to_state(self) -> dict[str, Any]:
        """JSON-safe state (lists, floats, strings) (a centre's ledger file)."""
        return {
            "accountant": self.mechanism,
            "centre": self.centre,
            "history": self.history,
            "segment_history": {
                k: [[s, q, n] for s, q, n in v] for k, v in self.segment_history.items()
            },
            "phases": copy.deepcopy(self.phases),
            "plans": copy.deepcopy(self.plans),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> CentreAccountant:
        """Rebuild from :meth:`to_state` output (lists become Opacus' tuples again)."""
        try:
            acc = cls(state["accountant"], centre=str(state.get("centre", "centre")))
            acc.opacus_accountant.history = _clean(state["history"])
        except KeyError as err:
            raise PrivacyUsageError(
                f"accountant state lacks key {err}; pass CentreAccountant.to_state() output"
            ) from err
        acc.segment_history = {
            str(k): _clean(v) for k, v in dict(state.get("segment_history", {})).items()
        }
        acc.phases = {str(k): [list(e) for e in v] for k, v in state.get("phases", {}).items()}
        acc.plans = {str(k): dict(v) for k, v in state.get("plans", {}).items()}
        return acc

    # ---- recording -----------------------------------------------------------------------
    def record(
        self,
        phase: str,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        *,
        segment: str | None = None,
    ) -> None:
        """Compose ``steps`` sampled-Gaussian steps (all examples, or one segment's)."""
        if int(steps) <= 0:
            return
        sigma, q, n = _clean([(noise_multiplier, sample_rate, steps)])[0]
        if segment is None:
            _append(self.opacus_accountant.history, sigma, q, n)
        else:
            _append(self.segment_history.setdefault(str(segment), []), sigma, q, n)
        self._record_phase(phase, sigma, q, n, segment)

    def _record_phase(
        self, phase: str, sigma: float, q: float, steps: int, segment: str | None = None
    ) -> None:
        entries = self.phases.setdefault(phase, [])
        last = entries[-1] if entries else None
        seg_last = last[3] if last is not None and len(last) == 4 else None
        if last is not None and last[0] == sigma and last[1] == q and seg_last == segment:
            last[2] += int(steps)
        else:
            entries.append([float(sigma), float(q), int(steps)] + ([segment] if segment else []))

    # ---- epsilon -------------------------------------------------------------------------
    def _histories(self, extra: Sequence[tuple[float, float, int]] = ()) -> list[list]:
        shared = [*self.opacus_accountant.history, *extra]
        if not self.segment_history:
            return [shared]
        return [shared + seg for seg in self.segment_history.values()]

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far over all phases and rounds (max over segments if any)."""
        return max(epsilon_of(h, delta, self.mechanism) for h in self._histories())

    def segment_epsilons(self, delta: float) -> dict[str, float]:
        """Epsilon of the examples of each periodic-sampling segment."""
        shared = list(self.opacus_accountant.history)
        return {
            k: epsilon_of(shared + v, delta, self.mechanism)
            for k, v in self.segment_history.items()
        }

    def phase_epsilon(self, phase: str, delta: float) -> float:
        """Epsilon of one phase's steps alone (for reports; the budget is :meth:`epsilon`)."""
        entries = self.phases.get(phase, [])
        shared = [e[:3] for e in entries if len(e) == 3]
        segs: dict[str, list] = {}
        for e in entries:
            if len(e) == 4:
                segs.setdefault(e[3], []).append(e[:3])
        if not segs:
            return epsilon_of(shared, delta, self.mechanism)
        return max(epsilon_of(shared + v, delta, self.mechanism) for v in segs.values())

    def projected_epsilon(
        self, noise_multiplier: float, sample_rate: float, steps: int, delta: float
    ) -> float:
        """Epsilon after ``steps`` more shared steps, without recording them."""
        extra = [(float(noise_multiplier), float(sample_rate), int(steps))] if steps else []
        return max(epsilon_of(h, delta, self.mechanism) for h in self._histories(extra))

    def would_exceed(
        self,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        target_epsilon: float,
        delta: float,
        *,
        rtol: float = 0.01,
    ) -> bool:
        """True when ``steps`` more steps would take epsilon above ``target_epsilon`` (+rtol)."""
        projected = self.projected_epsilon(noise_multiplier, sample_rate, steps, delta)
        return projected > target_epsilon * (1.0 + rtol)

    def summary(self, delta: float, *, max_grad_norm: float | None = None) -> dict[str, Any]:
        """JSON-safe report: total epsilon and, per phase, its history and epsilon alone."""
        return {
            "centre": self.centre,
            "accountant": self.mechanism,
            "delta": float(delta),
            "epsilon": self.epsilon(delta),
            "max_grad_norm": max_grad_norm,
            "history": self.history,
            "segment_history": self.to_state()["segment_history"],
            "phases": {
                name: {"history": copy.deepcopy(e), "epsilon": self.phase_epsilon(name, delta)}
                for name, e in self.phases.items()
            },
        }

    def __repr__(self) -> str:
        return (
            f"CentreAccountant(centre={self.centre!r}, accountant={self.mechanism!r}, "
            f"steps={self.total_steps}, phases={sorted(self.phases)})"
        )
