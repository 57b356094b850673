"""Tests for fedmammo.privacy.bookkeeping: clipped sums equal a per-example reference loop."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmammo.privacy.accounting import CentreAccountant, PrivacyBudget, PrivacyUsageError
from fedmammo.privacy.bookkeeping import BookkeepingClipper
from fedmammo.privacy.engine import DPSession

N = 6


def every_rule_cnn() -> nn.Module:
    """One layer per code path: unfold, grouped and ghost convs, GN, IN, ghost linear,
    an Opacus-sampled LayerNorm, a frozen bias and a bias-free conv."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # C_in 1: unfold + bmm
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Conv2d(4, 16, 3, padding=1, bias=False),  # 64 positions: grouped weight grad
        nn.InstanceNorm2d(16, affine=True),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),  # 16 positions: ghost norm
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(512, 10),  # one position: ghost norm
        nn.ReLU(),
        nn.LayerNorm(10),  # Opacus' sampler
        nn.Linear(10, 3),
    )
    model[0].bias.requires_grad_(False)
    return model


class Sequence(nn.Module):
    """Linear layers over a sequence (ghost and materialised) and a torch.func fallback."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.up = nn.ConvTranspose2d(1, 2, 2, stride=2)  # no Opacus sampler: torch.func
        self.wide = nn.Linear(32, 64)  # 16 positions, 16 (64 + 32) <= 64 x 32: ghost
        self.out = nn.Linear(64, 3)  # 16 (3 + 64) > 3 x 64: materialised

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x).reshape(x.shape[0], 16, 32)
        return self.out(torch.relu(self.wide(h))).mean(1)


def data(shape: tuple[int, ...], seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, *shape, generator=g), torch.randint(0, 3, (N,), generator=g)


def reference_clipped_sum(model: nn.Module, x, y, clip: float) -> list[torch.Tensor | None]:
    """Sum over examples of min(1, C / (||g_i|| + 1e-6)) g_i, one autograd call per example."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for t, g in zip(total, grads, strict=True):
            t += factor * g
    return total


@pytest.mark.parametrize("make, shape", [(every_rule_cnn, (1, 8, 8)), (Sequence, (1, 8, 8))])
@pytest.mark.parametrize("plain_backward", [False, True])
@pytest.mark.parametrize("clip", [1e-3, 1e3])  # every example clipped / none clipped
def test_clipped_sum_matches_a_per_example_loop(make, shape, plain_backward, clip):
    # Prepare
    model = make()
    reference = copy.deepcopy(model)
    x, y = data(shape)
    clipper = BookkeepingClipper(model, max_grad_norm=clip)
    # Execute
    loss = nn.functional.cross_entropy(model(x), y)
    if plain_backward:
        loss.backward()
        clipper.clip()
    else:
        clipper.backward(loss)
    # Assert
    expected = reference_clipped_sum(reference, x, y, clip)
    got = [p.grad for p in model.parameters() if p.requires_grad]
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-5 * float(e.abs().max()))
    assert any(float(e.abs().max()) > 0 for e in expected)
    assert model[0].bias.grad is None if make is every_rule_cnn else True  # frozen: untouched


def test_a_layer_run_twice_in_one_step_is_refused():
    layer = nn.Linear(4, 2)
    clipper = BookkeepingClipper(layer, max_grad_norm=1.0)
    x = torch.randn(3, 4)
    layer(x)
    with pytest.raises(PrivacyUsageError, match="ran twice"):
        layer(x)
    clipper.reset()
    layer(x)  # a new step is fine


def test_disabled_hooks_and_eval_mode_capture_nothing():
    layer = nn.Linear(4, 2)
    clipper = BookkeepingClipper(layer, max_grad_norm=1.0)
    clipper.disable_hooks()
    layer(torch.randn(3, 4))
    layer.eval()
    clipper.enable_hooks()
    layer(torch.randn(3, 4))
    assert not clipper.pending
    clipper.cleanup()
    layer.train()
    layer(torch.randn(3, 4))
    assert not clipper.pending  # hooks removed


def session(mode: str, noise: float = 0.0, clip: float = 1e-2) -> DPSession:
    b = PrivacyBudget(target_epsilon=None, noise_multiplier=noise, delta=1e-5, max_grad_norm=clip)
    return DPSession(
        b,
        CentreAccountant(),
        planned_steps=10,
        phase="p",
        centre="A",
        seed=4,
        grad_sample_mode=mode,
    )


