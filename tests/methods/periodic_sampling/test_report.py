"""Tests of the periodic-sampling report: Tables 2-4 layout, histories, centre plots."""

from __future__ import annotations

import ast
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedmammo.evaluation import plots as plots_module
from fedmammo.evaluation.html_parts import markdown_html
from fedmammo.evaluation.results import RunRecorder
from fedmammo.methods.periodic_sampling import report as periodic_report
from fedmammo.methods.periodic_sampling.report import (
    TABLE_COLUMNS,
    comparison_table,
    draw_centre_plots,
    figures_note,
    learning_history,
    plot_arm_learning_curves,
    tables_markdown,
)

ARMS = {
    "e1-federated-periodic": {
        "experiment": "e1",
        "setting": "federated",
        "method": "periodic",
        "weighting": "quota",
        "label": "P. sampling",
    },
    "e1-pooled-periodic": {
        "experiment": "e1",
        "setting": "pooled",
        "method": "periodic",
        "weighting": None,
        "label": "P. sampling",
    },
    "e1-pooled-balanced_labels": {
        "experiment": "e1",
        "setting": "pooled",
        "method": "balanced_labels",
        "weighting": None,
        "label": "Bal. labels",
    },
    "e2-pooled-periodic": {
        "experiment": "e2",
        "setting": "pooled",
        "method": "periodic",
        "weighting": None,
        "label": "P. sampling",
    },
    "baseline-S1-Ma": {
        "experiment": None,
        "setting": "baseline",
        "method": "balanced_labels",
        "weighting": None,
        "label": "baseline (S1-Ma)",
    },
}


def _frame(tmp_path: Path) -> pd.DataFrame:
    rec = RunRecorder(tmp_path)
    for k, arm in enumerate(
        [
            "e1-federated-periodic",
            "e1-pooled-periodic",
            "e1-pooled-balanced_labels",
            "e2-pooled-periodic",
        ]
    ):
        for segment, centre in (("S3-Ma", "s3"), ("S4-Mc", "s4")):
            auc = 0.70 + 0.01 * k
            rec.add(
                [
                    {
                        "segment": segment,
                        "metric": "auc",
                        "value": auc,
                        "ci_low": auc - 0.05,
                        "ci_high": auc + 0.05,
                    },
                    {
                        "segment": segment,
                        "metric": "baseline_auc",
                        "value": 0.6,
                        "ci_low": 0.55,
                        "ci_high": 0.65,
                    },
                    {
                        "segment": segment,
                        "metric": "delta_auc",
                        "value": auc - 0.6,
                        "ci_low": auc - 0.62,
                        "ci_high": auc - 0.58,
                    },
                    {"segment": segment, "metric": "p_value", "value": 0.00001 if k else 0.2},
                    {"segment": None, "metric": "auc", "value": 0.5},
                ],
                arm=arm,
                seed=0,
                centre=centre,
                split="test",
            )
        # validation at the pooled node (simulation) or at each centre (deployment)
        sites = {"pooled": ["S1-Ma", "S2-Ma"]} if k else {"s1": ["S1-Ma"], "s2": ["S2-Ma"]}
        for rnd in (1, 2):
            for centre, segments in sites.items():
                records = [{"segment": None, "metric": "wll", "value": 0.7 - 0.1 * rnd}]
                for segment in segments:
                    records += [
                        {"segment": segment, "metric": "auc", "value": 0.5 + 0.1 * rnd},
                        {"segment": segment, "metric": "f1", "value": 0.1},
                    ]
                rec.add(records, arm=arm, seed=0, centre=centre, split="val", round=rnd)
    return rec.frame()


def test_comparison_table_has_one_row_per_arm_of_the_experiment_in_paper_order(tmp_path):
    # Prepare
    frame = _frame(tmp_path)
    # Execute
    tables = comparison_table(frame, ARMS, experiment="e1", seed=0, segments=["S3-Ma", "S4-Mc"])
    # Assert: pooled before federated, Bal. labels before P. sampling; other experiments apart
    assert list(tables) == ["S3-Ma", "S4-Mc"]
    rows = tables["S3-Ma"]
    assert [r["arm"] for r in rows] == [
        "e1-pooled-balanced_labels",
        "e1-pooled-periodic",
        "e1-federated-periodic",
    ]
    first = rows[0]
    assert {c: first[c] for c in TABLE_COLUMNS} == {
        "AUC baseline": "60.00 (55.00, 65.00)",
        "Setting": "pooled",
        "Method": "Bal. labels",
        "AUC": "72.00 (67.00, 77.00)",
        "ΔAUC": "12.00 (10.00, 14.00)",
        "p-value": "< 0.0001",
    }
    assert rows[2]["p-value"] == "0.2000" and rows[2]["centre"] == "s3"
    assert rows[2]["delta"] == pytest.approx(0.10) and rows[2]["delta_low"] == pytest.approx(0.08)


def test_comparison_table_skips_segments_without_records(tmp_path):
    frame = _frame(tmp_path)
    tables = comparison_table(frame, ARMS, experiment="e2", seed=0, segments=["S3-Ma", "S5-Mc"])
    assert list(tables) == ["S3-Ma"] and len(tables["S3-Ma"]) == 1
    assert comparison_table(frame, ARMS, experiment="e1", seed=1) == {}


