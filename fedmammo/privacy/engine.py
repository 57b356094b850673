"""Opacus wiring: model validation and the DP session that training loops attach to."""

from __future__ import annotations

import logging
import warnings
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from torch import nn
from torch.nn.utils import parametrize
from torch.utils._pytree import tree_map
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from fedmammo.errors import FedmammoError
from fedmammo.privacy.accounting import (
    BudgetExceeded,
    CentreAccountant,
    PrivacyBudget,
    PrivacyUsageError,
    bisect_sigma,
    epsilon_of,
    over_target,
    plan_noise,
)
from fedmammo.privacy.bookkeeping import HOOKS_ATTR, dp_backward, make_private_bookkeeping
from fedmammo.privacy.label_sampling import LabelPoissonSampler, epoch_label_rates

__all__ = [
    "GRAD_SAMPLE_MODES",
    "HOOKS_ATTR",
    "DPIncompatibleModelError",
    "DPSession",
    "dp_backward",
    "dp_incompatible_layers",
    "validate_for_dp",
]

logger = logging.getLogger(__name__)

_FIX = (
    "Use nn.GroupNorm or nn.InstanceNorm*(track_running_stats=False) instead of BatchNorm, "
    "drop spectral norm, or let opacus.validators.ModuleValidator.fix(model) replace the "
    "layers for you (BatchNorm -> GroupNorm)."
)
#: How per-example gradients are clipped: "bk" book-keeping (default, one backward pass, see
#: ``bookkeeping``), Opacus' "hooks" and "functorch", and "no_op" (the caller sets
#: ``p.grad_sample`` itself, e.g. the WGAN-GP critic's torch.func gradients).
GRAD_SAMPLE_MODES = ("bk", "hooks", "functorch", "no_op")
_NOISY = 10.0  # a planned noise multiplier above this gets a warning (mostly noise)
# Opacus' per-sample hooks fire on a first layer whose input needs no gradient (the images);
# torch warns at every backward pass. Expected under DP-SGD, so silenced here.
warnings.filterwarnings(
    "ignore", message="Full backward hook is firing when gradients", category=UserWarning
)


class DPIncompatibleModelError(FedmammoError, ValueError):
    """The model has layers that Opacus cannot train with per-example gradients."""


def _reason(module: nn.Module, err: Exception) -> str:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "BatchNorm mixes the examples of a batch (replace with GroupNorm)"
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return "InstanceNorm tracks running statistics (set track_running_stats=False)"
    return str(err).split(". ")[0]


def dp_incompatible_layers(model: nn.Module) -> list[tuple[str, str, str]]:
    """(layer name, layer type, reason) for every layer Opacus refuses or gets wrong."""
    problems: list[tuple[str, str, str]] = []
    for name, module in model.named_modules():
        label = name or "<root>"
        kind = type(module).__name__
        validator = ModuleValidator.VALIDATORS.get(type(module))
        if validator is not None:
            problems.extend((label, kind, _reason(module, e)) for e in validator(module))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):  # subclasses of BatchNorm
            problems.append((label, kind, _reason(module, Exception())))
        if parametrize.is_parametrized(module) or hasattr(module, "weight_orig"):
            problems.append((label, kind, "parametrized weight (e.g. spectral norm)"))
    return problems


def validate_for_dp(model: nn.Module) -> None:
    """Raise DPIncompatibleModelError naming every layer Opacus cannot train privately."""
    problems = dp_incompatible_layers(model)
    if problems:
        lines = "\n".join(f"  - {n} ({k}): {r}" for n, k, r in problems)
        raise DPIncompatibleModelError(
            f"{type(model).__name__} cannot be trained with DP-SGD; offending layers:\n"
            f"{lines}\n{_FIX}"
        )


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _disable_inplace(model: nn.Module) -> int:
    """Make in-place activations out-of-place (Opacus' backward hooks refuse them); how many."""
    count = 0
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
            count += 1
    return count


