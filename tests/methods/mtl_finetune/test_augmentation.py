"""The multi-task paper's zoom / translation / vertical-flip augmentation: as configured, and
only in training."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from fedmammo.methods.mtl_finetune import client as handlers
from fedmammo.methods.mtl_finetune.params import MtlFinetuneParams, parse_arm
from fedmammo.methods.mtl_finetune.server import arm_config
from fedmammo.training.mtl import mtl_augmentation


def _square(size=32, side=8) -> torch.Tensor:
    x = torch.zeros(1, size, size)
    lo = (size - side) // 2
    x[:, lo : lo + side, lo : lo + side] = 1.0
    return x


def test_zoom_scales_the_image_about_its_centre():
    # Prepare: an 8 x 8 square in a 32 x 32 image, zoom fixed at 2 and always applied
    x = _square()
    zoom = mtl_augmentation(p=1.0, zoom=(2.0, 2.0), translate=0.0, vertical_flip=False)
    # Execute
    torch.manual_seed(0)
    y = zoom(x)
    # Assert: the square is now about 16 x 16, still centred, same shape
    assert y.shape == x.shape
    bright = (y > 0.5).nonzero()[:, 1:]
    assert (y > 0.5).sum() == pytest.approx(256, abs=40)
    assert bright.float().mean(0).tolist() == pytest.approx([15.5, 15.5], abs=1.0)


def test_probability_zero_is_the_identity_and_flip_alone_flips():
    # Prepare
    x = torch.rand(1, 16, 12)
    off = mtl_augmentation(p=0.0)
    flip = mtl_augmentation(p=1.0, zoom=(1.0, 1.0), translate=0.0, vertical_flip=True)
    # Execute / Assert
    assert torch.equal(off(x), x)
    assert torch.equal(flip(x), x.flip(-2))


def test_translation_moves_within_the_configured_range():
    # Prepare
    x = _square()
    shift = mtl_augmentation(p=1.0, zoom=(1.0, 1.0), translate=0.25, vertical_flip=False)
    torch.manual_seed(1)
    # Execute
    centres = [(shift(x) > 0.5).nonzero()[:, 1:].float().mean(0) for _ in range(20)]
    # Assert: up to 0.25 x 32 = 8 pixels each way, and it does move
    moved = torch.stack(centres) - 15.5
    assert moved.abs().max() <= 8.5 and moved.abs().max() > 1


def test_each_technique_applies_with_probability_p():
    # Prepare: flip only, p = 0.5, over many draws
    x = torch.arange(16.0).reshape(1, 4, 4)
    flip = mtl_augmentation(p=0.5, zoom=(1.0, 1.0), translate=0.0, vertical_flip=True)
    torch.manual_seed(2)
    # Execute
    flipped = sum(torch.equal(flip(x), x.flip(-2)) for _ in range(400))
    # Assert
    assert 150 < flipped < 250


def test_recipe_default_and_validation():
    # Execute
    p = MtlFinetuneParams()
    config = arm_config(p, parse_arm("mtl"), seed=0)
    # Assert: the paper's p = 0.5 per technique; zoom 0.8-1.2 and 10 % shifts by default
    assert config["augmentation"] == {
        "p": 0.5,
        "zoom": (0.8, 1.2),
        "translate": 0.1,
        "vertical_flip": True,
    }
    assert MtlFinetuneParams(augmentation={"zoom": [1.0, 1.5]}).augmentation.zoom == (1.0, 1.5)
    with pytest.raises(ValidationError, match="zoom"):
        MtlFinetuneParams(augmentation={"zoom": [1.2, 0.8]})
    with pytest.raises(ValidationError, match="shear"):
        MtlFinetuneParams(augmentation={"shear": 5})


class _Data:
    """What mtl_loader reads of a centre's data: the image cache array."""

    class cache:  # noqa: N801
        array = torch.rand(6, 16, 12).numpy()


def test_loader_augments_only_when_training_asks():
    # Prepare
    rows = torch.arange(6).numpy()
    targets = {"malignancy": torch.zeros(6, dtype=torch.int64).numpy()}
    unc = {"malignancy": torch.zeros(6).numpy()}
    options = {"p": 1.0, "zoom": (1.0, 1.0), "translate": 0.0, "vertical_flip": True}
    # Execute: the training handler's loader (augment on) and the evaluation's (default)
    train = handlers.mtl_loader(
        _Data, rows, targets, unc, batch_size=6, augment=True, augmentation=options
    )
    evaluate = handlers.mtl_loader(_Data, rows, targets, unc, batch_size=6)
    # Assert: every training image flipped (p = 1), every evaluation image as stored
    x_train, x_eval = next(iter(train))[0], next(iter(evaluate))[0]
    stored = torch.as_tensor(_Data.cache.array)[:, None]
    assert torch.equal(x_eval, stored)
    assert torch.equal(x_train, stored.flip(-2))
