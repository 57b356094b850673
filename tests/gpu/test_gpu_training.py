"""The GPU path of the training loops: skipped without CUDA (marker ``gpu``).

Run on a machine with a GPU: ``pytest -m gpu tests/gpu``.
"""

from __future__ import annotations

import gc
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from fedmammo.models.registry import build_model
from fedmammo.privacy.accounting import CentreAccountant, PrivacyBudget
from fedmammo.privacy.engine import DPSession
from fedmammo.training.classifier import predict_scores, train_classifier
from fedmammo.training.gan import train_dcgan, train_wgan_gp
from fedmammo.training.runtime import Runtime, release_memory

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
N = 32


@pytest.fixture(autouse=True)
def exact_float32():
    """No TF32 and deterministic cuDNN, so CPU and GPU float32 runs can be compared."""
    flags = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.deterministic,
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    yield
    (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.deterministic,
    ) = flags


def params() -> SimpleNamespace:
    return SimpleNamespace(
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


def centre(seed: int = 0) -> tuple[TensorDataset, np.ndarray, list[str]]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(N) % 2
    x = torch.rand(N, 1, 32, 32, generator=g) + labels[:, None, None, None] * 0.5
    return TensorDataset(x, labels), labels.numpy(), ["a", "b"] * (N // 2)


def dp_session(noise: float) -> DPSession:
    b = PrivacyBudget(target_epsilon=None, noise_multiplier=noise, delta=1e-5, max_grad_norm=1.0)
    return DPSession(b, CentreAccountant(), planned_steps=20, phase="p", centre="A", seed=0)


def train(runtime: Runtime | None, *, norm: str = "group", privacy=None, seed: int = 0):
    torch.manual_seed(1)
    model = build_model("mammo_cnn", width=4, depth=2, norm=norm)
    data, labels, segments = centre(seed)
    result = train_classifier(
        model, data, labels, segments, params=params(), seed=3, runtime=runtime, privacy=privacy
    )
    return model, result


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_gpu_float32_matches_cpu(norm):
    # Execute
    cpu, _ = train(None, norm=norm)
    gpu, _ = train(Runtime("cuda", channels_last=True, pin_memory=True), norm=norm)
    # Assert: same weights and scores within float32 tolerance
    for (k, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.cpu().float(), rtol=1e-3, atol=1e-4), k
    data = centre()[0]
    assert np.allclose(predict_scores(cpu, data), predict_scores(gpu.cpu(), data), atol=1e-4)


def test_dp_on_gpu_matches_cpu_and_accounts_the_same():
    # Prepare: no noise, so CPU and GPU differ only by float rounding.
    cpu_session, gpu_session = dp_session(0.0), dp_session(0.0)
    # Execute
    cpu, _ = train(None, privacy=cpu_session)
    gpu, _ = train(Runtime("cuda"), privacy=gpu_session)
    # Assert
    for (k, a), b in zip(cpu.state_dict().items(), gpu.state_dict().values(), strict=True):
        assert torch.allclose(a, b.cpu(), rtol=1e-3, atol=1e-5), k
    assert cpu_session.accountant.history == gpu_session.accountant.history
    # with noise the generator lives on the GPU and training still runs
    noisy, result = train(Runtime("cuda"), privacy=dp_session(1.0))
    assert result.epsilon is not None and np.isfinite(result.epsilon)
    assert all(torch.isfinite(p).all() for p in noisy.parameters())


def test_autocast_is_used_and_weights_stay_float32():
    # Prepare: bf16 where the GPU has it, else fp16 with its GradScaler.
    amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    seen: list[torch.dtype] = []
    torch.manual_seed(1)
    model = build_model("mammo_cnn", width=4, depth=2, norm="group")
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    data, labels, segments = centre()
    runtime = Runtime.for_gpu(amp=amp)
    # Execute
    result = train_classifier(
        model, data, labels, segments, params=params(), seed=3, runtime=runtime
    )
    # Assert
    assert set(seen) == {torch.bfloat16 if amp == "bf16" else torch.float16}
    assert all(p.dtype == torch.float32 and p.is_cuda for p in model.parameters())
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.isfinite(result.loss)


def test_memory_is_released_between_centres():
    # Prepare
    release_memory("cuda")
    baseline = torch.cuda.memory_allocated()
    # Execute: centre A trains, its model is dropped, memory released; then centre B.
    model, _ = train(Runtime("cuda"), seed=0)
    assert torch.cuda.memory_allocated() > baseline
    del model
    gc.collect()
    release_memory("cuda")
    after_a = torch.cuda.memory_allocated()
    reserved_a = torch.cuda.memory_reserved()
    model_b, _ = train(Runtime("cuda"), seed=1)
    # Assert: nothing of centre A is left; the cache was handed back to the driver.
    assert after_a == baseline
    assert reserved_a <= baseline + 2 * 2**20
    del model_b


def test_gans_train_on_gpu_with_and_without_dp():
    patches = np.random.default_rng(0).uniform(0, 1, (32, 16, 16)).astype(np.float32)
    common = dict(epochs=1, batch_size=8, width=4, latent_dim=8, seed=2)
    run = Runtime.for_gpu(amp="bf16" if torch.cuda.is_bf16_supported() else None)
    dcgan = train_dcgan(
        patches, snapshot_every=None, runtime=run, privacy=dp_session(1.0), **common
    )
    wgan = train_wgan_gp(patches, runtime=run, privacy=dp_session(1.0), **common)
    for result in (dcgan, wgan):
        assert result.critic_steps > 0 and np.isfinite(result.epsilon)
        assert all(torch.isfinite(v).all() for v in result.generator_state.values())
        assert all(not v.is_cuda for v in result.generator_state.values())  # CPU copies
