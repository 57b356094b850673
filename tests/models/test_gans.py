"""Tests for fedmammo.models.gans: shapes, kernel 6, norms, descriptions, sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from fedmammo.errors import ConfigError, DataError
from fedmammo.models.gans import (
    GAN_KINDS,
    GeneratorDescription,
    build_gan,
    build_generator,
    describe,
    load_generator,
    sample_generator,
    sample_patches,
)


@pytest.mark.parametrize("kind", sorted(GAN_KINDS))
@pytest.mark.parametrize("size", [32, 64, 128])
def test_generator_and_discriminator_shapes(kind, size):
    # Prepare
    torch.manual_seed(0)
    gen, disc = build_gan(kind, patch_size=size, width=4)
    z = torch.randn(3, 100)
    # Execute
    fake = gen(z)
    scores = disc(fake)
    # Assert: 1-channel square patches in [-1, 1], one score per sample
    assert fake.shape == (3, 1, size, size)
    assert fake.abs().max() <= 1.0
    assert scores.shape == (3,)


def test_discriminator_uses_kernel_6_stride_2_halving_the_size():
    _, disc = build_gan("dcgan", patch_size=64, width=4)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    x = torch.zeros(1, 1, 64, 64)
    sizes = []
    for conv in convs[:-1]:
        assert conv.kernel_size == (6, 6) and conv.stride == (2, 2) and conv.padding == (2, 2)
        x = conv(x)
        sizes.append(x.shape[-1])
    assert sizes == [32, 16, 8, 4]
    assert convs[-1].kernel_size == (4, 4)  # 4x4 -> 1 logit


def test_latent_size_is_100_by_default():
    gen = build_generator(patch_size=32, width=4)
    first = next(m for m in gen.modules() if isinstance(m, nn.ConvTranspose2d))
    assert first.in_channels == 100


def _norm_types(module: nn.Module) -> set[type]:
    kinds = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
    return {type(m) for m in module.modules() if isinstance(m, kinds)}


def test_norm_defaults_batch_for_dcgan_none_for_wgan_critic():
    _, d_dcgan = build_gan("dcgan", patch_size=32, width=4)
    _, critic = build_gan("wgan_gp", patch_size=32, width=4)
    assert _norm_types(d_dcgan) == {nn.BatchNorm2d}
    assert _norm_types(critic) == set()
    assert not any(isinstance(m, nn.Sigmoid) for m in critic.modules())


def test_wgan_critic_refuses_batch_norm():
    with pytest.raises(ConfigError, match="norm='batch'"):
        build_gan("wgan_gp", patch_size=32, norm="batch")


@pytest.mark.parametrize("kind", sorted(GAN_KINDS))
def test_group_norm_discriminator_is_opacus_compatible(kind):
    from opacus.validators import ModuleValidator

    _, disc = build_gan(kind, patch_size=32, width=4, norm="group")
    assert _norm_types(disc) == {nn.GroupNorm}
    assert ModuleValidator.validate(disc, strict=False) == []


def test_unknown_kind_and_bad_size_are_config_errors():
    with pytest.raises(ConfigError, match=r"valid kinds: \['dcgan', 'wgan_gp'\]"):
        build_gan("stylegan")
    with pytest.raises(ConfigError, match="power of two"):
        build_gan("dcgan", patch_size=48)
    with pytest.raises(ConfigError, match="valid norms"):
        build_gan("dcgan", norm="layer")


def test_description_round_trips_through_json():
    desc = describe(
        "dcgan",
        patch_size=64,
        lesion_types=["mass"],
        n_training_patches=12,
        epochs=30,
        snapshot_epochs=[10, 20, 30],
        centre="B",
    )
    restored = GeneratorDescription.from_dict(json.loads(json.dumps(desc.to_dict())))
    assert restored == desc
    with pytest.raises(ConfigError, match="unknown keys \\['colour'\\]"):
        GeneratorDescription.from_dict({**desc.to_dict(), "colour": "red"})


def test_load_generator_reproduces_outputs():
    torch.manual_seed(1)
    gen = build_generator(patch_size=32, width=4).eval()
    desc = describe("dcgan", patch_size=32, width=4)
    z = torch.randn(2, 100)
    np.testing.assert_allclose(
        load_generator(desc, gen.state_dict())(z).detach().numpy(),
        gen(z).detach().numpy(),
        atol=1e-6,
    )


def _constant_state(desc: GeneratorDescription) -> dict[str, torch.Tensor]:
    """A generator state whose output is exactly 0.5 (last layer zero: tanh(0) = 0)."""
    torch.manual_seed(2)
    state = build_generator(patch_size=desc.patch_size, width=desc.width).state_dict()
    last = [k for k in state if k.endswith("weight")][-1]
    state[last] = torch.zeros_like(state[last])
    return state


def _busy_state(desc: GeneratorDescription) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    state = build_generator(patch_size=desc.patch_size, width=desc.width).state_dict()
    last = [k for k in state if k.endswith("weight")][-1]
    state[last] = state[last] * 50
    return state


def test_sample_generator_spreads_samples_evenly_over_snapshots():
    # Prepare: snapshot 1 outputs constant 0.5, snapshot 2 does not
    desc = describe("dcgan", patch_size=32, width=4)
    states = [_constant_state(desc), _busy_state(desc)]
    # Execute
    out = sample_generator(desc, states, 7, seed=0)
    # Assert: 4 from the first snapshot, 3 from the second, all in [0, 1]
    assert out.shape == (7, 32, 32) and out.dtype == np.float32
    constant = np.all(np.isclose(out, 0.5), axis=(1, 2))
    assert constant.tolist() == [True] * 4 + [False] * 3
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize(("n", "first"), [(10, 5), (7, 4)])
def test_sample_patches_takes_half_from_each_of_two_generators(n, first):
    desc = describe("dcgan", patch_size=32, width=4)
    out = sample_patches([(desc, [_constant_state(desc)]), (desc, [_busy_state(desc)])], n)
    constant = np.all(np.isclose(out, 0.5), axis=(1, 2))
    assert constant.sum() == first and constant[:first].all()


def test_sampling_is_reproducible_and_checks_inputs():
    desc = describe("dcgan", patch_size=32, width=4)
    states = [_busy_state(desc)]
    np.testing.assert_array_equal(
        sample_generator(desc, states, 3, seed=5), sample_generator(desc, states, 3, seed=5)
    )
    with pytest.raises(DataError, match="no generator states"):
        sample_generator(desc, [], 3)
    other = describe("dcgan", patch_size=64, width=4)
    with pytest.raises(DataError, match="different patch sizes"):
        sample_patches([(desc, states), (other, states)], 4)
