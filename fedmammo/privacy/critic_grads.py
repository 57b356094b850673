"""Per-example WGAN-GP critic gradients without ``vmap``: an explicit input-gradient pass.

Example ``i``'s loss is ``D(f_i) - D(r_i) + lambda (||grad_x D(x_i)|| - 1)^2``. ``torch.func``
gets its parameter gradient per example with ``vmap(grad(.))``, which turns every
convolution with per-example weight gradients into a grouped convolution: slow on CPUs.
Here, for critics that are a chain of Conv2d, Linear, (Leaky)ReLU, GroupNorm/InstanceNorm,
Identity and reshapes (fedmammo's critics are), the input gradient ``grad_x D`` is written
out as ordinary differentiable operations (transposed convolutions with the same weights,
the norm's backward formula, the activations' constant slopes). Every use of a parameter is
then a plain layer call whose input and output we keep; one ``autograd.grad`` of the summed
loss to those outputs gives, per use, what the parameter's per-example gradient needs, and
the per-example gradient of a parameter is the sum over its uses (the three forward slices
real / fake / interpolate and the one in the input-gradient pass). The result equals the
``vmap`` gradients (tests compare both with a per-example autograd loop).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedmammo.privacy.bookkeeping import _Capture, _group_norm, conv2d_weight_grad_samples

__all__ = ["critic_chain", "per_example_wgan_gp_grads"]

_ACTIVATIONS = (nn.LeakyReLU, nn.ReLU)
_NORMS = (nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)


class _Reshape(nn.Module):
    """A reshape in the critic's forward (``flatten``, ``view``, ``reshape``)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _supported(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Conv2d):
        return type(layer) is nn.Conv2d and layer.groups == 1 and layer.padding_mode == "zeros"
    if isinstance(layer, _NORMS):
        return not getattr(layer, "track_running_stats", False)
    if isinstance(layer, nn.Dropout):
        return layer.p == 0
    return type(layer) in (nn.Linear, nn.Identity, nn.Flatten, _Reshape, *_ACTIVATIONS)


