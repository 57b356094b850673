"""Tests of fedmammo.models.mtl: shapes, fusion, switched-off heads/decoder, Opacus checks."""

from __future__ import annotations

import pytest
import torch
from opacus.validators import ModuleValidator

from fedmammo.errors import ConfigError, DataError
from fedmammo.models import build_model
from fedmammo.models.mtl import MultiTaskNet

TINY = (4, 8, 8, 8, 8)


def test_default_latent_is_496_and_heads_have_task_classes():
    # Prepare
    torch.manual_seed(0)
    model = MultiTaskNet().eval()
    # Execute
    out = model(torch.rand(2, 1, 32, 32))
    # Assert
    assert model.latent_dim == 496
    assert out["z"].shape == (2, 496)
    assert {t: v.shape for t, v in out["logits"].items()} == {
        "malignancy": (2, 2),
        "acr": (2, 6),
        "density": (2, 4),
        "view": (2, 2),
    }
    assert out["reconstruction"].shape == (2, 1, 32, 32)


def test_without_fusion_latent_is_last_level_only():
    # Prepare
    model = MultiTaskNet(fusion=False, decoder=False).eval()
    # Execute
    out = model(torch.rand(2, 1, 32, 32))
    # Assert
    assert out["z"].shape == (2, 256)
    assert model.heads["malignancy"].in_features == 256


def test_fused_latent_blocks_are_unit_norm_per_level():
    # Prepare: eval mode disables dropout, so each level's features keep their L2 norm of 1
    model = MultiTaskNet(widths=TINY).eval()
    # Execute
    z = model(torch.rand(3, 1, 32, 32))["z"]
    # Assert
    norms = torch.stack([b.norm(dim=1) for b in torch.split(z, list(TINY), dim=1)])
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


@pytest.mark.parametrize(
    ("size", "stem_stride"),
    [((32, 32), 1), ((70, 50), 1), ((33, 47), 1), ((70, 50), 2), ((64, 48), 2), ((65, 40), 4)],
)
def test_reconstruction_matches_input_size(size, stem_stride):
    # Prepare
    model = MultiTaskNet(widths=TINY, stem_stride=stem_stride).eval()
    assert model.bottleneck_size(*size) != (1, 1)
    # Execute
    rec = model(torch.rand(2, 1, *size))["reconstruction"]
    # Assert
    assert rec.shape == (2, 1, *size)
    assert torch.isfinite(rec).all()


def test_switched_off_heads_and_decoder_have_no_outputs_and_no_parameters():
    # Prepare
    full = MultiTaskNet(widths=TINY)
    partial = MultiTaskNet(widths=TINY, tasks={"malignancy": 2, "view": 2}, decoder=False)
    # Execute
    out = partial(torch.rand(2, 1, 32, 32))
    names = {n for n, _ in partial.named_parameters()}
    # Assert
    assert set(out["logits"]) == {"malignancy", "view"}
    assert out["reconstruction"] is None
    assert not any(n.startswith(("heads.acr", "heads.density", "decoder")) for n in names)
    n_full = sum(p.numel() for p in full.parameters())
    n_part = sum(p.numel() for p in partial.parameters())
    head_params = (sum(TINY) + 1) * (6 + 4)  # acr and density Linear layers
    dec_params = sum(p.numel() for p in full.decoder.parameters())
    assert n_full - n_part == head_params + dec_params


def test_opacus_validator_accepts_the_model_and_norms_keep_no_running_stats():
    # Prepare
    model = MultiTaskNet()
    # Execute
    errors = ModuleValidator.validate(model, strict=False)
    # Assert
    assert errors == []
    norms = [m for m in model.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert norms and all(m.affine and not m.track_running_stats for m in norms)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_encoder_uses_depthwise_separable_convolutions():
    # Prepare
    model = MultiTaskNet(widths=TINY)
    # Execute
    depthwise = [
        m for m in model.levels.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1
    ]
    # Assert: two blocks x two separable convs per level
    assert len(depthwise) == 2 * 2 * len(TINY)
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)


def test_too_small_input_and_bad_options_raise_clear_errors():
    # Prepare
    model = MultiTaskNet(widths=TINY, stem_stride=4)
    # Execute / Assert
    with pytest.raises(DataError, match="bottleneck"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(ConfigError, match="stem_stride"):
        MultiTaskNet(stem_stride=3)
    with pytest.raises(ConfigError, match="classes"):
        MultiTaskNet(tasks={"malignancy": 1})


def test_registry_builds_the_multitask_net():
    # Prepare / Execute
    model = build_model("multitask", widths=TINY, fusion=False)
    # Assert
    assert isinstance(model, MultiTaskNet)
    assert model.latent_dim == 8
