"""2-D maps of latent codes and the Figure-6 grid written by a centre."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fedmammo.errors import ConfigError, DataError
from fedmammo.evaluation.latent import embed_2d, plot_latent


@pytest.fixture()
def codes():
    rng = np.random.default_rng(0)
    return {"single_task": rng.normal(size=(30, 8)), "mtl": rng.normal(size=(30, 16))}


def test_pca_keeps_the_main_direction_and_is_deterministic():
    # Prepare: points along one direction plus a little noise
    rng = np.random.default_rng(1)
    direction = rng.normal(size=6)
    z = np.outer(rng.normal(size=40), direction) + 0.01 * rng.normal(size=(40, 6))
    # Execute
    xy = embed_2d(z, method="pca")
    # Assert
    assert xy.shape == (40, 2)
    assert np.array_equal(xy, embed_2d(z, method="pca"))
    assert xy[:, 0].var() > 100 * xy[:, 1].var()


def test_tsne_gives_two_coordinates_per_image(codes):
    # Execute
    xy = embed_2d(codes["mtl"], method="tsne", seed=3)
    # Assert
    assert xy.shape == (30, 2) and np.all(np.isfinite(xy))
    assert np.allclose(xy, embed_2d(codes["mtl"], method="tsne", seed=3))


@pytest.mark.parametrize(
    ("z", "method", "error", "match"),
    [
        (np.zeros((2, 4)), "pca", DataError, "N >= 3"),
        (np.full((5, 4), np.nan), "pca", DataError, "NaN"),
        (np.zeros((5, 4)), "umap", ConfigError, "valid: pca, tsne"),
    ],
)
def test_bad_codes_or_method_are_refused(z, method, error, match):
    with pytest.raises(error, match=match):
        embed_2d(z, method=method)


def test_grid_has_one_row_per_labelled_task_and_one_column_per_model(codes, tmp_path):
    # Prepare
    rng = np.random.default_rng(2)
    labels = {
        "malignancy": rng.integers(-1, 2, 30),
        "view": rng.integers(0, 2, 30),
        "density": rng.integers(-1, 4, 30),
        "acr": rng.integers(0, 6, 30),
    }
    # Execute
    full = plot_latent(codes, labels, tmp_path / "plots" / "full.png")
    one = plot_latent(
        {"mtl": codes["mtl"]}, {"malignancy": labels["malignancy"]}, tmp_path / "one.png"
    )
    # Assert: 3 task rows x 2 model columns vs 1 x 1 (ACR has no row)
    (w_full, h_full), (w_one, h_one) = Image.open(full).size, Image.open(one).size
    assert w_full == pytest.approx(2 * w_one, rel=0.05)
    assert h_full == pytest.approx(3 * h_one, rel=0.05)


def test_lengths_must_agree(codes, tmp_path):
    with pytest.raises(DataError, match="lengths differ"):
        plot_latent(codes, {"view": np.zeros(29, dtype=int)}, tmp_path / "x.png")