def _flat(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [m for child in module for m in _flat(child)]
    return [module]


_CHAINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def critic_chain(critic: nn.Module) -> list[nn.Module] | None:
    """The critic as a list of supported layers applied in order, or None if it is not one."""
    if critic not in _CHAINS:
        _CHAINS[critic] = _chain(critic)
    return _CHAINS[critic]


def _chain(critic: nn.Module) -> list[nn.Module] | None:
    if isinstance(critic, nn.Sequential):
        layers = _flat(critic)
    else:
        try:
            graph = torch.fx.symbolic_trace(critic)
        except Exception:  # noqa: BLE001 - not traceable: not a chain we can handle
            return None
        layers, previous = [], None
        for node in graph.graph.nodes:
            if node.op in ("placeholder", "output"):
                previous = node if node.op == "placeholder" else previous
                continue
            if node.all_input_nodes != [previous]:
                return None
            if node.op == "call_module":
                layers.extend(_flat(graph.get_submodule(node.target)))
            elif node.op == "call_method" and node.target in ("flatten", "view", "reshape"):
                args = node.args[1:]
                layers.append(_Reshape(lambda x, m=node.target, a=args: getattr(x, m)(*a)))
            elif node.op == "call_function" and node.target is torch.flatten:
                args = node.args[1:]
                layers.append(_Reshape(lambda x, a=args: torch.flatten(x, *a)))
            else:
                return None
            previous = node
    return layers if all(_supported(m) for m in layers) else None


def _conv_transpose(layer: nn.Conv2d, delta: torch.Tensor, in_shape: torch.Size) -> torch.Tensor:
    """The input gradient of ``layer`` for output gradient ``delta`` (input size ``in_shape``)."""
    pad = layer.padding
    extra = []
    for i in range(2):
        full = (delta.shape[2 + i] - 1) * layer.stride[i] - 2 * pad[i]
        full += layer.dilation[i] * (layer.kernel_size[i] - 1) + 1
        extra.append(in_shape[2 + i] - full)
    return F.conv_transpose2d(
        delta, layer.weight, None, layer.stride, pad, tuple(extra), 1, layer.dilation
    )


def _norm_backward(layer: nn.Module, x: torch.Tensor, delta_hat: torch.Tensor) -> torch.Tensor:
    """``d loss / d x`` of a group norm for ``d loss / d xhat`` (differentiable in ``x``)."""
    groups = layer.num_groups if isinstance(layer, nn.GroupNorm) else x.shape[1]
    n = x.shape[0]
    xg = x.reshape(n, groups, -1)
    var, mean = torch.var_mean(xg, dim=2, correction=0, keepdim=True)
    rstd = (var + layer.eps).rsqrt()
    xhat = (xg - mean) * rstd
    d = delta_hat.reshape(n, groups, -1)
    dx = rstd * (d - d.mean(2, keepdim=True) - xhat * (d * xhat).mean(2, keepdim=True))
    return dx.reshape(x.shape)


def per_example_wgan_gp_grads(
    layers: list[nn.Module],
    real: torch.Tensor,
    fake: torch.Tensor,
    alpha: torch.Tensor,
    lambda_gp: float,
    gp_eps: float,
) -> tuple[dict[nn.Parameter, torch.Tensor], torch.Tensor]:
    """(parameter -> per-example gradients ``(n, *shape)``, per-example losses ``(n,)``)."""
    n = real.shape[0]
    x_hat = alpha * real + (1 - alpha) * fake
    h = torch.cat([x_hat, fake, real]).detach()
    uses: list[tuple[str, nn.Module, list[torch.Tensor], torch.Tensor]] = []
    inputs: list[torch.Tensor] = []
    with torch.enable_grad():
        for layer in layers:  # forward over interpolates, fakes and reals at once
            inputs.append(h)
            out = layer(h)
            if any(p.requires_grad for p in layer.parameters(recurse=False)):
                uses.append(("forward", layer, [h], out))
            h = out
        scores = h.reshape(3 * n, -1).sum(1)
        delta = torch.ones_like(h[:n])
        for layer, a in zip(reversed(layers), reversed(inputs), strict=True):
            delta = _backward_step(layer, a[:n], delta, uses)
        grad_norm = torch.sqrt(delta.reshape(n, -1).square().sum(1) + gp_eps)
        losses = scores[n : 2 * n] - scores[2 * n :] + lambda_gp * (grad_norm - 1.0) ** 2
        outputs = [out for *_, out in uses]
        grads = torch.autograd.grad(losses.sum(), outputs, allow_unused=True)
    per_example: dict[nn.Parameter, torch.Tensor] = {}
    for (kind, layer, ins, _out), g in zip(uses, grads, strict=True):
        if g is not None:
            _use_grads(kind, layer, ins[0].detach(), g.detach(), n, per_example)
    for p in (p for layer in layers for p in layer.parameters(recurse=False)):
        if p.requires_grad and p not in per_example:
            per_example[p] = torch.zeros((n, *p.shape), dtype=p.dtype, device=p.device)
    return per_example, losses.detach()


def _backward_step(layer: nn.Module, a: torch.Tensor, delta: torch.Tensor, uses: list) -> Any:
    """Input gradient of ``layer`` at input ``a`` for output gradient ``delta``; records uses."""
    if isinstance(layer, (_Reshape, nn.Flatten)):
        return delta.reshape(a.shape)
    if isinstance(layer, (nn.Identity, nn.Dropout)):
        return delta
    if isinstance(layer, nn.LeakyReLU):
        return delta * torch.where(a > 0, 1.0, layer.negative_slope).detach()
    if isinstance(layer, nn.ReLU):
        return delta * (a > 0).to(delta.dtype)
    if isinstance(layer, nn.Conv2d):
        out = _conv_transpose(layer, delta, a.shape)
        if layer.weight.requires_grad:
            uses.append(("conv_input_grad", layer, [delta], out))
        return out
    if isinstance(layer, nn.Linear):
        out = delta @ layer.weight
        if layer.weight.requires_grad:
            uses.append(("linear_input_grad", layer, [delta], out))
        return out
    if isinstance(layer, _NORMS):
        scaled = delta
        if layer.weight is not None:
            shape = (1, -1) + (1,) * (delta.dim() - 2)
            scaled = delta * layer.weight.reshape(shape)
            if layer.weight.requires_grad:
                uses.append(("norm_input_grad", layer, [delta], scaled))
        return _norm_backward(layer, a, scaled)
    raise TypeError(f"unsupported critic layer {type(layer).__name__}")  # critic_chain checks


def _add(store: dict, p: nn.Parameter, value: torch.Tensor) -> None:
    store[p] = store[p] + value if p in store else value


def _use_grads(
    kind: str, layer: nn.Module, a: torch.Tensor, g: torch.Tensor, n: int, per_example: dict
) -> None:
    """Add one use's share to the per-example gradients of ``layer``'s parameters.

    A use holds ``k`` slices of ``n`` examples (3 for the forward over interpolates, fakes
    and reals, 1 for the input-gradient pass); weights are summed slice by slice into one
    tensor (``baddbmm`` / in-place adds: no copies of the slices side by side).
    """
    k = g.shape[0] // n
    if isinstance(layer, nn.Conv2d):
        if kind == "conv_input_grad":  # out = conv_transpose(a, W): a conv of g with grad a
            a, g = g, a
        elif layer.bias is not None and layer.bias.requires_grad:
            _add(per_example, layer.bias, g.sum((2, 3)).reshape(k, n, -1).sum(0))
        for s in range(k):
            rows = slice(s * n, (s + 1) * n)
            total = per_example.get(layer.weight)
            per_example[layer.weight] = conv2d_weight_grad_samples(layer, a[rows], g[rows], total)
    elif isinstance(layer, nn.Linear):
        a3 = a.reshape(a.shape[0], -1, a.shape[-1])  # (kn, T, I)
        g3 = g.reshape(g.shape[0], -1, g.shape[-1])  # (kn, T, O)
        if kind == "linear_input_grad":  # out = a @ W: d/dW = a^T g
            a3, g3 = g3, a3
        elif layer.bias is not None and layer.bias.requires_grad:
            _add(per_example, layer.bias, g3.sum(1).reshape(k, n, -1).sum(0))
        for s in range(k):
            rows = slice(s * n, (s + 1) * n)
            gt = g3[rows].transpose(1, 2)  # (n, O, T) @ (n, T, I): summed over positions
            if layer.weight in per_example:
                per_example[layer.weight].baddbmm_(gt, a3[rows])
            else:
                per_example[layer.weight] = torch.bmm(gt, a3[rows])
    elif kind == "norm_input_grad":  # out = a * weight per channel
        _add(per_example, layer.weight, (g * a).reshape(n, g.shape[1], -1).sum(2))
    else:  # a norm's forward use
        capture = _Capture(layer, [a], None, g.shape[0], grad=g)
        _group_norm(capture, g.shape[0])
        for p, gs in capture.grad_samples.items():
            _add(per_example, p, gs.reshape(k, n, *gs.shape[1:]).sum(0))
