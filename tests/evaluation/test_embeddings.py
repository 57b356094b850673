"""Embedding maps by vendor and the vendor silhouette."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fedmammo.errors import DataError
from fedmammo.evaluation.embeddings import plot_embeddings_by_vendor, vendor_silhouette


def _clusters(separated: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    vendors = np.repeat(["A", "B", "C"], 12)
    centres = {"A": [5, 0, 0, 0], "B": [0, 5, 0, 0], "C": [0, 0, 5, 0]}
    z = rng.normal(size=(36, 4))
    if separated:
        z += np.array([centres[v] for v in vendors])
    return z, vendors


def test_silhouette_is_high_for_vendor_clusters_and_near_zero_when_mixed():
    assert vendor_silhouette(*_clusters(True)) > 0.6
    assert abs(vendor_silhouette(*_clusters(False))) < 0.1
    assert np.isnan(vendor_silhouette(np.ones((4, 2)), ["A"] * 4))


def test_plot_writes_one_panel_per_encoder_and_returns_deterministic_points(tmp_path):
    # Prepare
    separated, vendors = _clusters(True)
    mixed, _ = _clusters(False)
    embeddings = {"random init": mixed, "MSVCL": separated}
    # Execute
    points = plot_embeddings_by_vendor(embeddings, vendors, tmp_path / "tsne.png", seed=0)
    again = plot_embeddings_by_vendor(embeddings, vendors, tmp_path / "again.png", seed=0)
    # Assert
    assert list(points) == ["random init", "MSVCL"] and points["MSVCL"].shape == (36, 2)
    assert np.allclose(points["MSVCL"], again["MSVCL"])
    with Image.open(tmp_path / "tsne.png") as png:
        assert png.format == "PNG" and png.size[0] > png.size[1]
    with pytest.raises(DataError, match="lengths differ"):
        plot_embeddings_by_vendor(embeddings, vendors[:5], tmp_path / "x.png")
