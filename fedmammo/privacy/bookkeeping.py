"""Book-keeping clipping: exact per-example clipped gradients from one backward pass.

DP-SGD needs ``sum_i c_i * grad_i`` with ``c_i = min(1, C / (||grad_i|| + 1e-6))``. Opacus'
"hooks" mode gets it from per-example gradients (``p.grad_sample``) and also lets autograd
compute the ordinary weight gradients, which DP-SGD throws away. Here (after Bu et al. 2023,
"Differentially private optimization on large model at small cost") the forward hooks keep
each trainable layer's input and output; one ``autograd.grad`` to the layer outputs gives the
output gradients (no weight gradients); then per layer:

- the per-example gradient norm is computed either from the materialised per-example
  gradients or, where the layer's output is small (``L <= O * K / (O + K)`` positions for a
  layer of ``O`` outputs and ``K`` inputs per position), without them ("ghost norm": the
  squared norm of ``g_i^T a_i`` is ``<a_i a_i^T, g_i g_i^T>``);
- the clipped sum is an ordinary weight gradient of the output gradients scaled by ``c_i``
  (ghost layers) or ``c @ grad_samples`` (materialised layers).

The result is the same clipped sum as Opacus' (tests compare it with a per-example loop); the
noise, the averaging and the accounting are Opacus' own :class:`DPOptimizerFastGradientClipping`
and accountant. Layers without a fast rule use Opacus' per-sample gradient samplers.

Why not one of Opacus' own modes: on the small classifier (BENCHMARKS.md, "Differential
privacy") a DP epoch took 2.36x the plain one with "hooks", 2.31x with "ew" (which also cannot
run with ``wrap_model=False``, needed for Flower's state_dict keys), 3.18x with "ghost" (a
second backward pass and its loss wrapper), 3.35x with "functorch"; 1.67x here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient, prepare_layer
from opacus.grad_sample.grad_sample_module import GradSampleHooks
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.utils.tensor_utils import unfold2d
from torch import nn

from fedmammo.privacy.accounting import PrivacyUsageError

__all__ = [
    "HOOKS_ATTR",
    "BookkeepingClipper",
    "BookkeepingDPOptimizer",
    "conv2d_weight_grad_samples",
    "dp_backward",
    "make_private_bookkeeping",
]

HOOKS_ATTR = "_fedmammo_dp_hooks"  # where a private model keeps its per-example machinery

_EPS = 1e-6  # Opacus' clipping factor: max_grad_norm / (norm + 1e-6)


@dataclass
class _Capture:
    """One hooked layer call: its input, its output and, after backward, the output grad."""

    module: nn.Module
    inputs: list[torch.Tensor]
    output: torch.Tensor | None
    n: int
    version: int = 0  # output._version at capture: an in-place op on it would void the grads
    grad: torch.Tensor | None = None
    grad_samples: dict[nn.Parameter, torch.Tensor] = field(default_factory=dict)
    ghost: Any = None  # state for the clipped sum of a ghost-norm layer


def _params(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def _ghost_is_cheaper(positions: int, n_out: int, n_in: int) -> bool:
    """Ghost norm (``L^2 (O + K)`` per example) beats materialising (``L O K``)."""
    return positions * (n_out + n_in) <= n_out * n_in


# ---- per-layer rules: fill capture.grad_samples and/or capture.ghost, return the squared
# per-example gradient norms of the layer's parameters (of the mean loss's share) -----------
def _unfold(layer: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    return unfold2d(
        a,
        kernel_size=layer.kernel_size,
        padding=layer.padding,
        stride=layer.stride,
        dilation=layer.dilation,
    )


def _conv2d(c: _Capture, n: int, *, materialise: bool = False, bias: bool = True) -> torch.Tensor:
    layer, a, g = c.module, c.inputs[0], c.grad
    out_ch, k = layer.out_channels, layer.in_channels * math.prod(layer.kernel_size)
    positions = g.shape[2] * g.shape[3]
    g3 = g.reshape(n, out_ch, positions)
    if bias and layer.bias is not None and layer.bias.requires_grad:
        c.grad_samples[layer.bias] = g3.sum(2)
    ghost = 0.0
    if not layer.weight.requires_grad:
        pass
    elif not materialise and _ghost_is_cheaper(positions, out_ch, k):
        cols = _unfold(layer, a)
        aa = torch.bmm(cols.transpose(1, 2), cols)
        gg = torch.bmm(g3.transpose(1, 2), g3)
        c.ghost = layer.weight
        ghost = (aa * gg).sum((1, 2))
    else:
        c.grad_samples[layer.weight] = conv2d_weight_grad_samples(layer, a, g)
    return _squared_norms(c, n) + ghost


def conv2d_weight_grad_samples(
    layer: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-example gradients ``(n, *weight.shape)`` of ``layer.weight`` for inputs ``a`` and
    output gradients ``g`` (added to ``out`` in place when given): oneDNN's grouped weight
    gradient for multi-channel inputs on >= 64 output positions, else unfold + bmm (timed
    on the benchmark models' layers: BENCHMARKS.md, "Differential privacy")."""
    n, out_ch = g.shape[0], layer.out_channels
    if layer.in_channels > 1 and g.shape[2] * g.shape[3] >= 64:
        weight = torch.empty((n * out_ch, *layer.weight.shape[1:]), dtype=a.dtype, device=a.device)
        _, gs, _ = torch.ops.aten.convolution_backward(
            g.reshape(1, n * out_ch, *g.shape[2:]),
            a.reshape(1, n * a.shape[1], *a.shape[2:]),
            weight,
            None,
            layer.stride,
            layer.padding,
            layer.dilation,
            False,
            [0, 0],
            n,
            [False, True, False],
        )
        gs = gs.reshape(n, *layer.weight.shape)
        return gs if out is None else out.add_(gs)
    g3, cols = g.reshape(n, out_ch, -1), _unfold(layer, a).transpose(1, 2)
    if out is None:
        return torch.bmm(g3, cols).reshape(n, *layer.weight.shape)
    out.view(n, out_ch, -1).baddbmm_(g3, cols)  # a view: the sum lands in ``out``
    return out