class _CountingPoissonSampler(UniformWithReplacementSampler):
    """Opacus' Poisson sampler that counts the batches it has drawn."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.drawn = 0

    def __iter__(self):  # noqa: ANN204 - generator of index lists
        for batch in super().__iter__():
            self.drawn += 1
            yield batch


def _empty_safe_collate(dataset: Dataset, collate_fn: Callable | None) -> Callable:
    """``collate_fn`` that turns an empty Poisson batch into the collated structure, 0 long.

    The template is one item collated (any nesting of tensors: tuples, dicts of targets);
    every tensor of it is cut to length 0, other leaves are kept.
    """
    collate = collate_fn or default_collate
    empty = tree_map(lambda v: v[:0] if isinstance(v, torch.Tensor) else v, collate([dataset[0]]))

    def collate_or_empty(batch: list) -> Any:
        return collate(batch) if len(batch) else empty

    return collate_or_empty


class DPSession:
    """One centre's DP-SGD for one phase-round: plan noise, attach Opacus, account, refuse.

    ``planned_steps`` are all the DP steps this phase will take over the whole run (every
    round); the noise multiplier is chosen once from them (from what remains of the target
    after earlier phases) and stored in the accountant, so later rounds reuse it. Use:
    ``model, opt, loader = s.attach(model, opt, loader)``, ``s.check_budget(steps)``,
    train, ``eps = s.after_training(steps)``; keep ``accountant.to_state()`` between rounds.
    """

    def __init__(
        self,
        budget: PrivacyBudget,
        accountant: CentreAccountant,
        *,
        planned_steps: int,
        phase: str,
        centre: str,
        seed: int,
        grad_sample_mode: str = "bk",
    ) -> None:
        if accountant.mechanism != budget.accountant:
            raise PrivacyUsageError(
                f"centre {centre!r}: accountant state uses {accountant.mechanism!r} but "
                f"privacy.accountant is {budget.accountant!r}; keep one accountant per run"
            )
        if planned_steps < 1:
            raise PrivacyUsageError(f"planned_steps must be >= 1, got {planned_steps}")
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise PrivacyUsageError(
                f"unknown grad_sample_mode {grad_sample_mode!r}; valid: {list(GRAD_SAMPLE_MODES)}"
            )
        self.budget, self.accountant = budget, accountant
        self.planned_steps, self.phase, self.centre = int(planned_steps), phase, centre
        self.seed, self.grad_sample_mode = int(seed), grad_sample_mode
        self.noise_multiplier: float | None = None
        self.sample_rate: float | None = None
        self.hooks: Any = None
        self.optimizer: Any = None
        self._model: nn.Module | None = None
        self._sampler: Any = None
        self._steps_before = 0
        # the round's planned charge, set by check_budget: (noise multiplier, sample rate,
        # steps, segment or None); before_steps(session) runs once the model is private, just
        # before the first step (a centre writes the charge to its ledger file there)
        self.charges: list[tuple[float, float, int, str | None]] = []
        self.before_steps: Callable[[DPSession], None] | None = None

    # ---- noise -----------------------------------------------------------------------
    def _phase_steps_done(self) -> int:
        return sum(int(e[2]) for e in self.accountant.phases.get(self.phase, []))

    def _refuse(self, requested: float, why: str = "") -> BudgetExceeded:
        delta = self.budget.delta
        return BudgetExceeded(
            centre=self.centre,
            spent=self.accountant.epsilon(delta),
            requested=requested,
            target=float(self.budget.target_epsilon),
            delta=delta,
            phase=self.phase,
            why=why,
        )

    def _fixed_noise_or_spent(self, steps_left: bool) -> tuple[float | None, float]:
        """(the budget's fixed noise multiplier or None, epsilon spent so far).

        Refuses a spent budget, and (for a target epsilon) a plan with no steps left.
        """
        target = self.budget.target_epsilon
        spent = self.accountant.epsilon(self.budget.delta)
        if target is not None and spent >= target:
            raise self._refuse(spent, "budget already spent")
        if self.budget.noise_multiplier is not None:
            return float(self.budget.noise_multiplier), spent
        if not steps_left:
            raise self._refuse(spent, f"all {self.planned_steps} planned steps taken")
        return None, spent

    def _resolve_noise(self, sample_rate: float, segment_rates: dict | None = None) -> float:
        target, delta = self.budget.target_epsilon, self.budget.delta
        remaining = self.planned_steps - self._phase_steps_done()
        fixed, spent = self._fixed_noise_or_spent(remaining >= 1)
        if fixed is not None:
            return fixed
        plan = self.accountant.plans.get(self.phase)
        if (
            plan
            and plan["sample_rate"] == sample_rate
            and plan["planned_steps"] == float(self.planned_steps)
        ):
            return float(plan["noise_multiplier"])
        if plan:
            logger.warning(
                "centre %s phase %s: the sample rate or planned steps changed; "
                "re-planning the noise for what remains of the budget",
                self.centre,
                self.phase,
            )
        if spent >= target:
            raise self._refuse(spent, "budget already spent")
        if segment_rates is None:
            prior = self.accountant._histories()
            if len(prior) == 1:
                sigma = plan_noise(
                    target,
                    delta,
                    sample_rate,
                    remaining,
                    self.budget.accountant,
                    prior_history=prior[0],
                )
            else:
                sigma = bisect_sigma(
                    lambda s: self.accountant.projected_epsilon(s, sample_rate, remaining, delta),
                    target,
                    0.01,
                )
        else:
            counts = self._sampler.segment_counts(remaining)
            sigma = bisect_sigma(
                lambda s: self._periodic_projection(s, counts, segment_rates), target, 0.01
            )
        self.accountant.plans[self.phase] = {
            "noise_multiplier": float(sigma),
            "sample_rate": float(sample_rate),
            "planned_steps": float(self.planned_steps),
        }
        if sigma > _NOISY:
            logger.warning(
                "centre %s phase %s: noise multiplier %.1f for what remains of target epsilon "
                "%.3g: the updates will be mostly noise; raise the target or plan fewer steps",
                self.centre,
                self.phase,
                sigma,
                target,
            )
        logger.info(
            "centre %s phase %s: noise multiplier %.4f planned for %d steps (target epsilon %.3g)",
            self.centre,
            self.phase,
            sigma,
            remaining,
            target,
        )
        return float(sigma)

    def _periodic_projection(self, sigma: float, counts: dict, rates: dict) -> float:
        shared = list(self.accountant.opacus_accountant.history)
        seg_hist = self.accountant.segment_history
        out = 0.0
        for seg in set(seg_hist) | set(counts):
            extra = [(sigma, rates[seg], counts[seg])] if counts.get(seg) else []
            h = shared + seg_hist.get(seg, []) + extra
            out = max(out, epsilon_of(h, self.budget.delta, self.budget.accountant))
        return out

    def _seeds(self) -> tuple[int, int]:
        done = self.accountant.total_steps + sum(
            n for v in self.accountant.segment_history.values() for _, _, n in v
        )
        key = [self.seed, zlib.crc32(self.centre.encode()), zlib.crc32(self.phase.encode()), done]
        a, b = np.random.SeedSequence(key).generate_state(2)
        return int(a), int(b)

    # ---- attach ----------------------------------------------------------------------
    def _make_private(self, model: nn.Module, optimizer: Any, loader: DataLoader, noise_seed: int):
        validate_for_dp(model)
        _disable_inplace(model)
        model.train()
        device = _device_of(model)
        noise = torch.Generator(device=device).manual_seed(noise_seed)
        if self.grad_sample_mode == "bk":
            hooks, dp_opt = make_private_bookkeeping(
                model,
                optimizer,
                loader,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.budget.max_grad_norm,
                accountant=self.accountant.opacus_accountant,
                generator=noise,
            )
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
                engine = PrivacyEngine(accountant=self.budget.accountant)
                engine.accountant = self.accountant.opacus_accountant  # one ledger across rounds
                hooks, dp_opt, loader = engine.make_private(
                    module=model,
                    optimizer=optimizer,
                    data_loader=loader,
                    noise_multiplier=self.noise_multiplier,
                    max_grad_norm=self.budget.max_grad_norm,
                    poisson_sampling=False,  # the loader given is already Poisson (see attach)
                    grad_sample_mode=self.grad_sample_mode,
                    wrap_model=False,
                    noise_generator=noise,
                )
            hooks.forbid_grad_accumulation()
        setattr(model, HOOKS_ATTR, hooks)
        self.hooks, self.optimizer, self._model = hooks, dp_opt, model
        self._steps_before = self.accountant.total_steps
        if self.before_steps is not None:
            self.before_steps(self)
        return model, dp_opt, loader

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()`` for the private model (book-keeping mode: clipped sums)."""
        if self._model is None:
            loss.backward()
        else:
            dp_backward(self._model, loss)

    def attach(self, model: nn.Module, optimizer: Any, loader: DataLoader, *, labels: Any = None):
        """Make ``model``/``optimizer`` private and ``loader`` Poisson-sampled (same steps).

        The model is returned unwrapped (state_dict keys unchanged); per-sample gradients come
        from hooks in ``self.hooks``. The loader's own sampler is replaced by Poisson sampling
        with ``len(loader)`` steps per epoch: at rate ``1 / len(loader)``, or with ``labels``
        (one per example of the dataset) at one rate per label, every label expected equally
        often and every step accounted at the largest rate (see ``label_sampling``).
        """
        if self.hooks is not None:
            self.detach()
        steps = len(loader)
        if steps < 1:
            raise PrivacyUsageError(f"centre {self.centre!r}: the training loader is empty")
        rates = None
        if labels is not None:
            if len(labels) != len(loader.dataset):
                raise PrivacyUsageError(
                    f"centre {self.centre!r}: {len(labels)} labels for a dataset of "
                    f"{len(loader.dataset)} examples"
                )
            rates = epoch_label_rates(labels, steps)
        self.sample_rate = 1.0 / steps if rates is None else float(rates.max())
        self.noise_multiplier = self._resolve_noise(self.sample_rate)
        loader_seed, noise_seed = self._seeds()
        generator = torch.Generator().manual_seed(loader_seed)
        if rates is None:
            self._sampler = _CountingPoissonSampler(
                num_samples=len(loader.dataset),
                sample_rate=self.sample_rate,
                generator=generator,
                steps=steps,
            )
        else:
            self._sampler = LabelPoissonSampler(rates, steps=steps, generator=generator)
        poisson = DataLoader(
            loader.dataset,
            batch_sampler=self._sampler,
            collate_fn=_empty_safe_collate(loader.dataset, loader.collate_fn),
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
            worker_init_fn=loader.worker_init_fn,
        )
        model, dp_opt, poisson = self._make_private(model, optimizer, poisson, noise_seed)
        if rates is not None:  # Opacus took 1 / len(loader) for the rate and the batch
            dp_opt.expected_batch_size = self._sampler.expected_batch_size
            hook = self.accountant.opacus_accountant.get_optimizer_hook_fn
            dp_opt.attach_step_hook(hook(sample_rate=self.sample_rate))
        return model, dp_opt, poisson

    def attach_periodic(
        self,
        model: nn.Module,
        optimizer: Any,
        dataset: Dataset,
        sampler: Any,
        *,
        collate_fn: Callable | None = None,
    ):
        """Like :meth:`attach` with a :class:`~fedmammo.privacy.periodic.PoissonPeriodicSampler`.

        Steps are accounted per segment with that segment's rate (see ``periodic``).
        """
        if self.hooks is not None:
            self.detach()
        rates = dict(sampler.sample_rates_)
        self._sampler = sampler
        self.sample_rate = float(np.mean([rates[s] for s in sampler.pattern_]))
        self.noise_multiplier = self._resolve_noise(self.sample_rate, rates)
        _, noise_seed = self._seeds()
        loader = DataLoader(
            dataset, batch_sampler=sampler, collate_fn=_empty_safe_collate(dataset, collate_fn)
        )
        model, dp_opt, loader = self._make_private(model, optimizer, loader, noise_seed)
        dp_opt.step_hook = None  # accounting is per segment, in after_training
        dp_opt.expected_batch_size = max(sampler.expected_batch_size, 1e-12)
        self._sampler.mark()
        return model, dp_opt, loader

    # ---- budget ----------------------------------------------------------------------
    def check_budget(self, steps: int, *, sample_rate: float | None = None) -> float:
        """Projected epsilon after ``steps`` more steps; BudgetExceeded if above the target."""
        delta = self.budget.delta
        q = sample_rate if sample_rate is not None else self.sample_rate
        periodic = self._sampler is not None and hasattr(self._sampler, "segment_counts")
        if q is None:
            raise PrivacyUsageError(
                "check_budget needs the sample rate: call attach() first or pass sample_rate"
            )
        sigma = self.noise_multiplier
        if sigma is None or sample_rate is not None:
            sigma = self._resolve_noise(q)
        if periodic:
            counts = self._sampler.segment_counts(steps)
            rates = self._sampler.sample_rates_
            projected = self._periodic_projection(sigma, counts, rates)
            self.charges = [(sigma, rates[k], int(n), str(k)) for k, n in counts.items() if n]
        else:
            projected = self.accountant.projected_epsilon(sigma, q, steps, delta)
            self.charges = [(float(sigma), float(q), int(steps), None)]
        target = self.budget.target_epsilon
        if over_target(projected, target):
            raise self._refuse(projected)
        return projected

    def after_training(self, steps: int, *, detach: bool = True) -> float:
        """Record this round's steps in the accountant and return the composed epsilon.

        Steps are counted conservatively: every Poisson batch drawn counts, even one the loop
        skipped. ``detach`` removes the Opacus hooks so the model is a plain module again.
        """
        if self.optimizer is None:
            raise PrivacyUsageError("after_training() called before attach()")
        sigma = float(self.noise_multiplier)
        if hasattr(self._sampler, "segment_counts"):
            for seg, n in self._sampler.drawn_since_mark().items():
                self.accountant.record(
                    self.phase, sigma, self._sampler.sample_rates_[seg], n, segment=seg
                )
            self._sampler.mark()
        else:
            q = float(self.sample_rate)
            hooked = self.accountant.total_steps - self._steps_before
            if hooked != steps:
                logger.warning(
                    "centre %s: %d optimizer steps reported, %d seen by Opacus",
                    self.centre,
                    steps,
                    hooked,
                )
            self.accountant._record_phase(self.phase, sigma, q, hooked)
            extra = self._sampler.drawn - hooked
            if extra > 0:  # batches drawn but not stepped still count
                self.accountant.record(self.phase, sigma, q, extra)
            self._sampler.drawn = 0
            self._steps_before = self.accountant.total_steps
        if detach:
            self.detach()
        return self.epsilon

    def detach(self) -> None:
        """Remove the Opacus hooks; the model becomes a plain module again."""
        if self.hooks is not None:
            self.hooks.cleanup()
            if self._model is not None and hasattr(self._model, HOOKS_ATTR):
                delattr(self._model, HOOKS_ATTR)
        self.hooks = None

    @property
    def epsilon(self) -> float:
        """Epsilon spent by this centre over all phases and rounds at the budget's delta."""
        return self.accountant.epsilon(self.budget.delta)