def test_tables_markdown_has_a_section_per_experiment_and_a_table_per_segment(tmp_path):
    # Prepare
    frame = _frame(tmp_path)
    tables = {e: {0: comparison_table(frame, ARMS, experiment=e, seed=0)} for e in ("e1", "e2")}
    # Execute
    text = tables_markdown(tables, {"e1": ["S1-Ma", "S2-Ma"], "e2": ["S1-Ma"]})
    # Assert
    assert "### Experiment e1 (training segments (S1, Ma) + (S2, Ma))" in text
    assert text.count("**(S3, Ma)**") == 2 and text.count("**(S4, Mc)**") == 2
    header = "| " + " | ".join(TABLE_COLUMNS) + " |"
    assert text.count(header) == 4
    assert "| 60.00 (55.00, 65.00) | federated | P. sampling | 70.00 (65.00, 75.00) |" in text
    assert "stopped early" not in text


def test_tables_markdown_lists_the_arms_that_stopped_early(tmp_path):
    # Prepare: the stop line a round below min_centres records (rounds.round_outcome)
    tables = {"e1": {0: comparison_table(_frame(tmp_path), ARMS, experiment="e1", seed=0)}}
    line = (
        "arm e1-federated-periodic seed 0: stopped at round 1: 1 of 2 centres sent an update, "
        "fewer than min_centres=2 (none from s1, whose reasons are in the failures); completed "
        "rounds kept"
    )
    # Execute
    text = tables_markdown(tables, {"e1": ["S1-Ma"]}, [line])
    # Assert: before the experiments, saying why rows and a baseline's comparisons are missing
    intro, rest = text.split("### Experiment e1", 1)
    assert f"\n- {line}\n" in intro and "their rows are missing" in intro
    assert "a stopped baseline leaves its segments' baseline, ΔAUC and p-value n/a" in intro


def test_learning_history_converts_rounds_to_steps_and_keeps_only_true_global_metrics(tmp_path):
    # Prepare: e1-federated-periodic was validated at two centres, the others at the pooled node
    frame = _frame(tmp_path)
    arms = {a: ARMS[a] for a in ("e1-pooled-periodic", "e1-federated-periodic")}
    # Execute
    history = learning_history(frame, arms, seed=0, steps_per_round=10)
    # Assert
    assert list(history.columns) == ["step", "segment", "metric", "value", "arm"]
    assert set(history["metric"]) == {"wll", "auc"}  # f1 dropped
    assert sorted(set(history["step"])) == [10.0, 20.0]
    assert set(history["arm"]) == {"P. sampling"}  # both arms carry this label
    pooled = history[history["segment"].isna()]
    assert len(pooled) == 2  # global wll of the pooled arm only, one per round
    local = history[history["segment"].notna()]
    assert len(local) == 2 * 2 * 2  # arms x rounds x segments
    assert sorted(set(local["segment"])) == ["S1-Ma", "S2-Ma"]
    out = plot_arm_learning_curves(frame, arms, tmp_path / "lc.png", seed=0, steps_per_round=10)
    assert out is not None and out.stat().st_size > 0
    assert (
        plot_arm_learning_curves(frame, arms, tmp_path / "x.png", seed=5, steps_per_round=10)
        is None
    )


def test_draw_centre_plots_writes_roc_and_histogram_files(tmp_path):
    # Prepare
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30, int), np.ones(10, int)]
    segments = np.array(["A", "B"] * 20)
    scores = {"m1": rng.random(40), "m2": np.clip(0.3 + 0.4 * y + 0.1 * rng.random(40), 0, 1)}
    # Execute
    paths = draw_centre_plots(y, scores, segments, tmp_path / "plots", "test_e1", title="t")
    # Assert
    assert [p.name for p in paths] == ["test_e1_roc.png", "test_e1_hist.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_centre_plots_wrap_the_roc_panels_and_label_the_histograms(tmp_path, monkeypatch):
    # Prepare: 7 models (as a periodic-sampling experiment tests), two segments
    saved = {}
    save = plots_module._save  # periodic_report's is the same function

    def capture(fig, path, dpi):
        saved[path.name] = fig
        return save(fig, path, dpi)

    for module in (plots_module, periodic_report):  # the ROC's saver, the histograms'
        monkeypatch.setattr(module, "_save", capture)
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30, int), np.ones(10, int)]
    segments = np.array(["A", "B"] * 20)
    scores = {f"m{k}": np.clip(0.45 + 0.05 * rng.random(40), 0, 1) for k in range(7)}
    # Execute
    draw_centre_plots(y, scores, segments, tmp_path / "plots", "test_e1")
    # Assert: the ROC panels in rows of 4 (2 x 4, the last axis hidden)
    roc = saved["test_e1_roc.png"].axes
    assert roc[0].get_subplotspec().get_geometry()[:2] == (2, 4)
    assert [ax.get_title() for ax in roc if ax.get_visible()] == list(scores)
    # the histograms: densities over fixed [0, 1] bins, which the x label says
    hist = saved["test_e1_hist.png"].axes
    assert len(hist) == 7 * 2
    assert {ax.get_ylabel() for ax in hist} == {"density"}
    assert {ax.get_xlabel() for ax in hist} == {"predicted probability (20 bins over [0, 1])"}


def test_the_figures_note_keeps_its_file_patterns_underscores_in_report_html():
    # Prepare: the note as results.md lists it, which report.html renders as markdown
    note = figures_note("plots/")
    # Execute
    html = markdown_html(f"- {note}")
    # Assert: each file pattern is code, its underscores kept, nothing in italics
    for pattern in (
        "<split>_<experiment>_<setting>_<centre>_seed<s>_roc.png",
        "learning_curves_<experiment>_<setting>_seed<s>.png",
    ):
        assert f"<code>{escape(pattern)}</code>" in html
    assert "<em>" not in html


def test_report_does_not_import_flower():
    source = Path(periodic_report.__file__).read_text()
    imported = {
        n.module or "" for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)
    }
    imported |= {
        a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names
    }
    assert not any(m.split(".")[0] == "flwr" for m in imported)
