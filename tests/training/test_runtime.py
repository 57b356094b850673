"""Tests for fedmammo.training.runtime and the runtime option of the training loops (CPU)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from fedmammo.errors import ConfigError
from fedmammo.models.registry import build_model
from fedmammo.privacy.accounting import CentreAccountant, PrivacyBudget
from fedmammo.privacy.engine import DPSession
from fedmammo.training.classifier import predict_scores, train_classifier
from fedmammo.training.gan import train_dcgan
from fedmammo.training.runtime import Runtime, keep_freed_memory, select_device

N = 24


def params(**kw) -> SimpleNamespace:
    base = dict(
        epochs=2,
        batch_size=8,
        steps_per_epoch=None,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        weight_decay=0.0,
        sampler="balanced_labels",
        augment=True,
    )
    return SimpleNamespace(**{**base, **kw})


def centre() -> tuple[TensorDataset, np.ndarray, list[str]]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(N) % 2
    x = torch.rand(N, 1, 32, 32, generator=g) + labels[:, None, None, None] * 0.5
    return TensorDataset(x, labels), labels.numpy(), ["a", "b"] * (N // 2)


def trained(runtime: Runtime | None, *, norm: str = "batch", privacy=None) -> torch.nn.Module:
    torch.manual_seed(1)
    model = build_model("mammo_cnn", width=4, depth=2, norm=norm)
    data, labels, segments = centre()
    train_classifier(
        model, data, labels, segments, params=params(), seed=3, runtime=runtime, privacy=privacy
    )
    return model


def test_default_runtime_is_bit_identical_to_the_plain_loop():
    # Execute
    plain, explicit = trained(None), trained(Runtime())
    # Assert
    for a, b in zip(plain.state_dict().values(), explicit.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    data = centre()[0]
    assert np.array_equal(
        predict_scores(plain, data), predict_scores(explicit, data, runtime=Runtime())
    )


def test_default_runtime_gan_is_bit_identical():
    patches = np.random.default_rng(0).uniform(0, 1, (16, 8, 8)).astype(np.float32)
    common = dict(epochs=2, batch_size=4, width=4, latent_dim=8, snapshot_every=None, seed=2)
    a = train_dcgan(patches, **common)
    b = train_dcgan(patches, runtime=Runtime(), **common)
    for k, v in a.generator_state.items():
        assert torch.equal(v, b.generator_state[k]), k


def test_bf16_autocast_runs_the_forward_in_bf16_on_cpu():
    # Prepare: record the dtype the first convolution produces.
    seen: list[torch.dtype] = []
    torch.manual_seed(1)
    model = build_model("mammo_cnn", width=4, depth=2, norm="group")
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    data, labels, segments = centre()
    # Execute
    result = train_classifier(
        model, data, labels, segments, params=params(), seed=3, runtime=Runtime(amp="bf16")
    )
    # Assert: autocast was on, the weights stayed float32 and training moved them.
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert np.isfinite(result.loss)


def test_dp_with_bf16_autocast_trains_and_fp16_is_refused():
    def session() -> DPSession:
        b = PrivacyBudget(target_epsilon=None, noise_multiplier=0.5, delta=1e-5, max_grad_norm=1.0)
        return DPSession(b, CentreAccountant(), planned_steps=10, phase="p", centre="A", seed=0)

    model = trained(Runtime(amp="bf16"), norm="group", privacy=session())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(ConfigError, match="bf16"):
        trained(Runtime(amp="fp16"), norm="group", privacy=session())


def test_runtime_validation_and_device_selection():
    with pytest.raises(ConfigError, match="amp must be"):
        Runtime(amp="int8")
    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert select_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            select_device("cuda")
    assert Runtime.for_gpu().channels_last and Runtime.for_gpu().amp == "bf16"
    assert Runtime().loader_kwargs() == {}  # no pinned memory on CPU
    assert Runtime().scaler() is None


def test_keep_freed_memory_is_idempotent():
    first = keep_freed_memory()
    assert keep_freed_memory() is first
