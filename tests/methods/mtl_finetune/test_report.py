"""Multi-task metric records (against sklearn) and the multi-task paper table layouts."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, matthews_corrcoef, roc_auc_score

from fedmammo.evaluation.html_parts import markdown_html
from fedmammo.evaluation.results import RECORD_FIELDS
from fedmammo.methods.mtl_finetune.report import build_mtl_tables, mtl_records, tables_markdown


def _probs(rng, n, classes):
    p = rng.random((n, classes))
    return p / p.sum(axis=1, keepdims=True)


@pytest.fixture()
def evaluation():
    rng = np.random.default_rng(0)
    n = 120
    labels = {
        "malignancy": rng.integers(0, 2, n),
        "acr": rng.integers(0, 6, n),
        "density": rng.integers(0, 4, n),
        "view": rng.integers(0, 2, n),
    }
    labels["malignancy"][:10] = -1  # missing labels
    labels["density"][10:15] = -1
    predictions = {
        t: _probs(rng, n, c)
        for t, c in (("malignancy", 2), ("acr", 6), ("density", 4), ("view", 2))
    }
    segments = np.where(np.arange(n) % 3 == 0, "S-Ma", "S-Mb")
    return predictions, labels, segments


def _get(records, segment, metric):
    found = [r for r in records if r["segment"] == segment and r["metric"] == metric]
    assert len(found) == 1, (segment, metric)
    return found[0]


def test_records_match_sklearn_on_present_labels(evaluation):
    # Prepare
    predictions, labels, segments = evaluation
    y, keep = labels["malignancy"], labels["malignancy"] >= 0
    dens = labels["density"] >= 0
    # Execute
    records = mtl_records(predictions, labels, segments, n_boot=0)
    # Assert
    auc = _get(records, None, "auc")
    assert auc["value"] == pytest.approx(roc_auc_score(y[keep], predictions["malignancy"][keep, 1]))
    assert auc["ci_low"] is None or math.isnan(auc["ci_low"])
    expected = balanced_accuracy_score(
        labels["density"][dens], predictions["density"][dens].argmax(1)
    )
    assert _get(records, None, "density_balanced_accuracy")["value"] == pytest.approx(expected)
    assert _get(records, None, "view_auc")["value"] == pytest.approx(
        roc_auc_score(labels["view"], predictions["view"][:, 1])
    )
    mb = (segments == "S-Mb") & keep
    assert _get(records, "S-Mb", "auc")["value"] == pytest.approx(
        roc_auc_score(y[mb], predictions["malignancy"][mb, 1])
    )


def test_strata_split_by_true_density_and_view(evaluation):
    # Prepare
    predictions, labels, segments = evaluation
    # Execute
    records = mtl_records(predictions, labels, n_boot=0)
    # Assert
    sel = (labels["density"] == 2) & (labels["malignancy"] >= 0)
    assert _get(records, "density=C", "auc")["value"] == pytest.approx(
        roc_auc_score(labels["malignancy"][sel], predictions["malignancy"][sel, 1])
    )
    n_views = _get(records, "view=CC", "n")["value"] + _get(records, "view=MLO", "n")["value"]
    assert n_views == len(labels["view"])
    # a stratum reports the malignancy AUC only (view AUC is undefined within one view)
    assert {r["metric"] for r in records if r["segment"] == "view=CC"} == {
        "n",
        "n_malignant",
        "auc",
    }
    assert {r["segment"] for r in records} == {
        None,
        "density=A",
        "density=B",
        "density=C",
        "density=D",
        "view=CC",
        "view=MLO",
    }


def _documented_metrics() -> dict[str, str]:
    """docs/report.md "What the metrics are": each backquoted record name -> its meaning."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "report.md").read_text()
    rows = text[text.index("### What the metrics are") :].split("\n## ", 1)[0].splitlines()
    meanings = {}
    for row in (r for r in rows if r.startswith("| `")):
        names, meaning = row.strip("|").split("|", 1)
        for name in re.findall(r"`([^`]+)`", names):
            meanings[name] = meaning.strip()
    return meanings


def test_docs_give_the_operating_point_records_their_computed_meanings(evaluation):
    # Prepare
    predictions, labels, _ = evaluation
    keep = labels["malignancy"] >= 0
    y, score = labels["malignancy"][keep], predictions["malignancy"][keep, 1]
    # Execute
    records = {
        r["metric"]: r["value"] for r in mtl_records(predictions, labels) if not r["segment"]
    }
    docs = _documented_metrics()
    # Assert: mcc / sensitivity / specificity are at P(malignant) > 0.5 ...
    called = (score > 0.5).astype(int)
    assert records["mcc"] == pytest.approx(matthews_corrcoef(y, called))
    assert records["sensitivity"] == pytest.approx(called[y == 1].mean())
    assert records["specificity"] == pytest.approx(1 - called[y == 0].mean())
    for name in ("mcc", "sensitivity", "specificity"):
        assert "P(malignant) > 0.5" in docs[name], name
    # ... the best-threshold ones over the test ROC, an upper bound (never below mcc at 0.5)
    assert records["mcc_best"] >= records["mcc"]
    for name in ("mcc_best", "sensitivity_at_mcc_best", "specificity_at_mcc_best"):
        assert name in records
        assert "thresholds of the test ROC" in docs[name] and "upper bound" in docs[name], name
        assert "0.5" not in docs[name], name
    assert "specificity_at_sens95" in records and "95% sensitivity" in docs["specificity_at_sens95"]
    assert "breast" in docs["breast_auc"]