def dp_round(mode: str, noise: float) -> tuple[nn.Module, DPSession, object]:
    model = every_rule_cnn()
    x, y = data((1, 8, 8), seed=5)
    s = session(mode, noise)
    loader = DataLoader(TensorDataset(x.repeat(4, 1, 1, 1), y.repeat(4)), batch_size=6)
    model, opt, loader = s.attach(model, torch.optim.SGD(model.parameters(), lr=1.0), loader)
    hooks, steps = s.hooks, 0
    for xb, yb in loader:
        if len(yb) == 0:
            continue
        opt.zero_grad(set_to_none=True)
        s.backward(nn.functional.cross_entropy(model(xb), yb))
        opt.step()
        steps += 1
    s.after_training(steps)
    return model, s, hooks


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_bk_session_trains_and_accounts_like_opacus_hooks(noise):
    # Execute: the same Poisson batches and noise seeds under both modes.
    bk_model, bk, clipper = dp_round("bk", noise)
    hooks_model, hooks, _ = dp_round("hooks", noise)
    # Assert: same weights (same clipped sums, same noise draws) and the same ledger.
    for (k, a), b in zip(bk_model.state_dict().items(), hooks_model.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), k
    assert bk.accountant.history == hooks.accountant.history
    assert bk.epsilon == hooks.epsilon
    assert bk.hooks is None and not clipper.pending and clipper._handles == []  # detached


def test_optimizer_step_without_backward_is_refused():
    s = session("bk")
    model = nn.Linear(4, 2)
    x = torch.randn(8, 4)
    _, opt, _ = s.attach(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        DataLoader(TensorDataset(x, torch.zeros(8, dtype=torch.long)), batch_size=4),
    )
    opt.zero_grad(set_to_none=True)
    with pytest.raises(PrivacyUsageError, match="without a forward and backward"):
        opt.step()


def test_optimizer_must_hold_the_trainable_parameters():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    loader = DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)
    with pytest.raises(PrivacyUsageError, match="exactly the model's trainable"):
        session("bk").attach(model, torch.optim.SGD(model[0].parameters(), lr=1.0), loader)


def test_unknown_grad_sample_mode_lists_the_valid_ones():
    with pytest.raises(PrivacyUsageError, match="valid: \\['bk', 'hooks'"):
        session("ew")


def _project_models():
    from fedmammo.models.gans import build_discriminator
    from fedmammo.models.registry import build_model

    torch.manual_seed(2)
    return [
        ("mammo_cnn", build_model("mammo_cnn", width=4, depth=2, norm="group"), (1, 16, 16)),
        ("patch_cnn", build_model("patch_cnn", patch_size=16, width=4, norm="group"), (1, 16, 16)),
        (
            "discriminator",
            build_discriminator("dcgan", patch_size=16, width=4, norm="group"),
            (1, 16, 16),
        ),
    ]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_project_models_clip_like_the_loop(index):
    # Prepare: the models fedmammo trains under DP; a 2-class loss on each output.
    name, model, shape = _project_models()[index]
    model.eval().train()  # dropout stays in train mode: make it a no-op
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    reference = copy.deepcopy(model)
    x, y = data(shape)

    def loss_of(net, xb, yb):
        out = net(xb).reshape(len(xb), -1)
        if out.shape[1] == 1:
            return nn.functional.binary_cross_entropy_with_logits(out[:, 0], (yb > 0).float())
        return nn.functional.cross_entropy(out, yb % out.shape[1])

    clipper = BookkeepingClipper(model, max_grad_norm=1e-2)
    # Execute
    clipper.backward(loss_of(model, x, y))
    # Assert
    params = [p for p in reference.parameters() if p.requires_grad]
    expected = [torch.zeros_like(p) for p in params]
    for i in range(N):
        grads = torch.autograd.grad(loss_of(reference, x[i : i + 1], y[i : i + 1]), params)
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        for e, g in zip(expected, grads, strict=True):
            e += g * min(1.0, 1e-2 / (norm + 1e-6))
    got = [p.grad for p in model.parameters() if p.requires_grad]
    scale = max(float(e.abs().max()) for e in expected)  # a bias before a norm has ~0 grads
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-6 * scale), name


class _AddInPlace(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.add_(1.0)


def test_inplace_activation_is_made_out_of_place_and_other_inplace_ops_refused():
    relu = nn.ReLU(inplace=True)
    model = nn.Sequential(nn.Linear(4, 4), relu, nn.Linear(4, 2))
    BookkeepingClipper(model, max_grad_norm=1.0)
    assert relu.inplace is False
    model = nn.Sequential(nn.Linear(4, 4), _AddInPlace(), nn.Linear(4, 2))
    clipper = BookkeepingClipper(model, max_grad_norm=1.0)
    with pytest.raises(PrivacyUsageError, match="modified in place"):
        clipper.backward(model(torch.randn(3, 4)).sum())
