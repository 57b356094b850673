"""contrastive_dg's results.md section: Table II/III layouts, label fractions, the headline."""

from __future__ import annotations

import pandas as pd
import pytest
from rich.console import Console

from fedmammo.evaluation.results import RunRecorder
from fedmammo.methods.contrastive_dg.report import (
    FRACTIONS_PLOT,
    META_KEY,
    fraction_series,
    headline,
    plot_label_fractions,
    section,
    summary_table,
    task_table,
)

META = {
    "seen": ["A", "B"],
    "unseen": ["D"],
    "arms": ["random", "simclr", "msvcl"],
    "tasks": ["detection", "density"],
    "fractions": [0.5, 1.0],
    "vendors": {"A": "Ma", "B": "Mb", "D": "Film"},
}
# arm -> (centre -> (value, ci_low, ci_high)) for detection at 100% and density
DET = {
    "random": {"A": (0.4, 0.3, 0.5), "B": (0.6, 0.5, 0.7), "D": (0.20, 0.10, 0.30)},
    "simclr": {"A": (0.5, 0.4, 0.6), "B": (0.6, 0.5, 0.7), "D": (0.40, 0.30, 0.50)},
    "msvcl": {"A": (0.5, 0.4, 0.6), "B": (0.7, 0.6, 0.8), "D": (0.60, 0.55, 0.65)},
}
DENSITY = {arm: {c: (0.7, 0.6, 0.8) for c in ("A", "B", "D")} for arm in DET}


def _recorder(tmp_path, seeds=({},)) -> RunRecorder:
    """One seed per entry of ``seeds``: DET with that entry's (arm, centre) cells replaced."""
    rec = RunRecorder(tmp_path, meta={META_KEY: META})
    for seed, changed in enumerate(seeds):
        for arm in DET:
            for metric, table in (("detection_ap50@1", DET), ("density_accuracy", DENSITY)):
                for centre, (v, lo, hi) in table[arm].items():
                    if metric.startswith("detection"):
                        v, lo, hi = changed.get((arm, centre), (v, lo, hi))
                    rec.add(
                        [{"metric": metric, "value": v, "ci_low": lo, "ci_high": hi}],
                        arm=arm,
                        seed=seed,
                        centre=centre,
                        split="test",
                    )
    for arm in DET:
        rec.add(
            [{"metric": "detection_ap50@0.5", "value": DET[arm]["D"][0] / 2}],
            arm=arm,
            seed=0,
            centre="D",
            split="test",
        )
        rec.add([{"metric": "val_loss", "value": 1.0}], arm=arm, seed=0, centre="A", split="val")
    return rec


def test_table_ii_layout_has_vendors_their_averages_and_cis(tmp_path):
    # Execute
    table = task_table(_recorder(tmp_path).frame(), META, "detection_ap50@1")
    # Assert
    assert list(table.index) == ["random", "simclr", "msvcl"]
    assert list(table.columns) == ["A (Ma)", "B (Mb)", "seen avg", "D (Film)", "unseen avg"]
    assert table.loc["msvcl", "A (Ma)"] == "0.500 [0.400, 0.600]"
    assert table.loc["msvcl", "seen avg"] == "0.600"
    assert table.loc["random", "unseen avg"] == "0.200"


def test_table_iii_layout_averages_vendors_per_task_then_tasks(tmp_path):
    # Execute
    table = summary_table(_recorder(tmp_path).frame(), META)
    # Assert: detection at the largest fraction
    assert table.loc["msvcl", "unseen detection"] == "0.600"
    assert table.loc["msvcl", "unseen density"] == "0.700"
    assert table.loc["msvcl", "unseen avg"] == "0.650"
    assert table.loc["random", "seen avg"] == f"{(0.5 + 0.7) / 2:.3f}"


def test_headline_counts_cells_whose_cis_separate(tmp_path):
    # Execute
    text = headline(_recorder(tmp_path).frame(), META)
    # Assert: on D, msvcl's detection CI lies above both; density CIs overlap
    assert "msvcl vs simclr on unseen vendors: mean difference +0.100" in text
    assert "separate in 1 (msvcl higher) and 0 (simclr higher), overlap in 1" in text
    assert "msvcl vs random on unseen vendors: mean difference +0.200" in text


def test_with_several_seeds_the_headline_counts_each_seeds_cells_with_their_own_cis(tmp_path):
    # Prepare: seed 1's msvcl detection at D is 0.3 [0.25, 0.35] (simclr 0.4 [0.3, 0.5])
    rec = _recorder(tmp_path, seeds=({}, {("msvcl", "D"): (0.3, 0.25, 0.35)}))
    # Execute
    text = headline(rec.frame(), META)
    report = section(rec, Console(quiet=True))
    # Assert: deltas +0.2, 0 (seed 0) and -0.1, 0 (seed 1); seed 0's detection CIs separate
    assert (
        "msvcl vs simclr on unseen vendors: mean difference +0.025 over 4 (task, vendor, seed) "
        "cells of 2 seeds; 95% CIs separate in 1 (msvcl higher) and 0 (simclr higher), "
        "overlap in 3"
    ) in text
    assert "Table II layout: detection_ap50@1 per vendor [mean (s.d.) over 2 seeds]" in report
    assert "[95% bootstrap CI]" not in report


def test_label_fraction_series_and_plot(tmp_path):
    # Prepare
    frame = _recorder(tmp_path).frame()
    # Execute
    unseen = fraction_series(frame, META, "unseen")
    path = plot_label_fractions(frame, META, tmp_path)
    # Assert
    assert list(unseen.columns) == [0.5, 1.0]
    assert unseen.loc["msvcl", 0.5] == pytest.approx(0.3)
    assert unseen.loc["msvcl", 1.0] == pytest.approx(0.6)
    assert path == tmp_path / FRACTIONS_PLOT and path.stat().st_size > 1000


def test_section_holds_every_table_and_the_headline(tmp_path):
    # Execute
    text = section(_recorder(tmp_path), Console(quiet=True))
    # Assert
    for heading in (
        "Table III layout",
        "Table II layout: detection_ap50@1",
        "Table II layout: density_accuracy",
        "Label fractions",
        "Headline",
    ):
        assert heading in text
    assert section(RunRecorder(tmp_path / "x"), Console(quiet=True)) == ""


def test_several_seeds_show_mean_and_sd(tmp_path):
    # Prepare
    rec = RunRecorder(tmp_path, meta={META_KEY: META})
    for seed, v in ((0, 0.4), (1, 0.6)):
        rec.add(
            [{"metric": "density_accuracy", "value": v}],
            arm="msvcl",
            seed=seed,
            centre="A",
            split="test",
        )
    # Execute
    table = task_table(rec.frame(), META, "density_accuracy")
    # Assert
    assert table.loc["msvcl", "A (Ma)"] == f"0.500 ({pd.Series([0.4, 0.6]).std():.3f})"


@pytest.mark.parametrize("downstream", ["local", "federated"])
def test_section_says_how_the_downstream_models_were_trained(tmp_path, downstream):
    # Prepare
    rec = _recorder(tmp_path)
    rec.meta[META_KEY] = {
        **META,
        "labelled": ["A", "B"],
        "downstream": downstream,
        "downstream_rounds": 5 if downstream == "federated" else None,
    }
    # Execute
    text = section(rec, Console(quiet=True))
    # Assert
    expected = {
        "local": "Downstream: local: each labelled centre (A, B) fine-tunes its own",
        "federated": "Downstream: federated: 5 FedAvg rounds of each task model across the "
        "labelled centres (A, B)",
    }[downstream]
    assert expected in text
