"""Tests of fedmammo.evaluation.plots: valid PNG files and the data behind each plot."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from fedmammo.errors import DataError
from fedmammo.evaluation import plots as plots_module
from fedmammo.evaluation.metrics import operating_points
from fedmammo.evaluation.plots import (
    ROC_PANELS_PER_ROW,
    histogram_xlabel,
    learning_curve_series,
    plot_learning_curves,
    plot_prediction_histograms,
    plot_roc_panels,
    prediction_histogram_data,
    roc_curve_data,
)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _data(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    score = np.clip(0.3 + 0.35 * y + rng.normal(scale=0.2, size=n), 0, 1)
    segments = np.where(rng.random(n) < 0.5, "S1-Ma", "S2-Ma")
    return y, score, segments


def test_roc_curve_data_is_the_sklearn_curve_with_operating_points():
    # Prepare
    y, score, _ = _data()

    # Execute
    data = roc_curve_data(y, score)

    # Assert
    fpr, tpr, _ = roc_curve(y, score, drop_intermediate=False)
    np.testing.assert_allclose(data["fpr"], fpr)
    np.testing.assert_allclose(data["tpr"], tpr)
    assert data["auc"] == pytest.approx(roc_auc_score(y, score))
    assert data["points"] == operating_points(y, score)
    assert roc_curve_data([0, 0], [0.1, 0.2]) is None


def test_plot_roc_writes_a_png_with_global_and_segment_curves(tmp_path):
    # Prepare
    y, score, segments = _data()
    curves = {"global": (y, score)}
    curves |= {s: (y[segments == s], score[segments == s]) for s in ("S1-Ma", "S2-Ma")}
    curves["benign-only"] = (np.zeros(5, int), np.full(5, 0.3))  # skipped, no crash

    # Execute
    path = plot_roc_panels({"P. sampling": curves}, tmp_path / "plots" / "roc.png")

    # Assert
    assert path == tmp_path / "plots" / "roc.png"
    width, height = _png_size(path)
    assert 300 <= width <= 2000 and 300 <= height <= 2000


def _capture_figures(monkeypatch) -> list:
    """The figures the plots module saves, in order (each is still written)."""
    figures = []
    save = plots_module._save

    def capture(fig, path, dpi):
        figures.append(fig)
        return save(fig, path, dpi)

    monkeypatch.setattr(plots_module, "_save", capture)
    return figures


def test_plot_roc_panels_draws_one_panel_per_model(tmp_path):
    # Prepare
    y, score, _ = _data()
    panels = {arm: {"global": (y, score)} for arm in ("Bal. labels", "Bal. segments", "P. s.")}

    # Execute
    width3, height3 = _png_size(plot_roc_panels(panels, tmp_path / "three.png"))
    width1, height1 = _png_size(plot_roc_panels({"one": panels["P. s."]}, tmp_path / "one.png"))

    # Assert: up to 4 panels side by side, one row
    assert width3 == pytest.approx(3 * width1, rel=0.05)
    assert height3 == pytest.approx(height1, rel=0.05)


def test_plot_roc_panels_wraps_at_four_per_row_and_hides_unused_axes(tmp_path, monkeypatch):
    # Prepare: 7 models, as periodic sampling's test figures have
    figures = _capture_figures(monkeypatch)
    y, score, _ = _data()
    names = [f"arm{k}" for k in range(7)]
    panels = {name: {"global": (y, score)} for name in names}

    # Execute
    width7, height7 = _png_size(plot_roc_panels(panels, tmp_path / "seven.png"))
    width1, height1 = _png_size(plot_roc_panels({"one": panels["arm0"]}, tmp_path / "one.png"))

    # Assert: a 2 x 4 grid, the 8th axis hidden, panels in order, every legend with its AUROC
    assert ROC_PANELS_PER_ROW == 4
    assert width7 == pytest.approx(4 * width1, rel=0.05)
    assert height7 == pytest.approx(2 * height1, rel=0.05)
    axes = figures[0].axes
    assert axes[0].get_subplotspec().get_geometry()[:2] == (2, 4)
    shown = [ax for ax in axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == names
    assert len(axes) == 8 and not axes[7].get_visible()
    auc = f"{roc_auc_score(y, score):.3f}"
    assert all(
        f"global ({auc})" in [t.get_text() for t in ax.get_legend().get_texts()] for ax in shown
    )


def _history() -> pd.DataFrame:
    rows = []
    for arm, base in (("Bal. labels", 0.9), ("P. sampling", 0.7)):
        for step in (300, 100, 200):  # unsorted on purpose
            for segment in (None, "S1-Ma", "S2-Ma"):
                rows.append(
                    {
                        "arm": arm,
                        "step": step,
                        "segment": segment,
                        "metric": "wll",
                        "value": base - step / 1000,
                    }
                )
                rows.append(
                    {
                        "arm": arm,
                        "step": step,
                        "segment": segment,
                        "metric": "auc",
                        "value": 0.5 + step / 1000,
                    }
                )
    return pd.DataFrame(rows)


def test_learning_curve_series_groups_by_metric_scope_and_arm():
    # Execute
    series = learning_curve_series(_history())

    # Assert
    assert set(series) == {(m, s) for m in ("auc", "wll") for s in ("global", "S1-Ma", "S2-Ma")}
    steps, values = series[("wll", "global")]["P. sampling"]
    np.testing.assert_allclose(steps, [100, 200, 300])
    np.testing.assert_allclose(values, [0.6, 0.5, 0.4])
    assert set(series[("auc", "S2-Ma")]) == {"Bal. labels", "P. sampling"}


def test_plot_learning_curves_writes_a_grid_png(tmp_path):
    # Execute
    path = plot_learning_curves(_history(), tmp_path / "curves.png", xlabel="round")

    # Assert: 3 scopes x 2 metrics -> wider than tall
    width, height = _png_size(path)
    assert width > height >= 400
    with pytest.raises(DataError, match="lacks columns \\['metric'\\]"):
        plot_learning_curves(_history().drop(columns="metric"), tmp_path / "x.png")


def test_prediction_histograms_count_each_segment_and_label(tmp_path, monkeypatch):
    # Prepare
    y, score, segments = _data(300, seed=1)

    # Execute
    edges, data = prediction_histogram_data(y, score, segments, bins=10)
    figures = _capture_figures(monkeypatch)
    path = plot_prediction_histograms(y, score, segments, tmp_path / "hist.png", bins=10)

    # Assert
    np.testing.assert_allclose(edges, np.linspace(0, 1, 11))
    for segment in ("S1-Ma", "S2-Ma"):
        for label in (0, 1):
            mask = (segments == segment) & (y == label)
            assert data[segment][label].sum() == mask.sum()
            np.testing.assert_array_equal(
                data[segment][label], np.histogram(score[mask], bins=edges)[0]
            )
    width, height = _png_size(path)
    assert width >= 500 and height >= 200
    # densities, over bins the x label states
    for ax in figures[0].axes:
        assert ax.get_ylabel() == "density"
        assert ax.get_xlabel() == "predicted probability (10 bins over [0, 1])"


def test_histogram_xlabel_names_the_bins_span():
    assert histogram_xlabel(np.linspace(0, 1, 21)) == "predicted probability (20 bins over [0, 1])"
    # scores that are not probabilities are binned over their range, and named scores
    assert histogram_xlabel(np.linspace(-2.5, 3.5, 7)) == "score (6 bins over [-2.5, 3.5])"
