"""The registry's Swin transformer: torchvision's Swin-T by default, smaller for CPU."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import swin_t

from fedmammo.errors import ConfigError
from fedmammo.models import build_model


def test_the_default_swin_is_torchvisions_swin_t_with_two_classes():
    # Prepare / Execute
    ours = build_model("swin_t").net.state_dict()
    reference = swin_t(weights=None, num_classes=2).state_dict()
    # Assert: the same layers with the same shapes
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()}


def test_a_cpu_sized_swin_classifies_one_channel_patches_of_any_size():
    # Prepare
    torch.manual_seed(0)
    small = build_model(
        "swin_t", input_size=32, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4
    )
    # Execute
    out = small(torch.rand(3, 1, 20, 20))
    # Assert: resized to 32 px, stacked to 3 channels, two logits; far fewer weights
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    assert sum(p.numel() for p in small.parameters()) < 10_000


def test_depths_and_heads_of_different_lengths_are_refused():
    with pytest.raises(ConfigError, match=r"depths \[2, 2\] and num_heads \[3\]"):
        build_model("swin_t", depths=[2, 2], num_heads=[3])


def test_the_swin_sees_each_patch_standardised_so_brightness_and_contrast_do_not_matter():
    # Prepare
    torch.manual_seed(0)
    small = build_model(
        "swin_t", input_size=16, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4
    ).eval()
    x = torch.rand(2, 1, 16, 16) * 0.3 + 0.2
    # Execute / Assert: an affine change of intensities gives the same logits
    with torch.no_grad():
        assert torch.allclose(small(x), small(2.5 * x + 0.1), atol=1e-4)
        assert not torch.allclose(small(x), small(x.flip(-1)), atol=1e-4)