def test_bootstrap_ci_brackets_the_auc_and_one_class_gives_nan(evaluation):
    # Prepare
    predictions, labels, _ = evaluation
    one_class = dict(labels, malignancy=np.where(labels["malignancy"] >= 0, 0, -1))
    # Execute
    with_ci = _get(mtl_records(predictions, labels, n_boot=200, seed=1), None, "auc")
    nan = _get(mtl_records(predictions, one_class, n_boot=200), None, "auc")
    # Assert
    assert with_ci["ci_low"] < with_ci["value"] < with_ci["ci_high"]
    assert math.isnan(nan["value"])


def _row(
    arm, centre, metric, value, *, seed=0, segment=None, lo=None, hi=None, split="test", rnd=None
):
    return dict(
        zip(
            RECORD_FIELDS,
            (arm, seed, centre, segment, split, metric, value, lo, hi, rnd),
            strict=True,
        )
    )


@pytest.fixture()
def records():
    rows = []
    arms = {
        "single_task": 0.70,
        "mtl": 0.80,
        "mtl_acr": 0.77,
        "drop_all_50": 0.72,
        "drop_malignancy_25": 0.78,
        "finetune_u1_0.9": 0.81,
        "finetune_u1_0.25": 0.74,
    }
    for arm, auc in arms.items():
        for seed, shift in ((0, 0.0), (1, 0.02)):
            for centre in ("hmi", "inb"):
                rows.append(_row(arm, centre, "auc", auc + shift, seed=seed))
                rows.append(_row(arm, centre, "auc", auc - 0.05, seed=seed, segment="density=A"))
                rows.append(_row(arm, centre, "view_auc", 0.95, seed=seed))
    rows.append(_row("mtl", "hmi", "auc", 0.1, split="val", rnd=1))  # not a final figure
    rows.append(_row("mtl", "hmi", "auc", 0.1, rnd=3))
    return pd.DataFrame(rows, columns=list(RECORD_FIELDS))


def test_tables_layout_and_mean_std_over_seeds(records):
    # Execute
    tables = {t.title: t for t in build_mtl_tables(records, decoder_default=True)}
    # Assert: Tables 2-3 per centre, Table 4, Table 5, Tables 8-9 per centre
    titles = list(tables)
    assert sum("Tables 2-3" in t for t in titles) == 2
    assert sum("Tables 8-9" in t for t in titles) == 2
    assert sum("Table 4" in t for t in titles) == sum("Table 5" in t for t in titles) == 1
    strata = next(t for k, t in tables.items() if "Tables 2-3" in k and "hmi" in k).frame
    assert list(strata.columns) == ["single_task", "mtl"]
    assert strata.loc["overall", "mtl"] == "81.00 (1.41)"  # mean (std) of 0.80 and 0.82
    assert strata.loc["density=A", "mtl"] == "75.00 (0.00)"
    assert strata.loc["view=CC", "mtl"] == "n/a"
    aux = next(t for k, t in tables.items() if "Table 4" in k).frame
    assert list(aux.index) == ["mtl", "single_task", "mtl_acr"]
    assert aux.loc["single_task", ["fusion", "rec", "acr"]].tolist() == ["-", "-", "-"]
    assert aux.loc["mtl_acr", ["fusion", "rec", "acr", "density"]].tolist() == ["+", "-", "+", "-"]
    assert aux.loc["mtl", "rec"] == "+"
    # the key to the +/- cells survives markdown: no leading list marker, the signs as code
    key = next(t for k, t in tables.items() if "Table 4" in k).note
    assert key.startswith("Key: `+` enabled, `-` disabled;")
    rendered = markdown_html(key)
    assert "<li>" not in rendered and "<code>+</code> enabled" in rendered
    drops = next(t for k, t in tables.items() if "Table 5" in k).frame
    assert list(drops.index) == ["reference (mtl)", "drop_malignancy_25", "drop_all_50"]
    tuned = next(t for k, t in tables.items() if "Tables 8-9" in k and "inb" in k).frame
    assert list(tuned.index) == ["reference (mtl)", "finetune_u1_0.25", "finetune_u1_0.9"]
    assert tuned.loc["finetune_u1_0.9", "view AUC"] == "95.00 (0.00)"
    assert tuned.loc["finetune_u1_0.9", "ACR bal. accuracy"] == "n/a"


def test_single_seed_shows_the_confidence_interval_and_markdown_renders():
    # Prepare
    df = pd.DataFrame(
        [_row("single_task", "c", "auc", 0.8, lo=0.75, hi=0.85), _row("mtl", "c", "auc", None)],
        columns=list(RECORD_FIELDS),
    )
    # Execute
    tables = build_mtl_tables(df)
    text = tables_markdown(tables)
    # Assert
    frame = tables[0].frame
    assert frame.loc["overall", "single_task"] == "80.00 (75.00, 85.00)"
    assert frame.loc["overall", "mtl"] == "n/a"
    assert "### Malignancy AUC (%) by density and view at c" in text
    assert "| stratum | single_task | mtl |" in text
    assert build_mtl_tables(df[df["arm"] == "nothing"]) == []