def _linear(c: _Capture, n: int, *, materialise: bool = False) -> torch.Tensor:
    layer, a, g = c.module, c.inputs[0], c.grad
    a3, g3 = a.reshape(n, -1, a.shape[-1]), g.reshape(n, -1, g.shape[-1])
    if layer.bias is not None and layer.bias.requires_grad:
        c.grad_samples[layer.bias] = g3.sum(1)
    ghost = 0.0
    if not layer.weight.requires_grad:
        pass
    elif materialise:
        c.grad_samples[layer.weight] = torch.bmm(g3.transpose(1, 2), a3)
    elif a3.shape[1] == 1:  # one position: ||g a^T|| = ||g|| ||a||
        c.ghost = layer.weight
        ghost = g3.square().sum((1, 2)) * a3.square().sum((1, 2))
    elif _ghost_is_cheaper(a3.shape[1], g3.shape[-1], a3.shape[-1]):
        aa = torch.bmm(a3, a3.transpose(1, 2))
        gg = torch.bmm(g3, g3.transpose(1, 2))
        c.ghost = layer.weight
        ghost = (aa * gg).sum((1, 2))
    else:
        c.grad_samples[layer.weight] = torch.bmm(g3.transpose(1, 2), a3)
    return _squared_norms(c, n) + ghost


def _group_norm(c: _Capture, n: int) -> torch.Tensor:
    layer, a, g = c.module, c.inputs[0], c.grad
    groups = layer.num_groups if isinstance(layer, nn.GroupNorm) else a.shape[1]
    g3 = g.reshape(n, g.shape[1], -1)
    if layer.weight is not None and layer.weight.requires_grad:
        normed = F.group_norm(a, groups, eps=layer.eps).reshape(g3.shape)
        c.grad_samples[layer.weight] = (normed * g3).sum(2)
    if layer.bias is not None and layer.bias.requires_grad:
        c.grad_samples[layer.bias] = g3.sum(2)
    return _squared_norms(c, n)


def _opacus_sampler(c: _Capture, n: int) -> torch.Tensor:
    layer = c.module
    sampler = GradSampleHooks.GRAD_SAMPLERS.get(type(layer), ft_compute_per_sample_gradient)
    samples = sampler(layer, list(c.inputs), c.grad)
    c.grad_samples.update({p: gs for p, gs in samples.items() if p.requires_grad})
    return _squared_norms(c, n)


def _squared_norms(c: _Capture, n: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.float32, device=c.grad.device)
    for gs in c.grad_samples.values():
        out += torch.linalg.vector_norm(gs.reshape(n, -1), dim=1).float().square()
    return out


_OPACUS_SAMPLED = GradSampleHooks.GRAD_SAMPLERS
_RULES: dict[type, Callable[[_Capture, int], torch.Tensor]] = {
    nn.Conv2d: _conv2d,
    nn.Linear: _linear,
    nn.GroupNorm: _group_norm,
}


def _rule(module: nn.Module) -> Callable[[_Capture, int], torch.Tensor]:
    if type(module) is nn.Conv2d and (module.groups != 1 or module.padding_mode != "zeros"):
        return _opacus_sampler
    if type(module) in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d):
        return _group_norm  # affine, no running stats (validated): GroupNorm with C groups
    return _RULES.get(type(module), _opacus_sampler)


