"""The report's own charts: one panel per centre up to MAX_CENTRE_PANELS, per-arm summaries
(box of the centres' values, mean curve with a percentile band) above it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedmammo.evaluation.report_charts import (
    MAX_CENTRE_PANELS,
    learning_curves_figure,
    metric_bars_figure,
)

ARMS = ("federated", "local")


def _frame(n_centres: int, rounds: int = 3, seeds: int = 1) -> pd.DataFrame:
    """Validation AUC per round and final test AUC, centre i of arm k: 0.5 + 0.01 i + 0.1 k."""
    rows = []
    for k, arm in enumerate(ARMS):
        for i in range(n_centres):
            for seed in range(seeds):
                base = 0.5 + 0.01 * i + 0.1 * k + 0.002 * seed
                for rnd in range(1, rounds + 1):
                    rows.append((arm, seed, f"c{i:03d}", "val", "auc", base + 0.01 * rnd, rnd))
                rows.append((arm, seed, f"c{i:03d}", "test", "auc", base, None))
    frame = pd.DataFrame(
        rows, columns=["arm", "seed", "centre", "split", "metric", "value", "round"]
    )
    return frame.assign(segment=None, ci_low=np.nan, ci_high=np.nan, std=np.nan)


def _visible(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def test_up_to_the_limit_each_centre_has_its_own_panel():
    frame = _frame(MAX_CENTRE_PANELS)
    curves = learning_curves_figure(frame, metrics=("auc",))
    assert [ax.get_title() for ax in _visible(curves)] == [f"c{i:03d}" for i in range(12)]
    bars = metric_bars_figure(frame[frame["split"] == "test"])
    assert len(_visible(bars)) == MAX_CENTRE_PANELS


def test_above_the_limit_curves_show_each_arms_mean_and_band_over_centres():
    n = 40
    frame = _frame(n, rounds=3, seeds=2)
    fig = learning_curves_figure(frame, metrics=("auc",))
    axes = _visible(fig)
    assert [ax.get_title() for ax in axes] == list(ARMS)  # one panel per arm, not per centre
    for k, ax in enumerate(axes):
        (line,) = ax.get_lines()
        # seeds averaged per centre first, then the mean over centres, per round
        centre_values = 0.5 + 0.01 * np.arange(n) + 0.1 * k + 0.001
        expected = [centre_values.mean() + 0.01 * r for r in (1, 2, 3)]
        np.testing.assert_allclose(line.get_ydata(), expected, atol=1e-9)
        np.testing.assert_array_equal(line.get_xdata(), [1.0, 2.0, 3.0])
        (band,) = ax.collections
        lows = band.get_paths()[0].vertices[:, 1]
        assert lows.min() == pytest.approx(np.quantile(centre_values, 0.1) + 0.01, abs=1e-9)
        assert lows.max() == pytest.approx(np.quantile(centre_values, 0.9) + 0.03, abs=1e-9)
    assert "40 evaluating centres" in fig.texts[0].get_text()


def test_above_the_limit_bars_become_one_box_per_arm_of_the_centres_values():
    n = 30
    final = _frame(n, seeds=2)
    final = final[final["split"] == "test"]
    fig = metric_bars_figure(final)
    (ax,) = _visible(fig)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(ARMS)
    medians = [line for line in ax.get_lines() if line.get_gid() == "median"]
    assert len(medians) == len(ARMS)
    for k, median in enumerate(medians):
        values = 0.5 + 0.01 * np.arange(n) + 0.1 * k + 0.001  # seeds averaged per centre
        assert median.get_xdata()[0] == pytest.approx(np.median(values), abs=1e-9)
    assert "30 evaluating centres" in fig.texts[0].get_text()


def test_nothing_to_draw_is_none():
    frame = _frame(3)
    assert learning_curves_figure(frame[frame["round"].isna()]) is None
    assert metric_bars_figure(frame, metric="wll") is None


def test_a_ci_that_does_not_hold_its_value_is_drawn_as_it_is():
    # A patient-level percentile CI can lie wholly below (or above) the full-set AUROC; the
    # bars drew value +- (value - low, high - value) and matplotlib refused a negative error
    final = pd.DataFrame(
        {
            "arm": ["a", "b"],
            "centre": ["c", "c"],
            "segment": [None, None],
            "metric": ["auc", "auc"],
            "value": [0.80, 0.70],
            "ci_low": [0.60, 0.50],
            "ci_high": [0.75, 0.90],
            "std": [np.nan, np.nan],
        }
    )
    fig = metric_bars_figure(final)
    (ax,) = _visible(fig)
    (segments,) = [c for c in ax.collections if len(c.get_segments()) == 2]
    drawn = [tuple(np.round(s[:, 0], 6)) for s in segments.get_segments()]
    assert drawn == [(0.60, 0.75), (0.50, 0.90)]
