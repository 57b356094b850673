"""The report's own charts: one panel per centre up to MAX_CENTRE_PANELS, per-arm summaries
(box of the centres' values, mean curve with a percentile band) above it; the forest plot of
the paired AUROC differences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from fedmammo.evaluation.report_charts import (
    MAX_CENTRE_PANELS,
    MAX_FOREST_ROWS,
    learning_curves_figure,
    metric_bars_figure,
    paired_differences_figure,
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


def test_a_value_without_ci_or_sd_gets_no_whisker():
    # arm a: a CI; arm b: too few patients for one, one seed (no s.d.); arm c: a seed s.d.
    final = pd.DataFrame(
        {
            "arm": ["a", "b", "c"],
            "centre": ["c"] * 3,
            "segment": [None] * 3,
            "metric": ["auc"] * 3,
            "value": [0.80, 0.70, 0.60],
            "ci_low": [0.60, np.nan, np.nan],
            "ci_high": [0.90, np.nan, np.nan],
            "std": [np.nan, np.nan, 0.05],
        }
    )
    (ax,) = _visible(metric_bars_figure(final))
    (whiskers,) = [c for c in ax.collections if len(c.get_segments())]
    drawn = [tuple(np.round(s[:, 0], 6)) for s in whiskers.get_segments()]
    assert drawn == [(0.60, 0.90), (0.55, 0.65)]  # nothing at b
    caps = [line for line in ax.get_lines() if line.get_marker() == "|"]
    (xs,) = [line.get_xdata() for line in caps]
    assert sorted(np.round(xs, 6)) == [0.55, 0.6, 0.65, 0.9]


def test_one_round_gets_one_round_tick_and_arms_without_values_no_legend_entry():
    frame = _frame(2, rounds=1)
    empty = frame[(frame["arm"] == "local") & (frame["round"] == 1)].index
    frame.loc[empty, "value"] = np.nan  # e.g. an AUROC of a validation set of one class
    fig = learning_curves_figure(frame, metrics=("auc",))
    for ax in _visible(fig):
        assert list(ax.get_xticks()) == [1.0]
        assert ax.get_xlim() == (0.5, 1.5)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["federated"]
    frame.loc[frame["round"] == 1, "value"] = np.nan
    assert learning_curves_figure(frame, metrics=("auc",)) is None  # nothing computed


def _final(rows) -> pd.DataFrame:
    """final_records-like rows: (arm, centre, segment, metric, value, ci_low, ci_high, std)."""
    columns = ["arm", "centre", "segment", "metric", "value", "ci_low", "ci_high", "std"]
    return pd.DataFrame(rows, columns=columns)


def _forest(ax):
    """(tick labels, point x, point colours, CI segments) of a forest panel."""
    (points,) = ax.collections[1:]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    colours = [to_hex(c) for c in points.get_facecolors()]
    segments = [  # a row without a CI has an empty segment
        tuple(np.round(s[:, 0], 6)) if s.ndim == 2 else () for s in ax.collections[0].get_segments()
    ]
    return labels, list(np.round(points.get_offsets()[:, 0], 6)), colours, segments


def test_the_forest_plot_draws_each_difference_with_its_ci_coloured_by_the_tables_rule():
    # Prepare: FedAvg-like records: against local at a, b (above, holding 0), against pooled
    # at a, b, t, u (below, holding, no CI, below 0 but p 0.10 from a skewed CI)
    final = _final(
        [
            ("federated", "a", "", "delta_auc", 0.10, 0.02, 0.18, None),
            ("federated", "a", "", "p_value", 0.01, None, None, None),
            ("federated", "b", "", "delta_auc", 0.01, -0.05, 0.07, None),
            ("federated", "b", "", "p_value", 0.70, None, None, None),
            ("federated", "a", "", "delta_auc_vs_pooled", -0.20, -0.30, -0.10, None),
            ("federated", "a", "", "p_value_vs_pooled", 0.001, None, None, None),
            ("federated", "b", "", "delta_auc_vs_pooled", 0.00, -0.02, 0.03, None),
            ("federated", "t", "", "delta_auc_vs_pooled", -0.05, None, None, None),
            ("federated", "u", "", "delta_auc_vs_pooled", -0.12, -0.377, -0.002, None),
            ("federated", "u", "", "p_value_vs_pooled", 0.10, None, None, None),
            ("federated", "a", "", "auc", 0.90, 0.80, 0.95, None),
        ]
    )
    segments = _final([("federated", "a", "S-Ma", "delta_auc", 0.5, 0.4, 0.6, None)])
    # Execute
    fig = paired_differences_figure(final, segments)
    # Assert: a panel per difference, the whole-centre rows only (segments are in the tables)
    local, pooled = _visible(fig)
    assert (local.get_title(), pooled.get_title()) == (
        "against each arm's reference",
        "against pooled",
    )
    green, red, grey = "#2ca02c", "#d62728", "#7f7f7f"
    assert _forest(local) == (
        ["federated @ a", "federated @ b"],
        [0.10, 0.01],
        [green, grey],
        [(0.02, 0.18), (-0.05, 0.07)],
    )
    assert _forest(pooled) == (  # u: the CI lies below 0, but p >= 0.05: not a loss
        ["federated @ a", "federated @ b", "federated @ t", "federated @ u"],
        [-0.20, 0.0, -0.05, -0.12],
        [red, grey, grey, grey],
        [(-0.30, -0.10), (-0.02, 0.03), (), (-0.377, -0.002)],
    )
    assert [line.get_xdata()[0] for line in local.get_lines()] == [0.0]  # the line at 0


def test_differences_recorded_only_per_segment_get_a_row_per_segment_and_seeds_their_sd():
    # Prepare: periodic-sampling-like records, per test segment only, averaged over seeds
    final = _final([("m", "s3", "", "auc", 0.8, None, None, 0.01)])
    segments = _final(
        [
            ("m", "s3", "S3-Ma", "delta_auc", 0.10, None, None, 0.02),
            ("m", "s3", "S3-Mb", "delta_auc", -0.04, None, None, 0.03),
        ]
    )
    # Execute
    fig = paired_differences_figure(final, segments)
    # Assert: +- the seed s.d., grey (an s.d. is no CI, whatever side of 0 it lies)
    (ax,) = _visible(fig)
    labels, x, colours, spans = _forest(ax)
    assert labels == ["m @ s3 (S3-Ma)", "m @ s3 (S3-Mb)"] and x == [0.10, -0.04]
    assert spans == [(0.08, 0.12), (-0.07, -0.01)]
    assert colours == ["#7f7f7f"] * 2


def test_no_difference_or_too_many_draws_no_forest():
    empty = _final([])
    assert (
        paired_differences_figure(_final([("a", "c", "", "auc", 0.7, 0.6, 0.8, None)]), empty)
        is None
    )
    many = _final(
        [("a", f"c{i}", "", "delta_auc", 0.0, -0.1, 0.1, None) for i in range(MAX_FOREST_ROWS + 1)]
    )
    assert paired_differences_figure(many, empty) is None
    assert paired_differences_figure(many[:MAX_FOREST_ROWS], empty) is not None