def _clipped_sum(c: _Capture, coef: torch.Tensor) -> None:
    """Set ``p.grad = sum_i coef_i * grad_i`` for the capture's parameters."""
    for p, gs in c.grad_samples.items():
        p.grad = (coef.to(gs.dtype) @ gs.reshape(len(coef), -1)).reshape(p.shape).to(p.dtype)
    if c.ghost is None:
        return
    layer, g = c.module, c.grad
    scaled = g * coef.reshape(-1, *([1] * (g.dim() - 1))).to(g.dtype)
    if isinstance(layer, nn.Conv2d):
        _, grad_w, _ = torch.ops.aten.convolution_backward(
            scaled,
            c.inputs[0],
            layer.weight,
            None,
            layer.stride,
            layer.padding,
            layer.dilation,
            False,
            [0, 0],
            1,
            [False, True, False],
        )
    else:  # Linear
        a = c.inputs[0]
        grad_w = scaled.reshape(-1, scaled.shape[-1]).T @ a.reshape(-1, a.shape[-1])
    layer.weight.grad = grad_w.to(layer.weight.dtype)


def _as_float(t: torch.Tensor) -> torch.Tensor:
    """Float32 for half-precision tensors (autocast), unchanged otherwise."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _check_version(c: _Capture) -> None:
    if c.output is not None and c.output._version != c.version:
        raise PrivacyUsageError(
            f"the output of {type(c.module).__name__} was modified in place after the layer "
            "ran (e.g. ReLU(inplace=True) or an in-place op in forward); per-example "
            "gradients need it unchanged: use the out-of-place op"
        )


class BookkeepingClipper:
    """Per-example clipped gradient sums for ``model`` in one backward pass (see module doc).

    Use ``clipper.backward(loss)`` instead of ``loss.backward()`` (a plain ``backward()``
    also works: the clipped sums then replace autograd's gradients at the optimizer step,
    at the cost of the weight gradients autograd computed for nothing). ``loss`` must be the
    mean of per-example losses over the batch (dimension 0), as with Opacus. Each layer's
    per-example norms are computed as its output gradient arrives in the backward pass.
    """

    def __init__(self, model: nn.Module, *, max_grad_norm: float) -> None:
        self.model, self.max_grad_norm = model, float(max_grad_norm)
        self.hooks_enabled = True
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._captures: list[_Capture] = []
        self._seen: set[int] = set()
        self._sq: torch.Tensor | None = None  # per-example squared norms of raw grads
        self.clipped = False
        self._handles = []
        for module in model.modules():
            if getattr(module, "inplace", False) is True:
                module.inplace = False  # an in-place activation would overwrite a captured output
            if not _params(module):
                continue
            if _rule(module) is _opacus_sampler and type(module) not in _OPACUS_SAMPLED:
                prepare_layer(module)  # Opacus' torch.func fallback for this layer type
            self._handles.append(module.register_forward_hook(self._capture))

    # ---- the hooks object interface DPSession and dp_gan use -------------------------
    def enable_hooks(self) -> None:
        """Capture layer inputs and outputs again (after :meth:`disable_hooks`)."""
        self.hooks_enabled = True

    def disable_hooks(self) -> None:
        """Stop capturing (e.g. a generator step through a frozen private discriminator)."""
        self.hooks_enabled = False

    def cleanup(self) -> None:
        """Remove the hooks; the model is a plain module again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.reset()
        for module in self.model.modules():
            if hasattr(module, "ft_compute_sample_grad"):
                delattr(module, "ft_compute_sample_grad")

    def reset(self) -> None:
        """Forget captured activations (called by the optimizer's ``zero_grad``)."""
        self._captures = []
        self._seen.clear()
        self._sq = None
        self.clipped = False

    @property
    def pending(self) -> bool:
        """A forward (and possibly a plain backward) whose clipped sum is not yet computed."""
        return bool(self._captures)

    # ---- capture and clip ------------------------------------------------------------
    def _capture(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        if not (self.hooks_enabled and module.training and torch.is_grad_enabled()):
            return
        if id(module) in self._seen:
            raise PrivacyUsageError(
                f"{type(module).__name__} ran twice in one DP step; book-keeping clipping "
                "needs one forward per step (concatenate the batches, call zero_grad() "
                "between steps, or use grad_sample_mode='hooks')"
            )
        if not isinstance(output, torch.Tensor):
            raise PrivacyUsageError(
                f"{type(module).__name__} returns {type(output).__name__}; book-keeping "
                "clipping needs layers with parameters to return one tensor"
            )
        n = output.shape[0] if output.dim() else 0
        first = self._captures[0].n if self._captures else n
        if n != first:
            raise PrivacyUsageError(
                f"layers saw different batch sizes in one DP step ({first} and {n}); "
                "per-example clipping needs dimension 0 to be the examples everywhere"
            )
        self._seen.add(id(module))
        inputs = [_as_float(t.detach()) for t in inputs if isinstance(t, torch.Tensor)]
        if output.requires_grad:  # no reference from the hook to the capture: no cycle
            output.register_hook(partial(self._on_grad, len(self._captures)))
        self._captures.append(_Capture(module, inputs, output, n, output._version))
        self.clipped = False

    @torch.no_grad()
    def _on_grad(self, index: int, grad: torch.Tensor) -> None:
        """A layer's output gradient: its per-example squared norms, now (data in cache)."""
        c = self._captures[index]
        if c.grad is not None:
            return
        _check_version(c)
        c.grad = _as_float(grad.detach())
        n = c.grad.shape[0]
        if n:
            sq = _rule(c.module)(c, n).float()
            self._sq = sq if self._sq is None else self._sq + sq
        c.output = None  # the graph is not needed any more

    def backward(self, loss: torch.Tensor) -> None:
        """Output gradients of the captured layers only, then the clipped sums into ``.grad``."""
        live = [c for c in self._captures if c.output is not None and c.output.requires_grad]
        for c in live:
            _check_version(c)
        outputs = [c.output for c in live]
        if not outputs:
            raise PrivacyUsageError("backward() with no captured layer: run the model first")
        torch.autograd.grad(loss, outputs, allow_unused=True)  # the hooks do the work
        self.clip()

    @torch.no_grad()
    def clip(self) -> None:
        """Set every parameter's ``.grad`` to its clipped per-example gradient sum."""
        for p in self.params:
            p.grad = None
        if self._sq is not None:
            n = self._sq.shape[0]
            # per-example loss = n * (the mean loss's share): norms scale by n
            coef = n * (self.max_grad_norm / (n * self._sq.sqrt() + _EPS)).clamp(max=1.0)
            for c in self._captures:
                if c.grad is not None:
                    _clipped_sum(c, coef)
        for p in self.params:
            if p.grad is None:  # not reached by this batch (or an empty batch): zero
                p.grad = torch.zeros_like(p)
        self._captures = []
        self._seen.clear()
        self._sq = None
        self.clipped = True


class BookkeepingDPOptimizer(DPOptimizerFastGradientClipping):
    """Opacus' noise-and-average optimizer fed with :class:`BookkeepingClipper` sums.

    ``p.grad`` holds the clipped sum when ``step()`` runs (computed there if the loop called a
    plain ``loss.backward()``); Opacus adds the noise, divides by the expected batch size and
    calls the accountant's step hook.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, clipper: BookkeepingClipper, **kw):
        super().__init__(optimizer, **kw)
        self.clipper = clipper

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Clear gradients and the clipper's captured activations."""
        super().zero_grad(set_to_none)
        self.clipper.reset()

    def accumulate(self) -> None:
        """``summed_grad = grad`` (Opacus deep-copies; ``add_noise`` makes a new tensor anyway)."""
        for p in self.params:
            if p.summed_grad is None:
                p.summed_grad = p.grad.detach()
            else:
                p.summed_grad.add_(p.grad.detach())

    def pre_step(self, closure: Callable[[], float] | None = None) -> bool | None:
        """Finish the clipped sums if needed, then Opacus' noise, scaling and accounting."""
        if self.clipper.pending:
            self.clipper.clip()
        elif not self.clipper.clipped:
            raise PrivacyUsageError(
                "DP optimizer step without a forward and backward pass since zero_grad()"
            )
        self.clipper.clipped = False
        return super().pre_step(closure)


def make_private_bookkeeping(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    accountant: Any,
    generator: torch.Generator,
) -> tuple[BookkeepingClipper, BookkeepingDPOptimizer]:
    """Book-keeping clipping with Opacus' noise, averaging and accountant step hook.

    The optimizer class, expected batch size and step hook that
    ``PrivacyEngine.make_private(grad_sample_mode="ghost")`` builds for ``loader`` (already
    Poisson-sampled); only the clipped sums come from :class:`BookkeepingClipper`.
    """
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"] if p.requires_grad}
    if trainable != in_opt:
        raise PrivacyUsageError(
            "the optimizer must hold exactly the model's trainable parameters under DP "
            "(freeze the others with requires_grad_(False))"
        )
    clipper = BookkeepingClipper(model, max_grad_norm=max_grad_norm)
    sample_rate = 1 / len(loader)
    dp_opt = BookkeepingDPOptimizer(
        optimizer,
        clipper=clipper,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=int(len(loader.dataset) * sample_rate),
        loss_reduction="mean",
        generator=generator,
    )
    dp_opt.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return clipper, dp_opt


def dp_backward(model: nn.Module, loss: torch.Tensor) -> None:
    """``loss.backward()``, or the book-keeping backward if ``model`` was made private so."""
    hooks = getattr(model, HOOKS_ATTR, None)
    if isinstance(hooks, BookkeepingClipper) and hooks.hooks_enabled:
        hooks.backward(loss)
    else:
        loss.backward()
