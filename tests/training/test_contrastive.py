"""Style diversification (CycleGAN translation, blending) and local contrastive pre-training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fedmammo.data.pairs import contrastive_masks
from fedmammo.errors import ConfigError, DataError
from fedmammo.models.contrastive import build_contrastive_encoder
from fedmammo.models.contrastive_losses import DEFAULT_TAU, nt_xent_loss
from fedmammo.models.cyclegan import CycleGanDescription, build_translator
from fedmammo.training.contrastive import augment_views, encode_images, pretrain_contrastive
from fedmammo.training.contrastive_styles import (
    BLEND_ALPHAS,
    blend_styles,
    breast_tiles,
    build_style_bank,
    sample_style_variants,
    train_style_translators,
    translate_images,
)
from fedmammo.training.cyclegan import translate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _frame(patients: int = 4) -> pd.DataFrame:
    rows = [
        {"image_id": f"{p}{s}{v}", "patient_id": f"P{p}", "laterality": s, "view": v}
        for p in range(patients)
        for s in "LR"
        for v in ("CC", "MLO")
    ]
    return pd.DataFrame(rows)


def _images(n: int, seed: int = 0, shape=(32, 24)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy = np.linspace(0, 1, shape[0])[:, None]
    base = np.clip(1.2 - np.abs(np.linspace(-1, 1, shape[1]))[None, :] - 0.3 * yy, 0, 1)
    return np.clip(
        base[None] * rng.uniform(0.4, 1.0, (n, 1, 1)) + 0.05 * rng.random((n, *shape)), 0, 1
    ).astype(np.float32)


def _translator(seed: int = 0):
    torch.manual_seed(seed)
    return build_translator(CycleGanDescription(16, width=4, n_blocks=1, d_layers=1))


# ---- blending ---------------------------------------------------------------------------
def test_blend_alphas_are_zero_to_one_in_tenths():
    assert BLEND_ALPHAS == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def test_blending_end_points_midpoint_and_bounds():
    # Prepare
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 8, 6)), rng.random((3, 8, 6))
    # Execute / Assert
    assert np.array_equal(blend_styles(a, b, 0.0), a)
    assert np.array_equal(blend_styles(a, b, 1.0), b)
    assert np.allclose(blend_styles(a, b, 0.5), (a + b) / 2)
    for alpha in BLEND_ALPHAS:
        out = blend_styles(a, b, alpha)
        assert np.all(out >= np.minimum(a, b) - 1e-12) and np.all(out <= np.maximum(a, b) + 1e-12)
        assert np.allclose(blend_styles(b, a, 1 - alpha), out)  # symmetry
    per_image = blend_styles(a, b, np.array([0.0, 0.3, 1.0]))
    assert np.array_equal(per_image[0], a[0]) and np.array_equal(per_image[2], b[2])
    assert np.allclose(per_image[1], 0.7 * a[1] + 0.3 * b[1])
    torch_out = blend_styles(torch.from_numpy(a), torch.from_numpy(b), 0.3)
    assert np.allclose(torch_out.numpy(), blend_styles(a, b, 0.3))
    with pytest.raises(DataError, match="alpha"):
        blend_styles(a, b, 1.5)


def test_style_variants_blend_two_different_styles_with_a_grid_alpha():
    # Prepare: style s of every image is the constant s / 2 (three styles: 0, 0.5, 1)
    bank = np.broadcast_to(np.array([0.0, 0.5, 1.0])[None, :, None, None], (5, 3, 4, 4)).copy()
    allowed = {
        round(x * (1 - al) + y * al, 6)
        for x in (0, 0.5, 1)
        for y in (0, 0.5, 1)
        if x != y
        for al in BLEND_ALPHAS
    }
    # Execute
    variants = sample_style_variants(bank, np.arange(5).repeat(20), np.random.default_rng(0))
    # Assert: each variant is one constant image with a reachable blend value, and varied
    values = {round(float(v[0, 0]), 6) for v in variants}
    assert all(np.ptp(v) == 0 for v in variants)
    assert values <= allowed and len(values) > 3
    single = sample_style_variants(bank[:, :1], [0, 1], np.random.default_rng(0))
    assert np.array_equal(single, bank[[0, 1], 0])


# ---- CycleGAN translation ---------------------------------------------------------------
def test_translate_images_keeps_any_shape_and_matches_translate_on_squares():
    # Prepare
    gen = _translator()
    square = _images(3, shape=(16, 16))
    odd = _images(2, shape=(30, 22))
    # Execute
    out_square = translate_images(gen, square)
    out_odd = translate_images(gen, odd)
    # Assert
    assert np.allclose(out_square, translate(gen, square), atol=1e-6)
    assert out_odd.shape == odd.shape and out_odd.min() >= 0 and out_odd.max() <= 1
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        translate_images(gen, odd * 2)


def test_style_bank_stacks_own_style_first_then_sorted_translations():
    # Prepare
    images = _images(3)
    translators = {"C": _translator(1), "B": _translator(2)}
    # Execute
    bank = build_style_bank(images, translators, own_style="A")
    # Assert
    assert bank.styles == ("A", "B", "C") and bank.images.shape == (3, 3, 32, 24)
    assert np.array_equal(bank.images[:, 0], images)
    assert np.allclose(bank.images[:, 1], translate_images(translators["B"], images))
    with pytest.raises(DataError, match="own style"):
        build_style_bank(images, {"A": _translator()}, own_style="A")


def test_breast_tiles_hold_mostly_breast_and_translators_are_seeded():
    # Prepare
    images = _images(4)
    images[:, :, :8] = 0.0  # background strip
    # Execute
    tiles = breast_tiles(images, n=6, size=16, seed=0)
    first, steps = train_style_translators(
        tiles, {"B": tiles[::-1].copy()}, epochs=1, seed=3, batch_size=2, width=4, n_blocks=1
    )
    again, _ = train_style_translators(
        tiles, {"B": tiles[::-1].copy()}, epochs=1, seed=3, batch_size=2, width=4, n_blocks=1
    )
    # Assert
    assert tiles.shape == (6, 16, 16)
    assert all(np.mean(t < 0.05) <= 0.4 for t in tiles)
    assert list(first) == ["B"] and not first["B"].training
    assert steps == 3  # one epoch of 6 tiles in batches of 2
    for p, q in zip(first["B"].parameters(), again["B"].parameters(), strict=True):
        assert torch.equal(p, q)


# ---- pre-training -----------------------------------------------------------------------
def test_augment_views_are_seeded_in_range_and_identity_without_changes():
    x = torch.from_numpy(_images(4))[:, None]
    a = augment_views(x, torch.Generator().manual_seed(0))
    b = augment_views(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    same = augment_views(
        x, torch.Generator().manual_seed(0), min_crop=1.0, max_degrees=0.0, jitter=0.0
    )
    flipped = x.flip(-2)
    assert all(
        torch.allclose(s, o, atol=1e-5) or torch.allclose(s, f, atol=1e-5)
        for s, o, f in zip(same, x, flipped)
    )


def _pretrain(scheme: str, seed: int, bank: np.ndarray, **kw):
    torch.manual_seed(0)
    encoder = build_contrastive_encoder(arch="resnet_slim", width=8, projection_dim=16)
    options = {"scheme": scheme, "batch_size": 4, "seed": seed, **kw}
    return encoder, pretrain_contrastive(encoder, bank, _frame(), **options)


@pytest.mark.parametrize("scheme", ["simclr", "mscl", "mvcl", "msvcl"])
def test_pretraining_is_deterministic_given_the_seed(scheme):
    # Prepare
    images = _images(16)
    bank = np.stack([images, 1 - images], axis=1)
    # Execute
    _, first = _pretrain(scheme, 0, bank, steps_per_epoch=2)
    _, again = _pretrain(scheme, 0, bank, steps_per_epoch=2)
    _, other = _pretrain(scheme, 1, bank, steps_per_epoch=2)
    # Assert
    assert first.steps == 2 and first.num_examples == 2 * 8 * (2 if scheme == "msvcl" else 1)
    assert all(torch.equal(first.state[k], again.state[k]) for k in first.state)
    assert any(
        not torch.equal(first.state[k], other.state[k])
        for k in first.state
        if first.state[k].is_floating_point()
    )
    parts = {"mscl", "mvcl"} if scheme == "msvcl" else {scheme}
    assert set(first.history[0]) == {"epoch", "loss", *parts}
    if scheme == "msvcl":
        h = first.history[0]
        assert h["loss"] == pytest.approx(h["mscl"] + h["mvcl"], rel=1e-5)


def test_recorded_loss_is_the_nt_xent_of_the_whole_batch():
    # Prepare: one full batch (the loss does not depend on the order), no update (lr 0)
    images = _images(16, seed=1)
    encoder, result = _pretrain(
        "simclr", 0, images, batch_size=16, steps_per_epoch=1, lr=0.0, augment=False
    )
    ids = _frame()["image_id"].tolist() * 2
    pos, neg = contrastive_masks(patient=ids, image=ids, view=["CC"] * 32, scheme="simclr")
    # Execute
    with torch.no_grad():
        z = encoder.train()(torch.from_numpy(np.concatenate([images, images]))[:, None])
    expected = nt_xent_loss(z, torch.from_numpy(pos), torch.from_numpy(neg), tau=DEFAULT_TAU)
    # Assert
    assert result.loss == pytest.approx(float(expected), rel=1e-4)


def test_full_batch_pretraining_lowers_the_loss_step_by_step():
    # Execute: full-batch steps without augmentation are plain (deterministic) descent
    _, result = _pretrain(
        "simclr", 0, _images(16, seed=2), batch_size=16, epochs=6, steps_per_epoch=1, augment=False
    )
    # Assert
    losses = [h["loss"] for h in result.history]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] < 0.5 * losses[0]


def test_pretraining_refuses_dp_and_missing_styles_or_views():
    images = _images(16)
    encoder = build_contrastive_encoder(arch="resnet_slim", width=8)
    with pytest.raises(ConfigError, match="DP-SGD"):
        pretrain_contrastive(encoder, images, _frame(), scheme="simclr", privacy=object())
    with pytest.raises(DataError, match="2 styles"):
        pretrain_contrastive(encoder, images, _frame(), scheme="mscl")
    only_cc = _frame().assign(view="CC")
    with pytest.raises(DataError, match="CC and an MLO"):
        pretrain_contrastive(encoder, images, only_cc, scheme="mvcl")
    with pytest.raises(ConfigError, match="scheme"):
        pretrain_contrastive(encoder, images, _frame(), scheme="byol")


def test_encode_images_gives_backbone_features_and_restores_the_mode():
    encoder = build_contrastive_encoder(arch="resnet_slim", width=8).train()
    feats = encode_images(encoder, _images(5), batch_size=2)
    assert feats.shape == (5, 64) and encoder.training
    assert np.allclose(feats, encode_images(encoder, _images(5)), atol=1e-6)
