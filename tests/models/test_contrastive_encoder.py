"""Contrastive encoders, the FCOS builder and the NT-Xent / margin losses against formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.models import resnet18, resnet50

from fedmammo.data.pairs import contrastive_masks
from fedmammo.errors import ConfigError, DataError
from fedmammo.models import build_model, list_models
from fedmammo.models.contrastive import build_contrastive_encoder
from fedmammo.models.contrastive_losses import DEFAULT_TAU, margin_contrastive_loss, nt_xent_loss
from fedmammo.privacy.engine import dp_incompatible_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _direct_nt_xent(z, pos, neg, tau):
    """Per-row formula with Python loops: mean over anchors of mean over their positives."""
    z = torch.nn.functional.normalize(z.double(), dim=1)
    n = len(z)
    rows = []
    for i in range(n):
        positives = [j for j in range(n) if j != i and pos[i, j]]
        if not positives:
            continue
        if neg is None:
            den_set = [k for k in range(n) if k != i]
        else:
            den_set = [k for k in range(n) if k != i and (pos[i, k] or neg[i, k])]
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in den_set)
        terms = [-math.log(math.exp(float(z[i] @ z[j]) / tau) / den) for j in positives]
        rows.append(sum(terms) / len(terms))
    return sum(rows) / len(rows)


def test_simclr_loss_is_equation_one_averaged_over_all_2n_rows():
    # Prepare: N = 3 images, two views each (rows k and k + 3)
    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    image = [0, 1, 2, 0, 1, 2]
    pos, neg = contrastive_masks(patient=image, image=image, view=["CC"] * 6, scheme="simclr")
    # Execute
    loss = nt_xent_loss(z, torch.from_numpy(pos), None, tau=0.5)
    masked = nt_xent_loss(z, torch.from_numpy(pos), torch.from_numpy(neg), tau=0.5)
    # Assert: equation 1 with 1[k != i] in the denominator; SimCLR's masks say the same
    assert float(loss) == pytest.approx(_direct_nt_xent(z, pos, None, 0.5), rel=1e-5)
    assert float(masked) == pytest.approx(float(loss), rel=1e-6)


def test_hand_computed_value_with_orthogonal_negatives():
    # Prepare: two pairs of identical unit vectors, the pairs orthogonal to each other
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 2.0]], dtype=torch.float64)
    pos = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)
    # Execute
    loss = nt_xent_loss(z, pos, tau=0.1)
    # Assert: each row: -log(e^10 / (e^10 + 2 e^0))
    assert float(loss) == pytest.approx(-math.log(math.exp(10) / (math.exp(10) + 2)), rel=1e-6)


@pytest.mark.parametrize("scheme", ["mscl", "mvcl"])
def test_domain_knowledge_masks_match_the_direct_formula(scheme):
    # Prepare: 2 patients x 2 breasts x (CC, MLO), two style variants of each image (16 rows)
    keys = [(p, s, v) for p in "AB" for s in "LR" for v in ("CC", "MLO")] * 2
    patient = [k[0] for k in keys]
    breast = [k[0] + k[1] for k in keys]
    view = [k[2] for k in keys]
    image = ["".join(k) for k in keys]
    pos, neg = contrastive_masks(
        patient=patient, image=image, view=view, breast=breast, scheme=scheme
    )
    z = torch.randn(len(keys), 4, generator=torch.Generator().manual_seed(1))
    # Execute
    loss = nt_xent_loss(z, torch.from_numpy(pos), torch.from_numpy(neg), tau=DEFAULT_TAU)
    # Assert
    assert float(loss) == pytest.approx(_direct_nt_xent(z, pos, neg, DEFAULT_TAU), rel=1e-5)


def test_pairs_outside_both_masks_do_not_change_the_loss():
    # Prepare: row 2 is neither positive nor negative for row 0 (same patient, another view)
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    pos = torch.zeros(4, 4, dtype=torch.bool)
    pos[0, 1] = True
    neg = torch.zeros(4, 4, dtype=torch.bool)
    neg[0, 3] = True
    moved = z.clone()
    moved[2] = z[0] * 3  # a neutral sample identical in direction to the anchor
    # Execute / Assert
    assert torch.allclose(nt_xent_loss(z, pos, neg), nt_xent_loss(moved, pos, neg))
    assert not torch.allclose(nt_xent_loss(z, pos, None), nt_xent_loss(moved, pos, None))


def test_bad_masks_and_temperature_are_refused():
    z = torch.randn(3, 2)
    pos = torch.eye(3, dtype=torch.bool).roll(1, 1)
    with pytest.raises(DataError, match="both positive and negative"):
        nt_xent_loss(z, pos, pos)
    with pytest.raises(DataError, match="no positive pair"):
        nt_xent_loss(z, torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ConfigError, match="tau"):
        nt_xent_loss(z, pos, tau=0.0)


def test_margin_loss_is_equation_three():
    # Prepare: distances 3 (match) and 4 (non-match) and 12 (non-match beyond the margin)
    f1 = torch.zeros(3, 2)
    f2 = torch.tensor([[3.0, 0.0], [0.0, 4.0], [12.0, 0.0]])
    y = torch.tensor([1, 0, 0])
    # Execute
    loss = margin_contrastive_loss(f1, f2, y, margin=10.0)
    # Assert: (3^2 + (10 - 4)^2 + 0) / (2 * 3)
    assert float(loss) == pytest.approx((9 + 36) / 6, rel=1e-6)


@pytest.mark.parametrize(
    ("name", "features"),
    [
        ("contrastive_resnet_slim", 128),
        ("contrastive_resnet18", 512),
        ("contrastive_resnet50", 2048),
    ],
)
def test_registered_encoders_give_features_and_projections(name, features):
    # Prepare
    assert name in list_models()
    torch.manual_seed(0)
    model = build_model(name, projection_dim=32).eval()
    x = torch.rand(2, 1, 32, 32)
    # Execute
    with torch.no_grad():
        f, z = model.features(x), model(x)
    # Assert
    assert f.shape == (2, features) and z.shape == (2, 32)
    assert model.backbone.conv1.in_channels == 1


@pytest.mark.parametrize(("arch", "builder"), [("resnet18", resnet18), ("resnet50", resnet50)])
def test_backbone_computes_what_torchvision_resnet_computes(arch, builder):
    # Prepare: torchvision's own network with the encoder's weights (in-place shortcut adds)
    torch.manual_seed(0)
    encoder = build_contrastive_encoder(arch=arch).eval()
    reference = builder(weights=None)
    reference.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    reference.fc = torch.nn.Identity()
    reference.load_state_dict(encoder.backbone.state_dict())
    x = torch.rand(2, 1, 32, 32)
    # Execute / Assert
    with torch.no_grad():
        assert torch.allclose(encoder.features(x), reference.eval()(x), atol=1e-6)


def test_group_norm_encoder_is_opacus_compatible_and_batch_norm_is_not():
    assert dp_incompatible_layers(build_contrastive_encoder(arch="resnet_slim", norm="group")) == []
    assert dp_incompatible_layers(build_contrastive_encoder(arch="resnet_slim"))
    with pytest.raises(ConfigError, match="valid"):
        build_contrastive_encoder(arch="vit")


def test_fcos_shares_the_pretrained_backbone_weights_and_detects():
    # Prepare
    torch.manual_seed(0)
    encoder = build_contrastive_encoder(arch="resnet_slim", width=8)
    detector = build_model("fcos", image_size=(64, 48), encoder=encoder)
    images = [torch.rand(1, 64, 48), torch.rand(1, 64, 48)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 26.0, 30.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    # Execute
    losses = detector.train()(images, targets)
    with torch.no_grad():
        detections = detector.eval()(images)
    # Assert: a copy of the encoder's weights (not the same tensors)
    body = detector.backbone.body
    assert torch.equal(body.conv1.weight, encoder.backbone.conv1.weight)
    assert body.conv1.weight.data_ptr() != encoder.backbone.conv1.weight.data_ptr()
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert len(detections) == 2 and detections[0]["boxes"].shape[1] == 4
    assert np.all(detections[0]["scores"].numpy() >= 0.05)
