"""Run-directory results: records, resume filtering, the final table and results.md."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from fedmammo.evaluation.report import final_table, write_summary
from fedmammo.evaluation.results import RunRecorder


def _auc(value, lo=None, hi=None, segment=None):
    return {"segment": segment, "metric": "auc", "value": value, "ci_low": lo, "ci_high": hi}


def test_flush_writes_strict_json_and_csv_with_nan_as_null(tmp_path):
    # a method's table in meta may hold a p-value that could not be computed (NaN)
    table = {"rows": [{"p_value": float("nan"), "auc": 0.75, "low": float("-inf")}]}
    rec = RunRecorder(tmp_path, meta={"scenario": "x", "table": table, "where": tmp_path})
    rec.add([_auc(float("nan"))], arm="federated", seed=0, centre="A", split="test")
    rec.flush()
    text = (tmp_path / "results.json").read_text()
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in results.json"))
    assert data["metrics"][0]["value"] is None
    assert data["meta"]["table"] == {"rows": [{"p_value": None, "auc": 0.75, "low": None}]}
    assert data["meta"]["where"] == str(tmp_path)  # what JSON has no type for, as text
    assert list(pd.read_csv(tmp_path / "metrics.csv").columns)[:4] == [
        "arm",
        "seed",
        "centre",
        "segment",
    ]


def test_resume_keeps_completed_rounds_only(tmp_path):
    rec = RunRecorder(tmp_path)
    for rnd in (1, 2, 3):
        rec.add([_auc(0.5 + rnd / 10)], arm="federated", seed=0, centre="A", split="val", round=rnd)
        if rnd < 3:  # round 3 was interrupted before its checkpoint
            rec.complete_round("federated", 0, rnd)
    rec.add([_auc(0.9)], arm="local-A", seed=0, centre="A", split="test")
    rec.complete_arm("local-A", 0)
    rec.flush()
    resumed = RunRecorder(tmp_path, resume=True)
    kept = {(r["arm"], r["round"]) for r in resumed.metrics}
    assert kept == {("federated", 1), ("federated", 2), ("local-A", None)}
    assert resumed.last_round("federated", 0) == 2
    assert resumed.is_done("local-A", 0) and not resumed.is_done("federated", 0)


def test_final_table_orders_centres_and_averages_seeds():
    rows = []
    for seed, value in ((0, 0.6), (1, 0.8)):
        for centre in ("B", "A"):
            rows.append(
                {
                    "arm": "federated",
                    "seed": seed,
                    "centre": centre,
                    "segment": None,
                    "split": "test",
                    "metric": "auc",
                    "value": value,
                    "ci_low": None,
                    "ci_high": None,
                    "round": None,
                }
            )
    rows.append(
        {
            "arm": "local-A",
            "seed": 0,
            "centre": "A",
            "segment": None,
            "split": "test",
            "metric": "auc",
            "value": 0.75,
            "ci_low": 0.6,
            "ci_high": 0.9,
            "round": None,
        }
    )
    table = final_table(pd.DataFrame(rows), centres=["A", "B"])
    assert list(table.columns) == ["A", "B"]
    assert table.loc["federated", "A"] == "0.700 (0.141)"  # mean (sample std) over 2 seeds
    assert table.loc["local-A", "A"] == "0.750 [0.600, 0.900]"


def test_write_summary_has_table_failures_and_notes(tmp_path):
    rec = RunRecorder(tmp_path, meta={"scenario": "demo", "centre_order": ["A"]})
    rec.add([_auc(0.8, 0.7, 0.9)], arm="federated", seed=0, centre="A", split="test")
    rec.failure(arm="federated", seed=0, centre="B", reason="boom", round=2)
    rec.note("pooled arm skipped")
    text = write_summary(rec)
    assert "| federated | 0.800 [0.700, 0.900] |" in text
    assert "1 centre failures recorded" in text
    assert "- pooled arm skipped" in text
    assert (tmp_path / "results.md").read_text() == text


def test_a_method_without_auroc_records_shows_its_own_tables_only(tmp_path):
    # Prepare: a run whose metrics are not AUROC (contrastive_dg's tasks), and an empty run
    rec = RunRecorder(tmp_path / "a", meta={"scenario": "dg"})
    empty = RunRecorder(tmp_path / "b", meta={"scenario": "none"})
    # Execute
    text = write_summary(rec, section=lambda r, c: "## Method tables\n\n| a | b |")
    bare = write_summary(empty, section=lambda r, c: "")
    # Assert: no false "nothing recorded" above the method's tables; said when truly empty
    assert text == "# Results: dg\n\n## Method tables\n\n| a | b |\n"
    assert "No final test metrics were recorded." in bare


def test_resume_keeps_the_recorded_centre_failures_and_notes(tmp_path):
    # Prepare: round 1 lost centre B and left a note; the run was interrupted after it
    rec = RunRecorder(tmp_path)
    rec.add([_auc(0.6)], arm="federated", seed=0, centre="A", split="val", round=1)
    rec.failure(arm="federated", seed=0, centre="B", reason="timeout", round=1, phase="fit")
    rec.note("centre B missed round 1")
    rec.complete_round("federated", 0, 1)
    # Execute: resume, record round 2 (B fails again) and flush
    resumed = RunRecorder(tmp_path, resume=True)
    resumed.add([_auc(0.7)], arm="federated", seed=0, centre="A", split="val", round=2)
    resumed.failure(arm="federated", seed=0, centre="B", reason="timeout", round=2, phase="fit")
    resumed.complete_round("federated", 0, 2)
    data = json.loads((tmp_path / "results.json").read_text())
    # Assert: the failure recorded before the interruption is still there, before round 2's
    first = {"arm": "federated", "seed": 0, "centre": "B", "phase": "fit", "reason": "timeout"}
    assert data["failures"] == [{**first, "round": 1}, {**first, "round": 2}]
    assert data["notes"] == ["centre B missed round 1"]
    assert [(r["round"], r["value"]) for r in data["metrics"]] == [(1, 0.6), (2, 0.7)]


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ({"meta": [1]}, "'meta' is list, not an object"),
        ({"failures": "oops"}, "'failures' is str, not a list"),
        ({"metrics": [3]}, "metrics[0] is int, not an object"),
        ({"metrics": [_auc("0.9x")]}, "metrics[0] ('auc'): value '0.9x' is not a number"),
    ],
)
def test_a_results_json_of_the_wrong_shape_is_refused_by_resume_and_report(tmp_path, edit, said):
    # Prepare: a run's results.json, then hand-edited into valid JSON of the wrong shape
    from fedmammo.errors import DataError
    from fedmammo.evaluation.results import results_problem
    from fedmammo.evaluation.run_folder import load_run

    rec = RunRecorder(tmp_path, meta={"scenario": "x"})
    rec.add([_auc(0.7)], arm="federated", seed=0, centre="A", split="test")
    rec.flush()
    path = tmp_path / "results.json"
    assert results_problem(json.loads(path.read_text())) is None
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    before = path.read_text()
    # Execute / Assert: one line naming the file and the part; the file is left as it was
    with pytest.raises(DataError, match=f"results.json: damaged \\({re.escape(said)}\\)"):
        RunRecorder(tmp_path, resume=True)
    with pytest.raises(DataError, match=re.escape(said)):
        load_run(tmp_path)
    assert path.read_text() == before


def test_a_resume_on_other_code_keeps_each_code_and_warns(tmp_path, caplog):
    # Prepare: a run started on one commit, resumed on another, then again on the second
    first = {"git_commit": "a" * 40, "git_dirty": False}
    second = {"git_commit": "b" * 40, "git_dirty": True}
    RunRecorder(tmp_path, meta=first).flush()
    # Execute
    with caplog.at_level("WARNING", logger="fedmammo.evaluation.results"):
        resumed = RunRecorder(tmp_path, meta=second, resume=True)
        resumed.flush()
        again = RunRecorder(tmp_path, meta=second, resume=True)
    # Assert: both codes in order, one warning (the second resume changed nothing)
    assert resumed.meta["code_history"] == [first, second] == again.meta["code_history"]
    assert again.meta["git_commit"] == "b" * 40
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}: resumed on other code than it ran on (aaaaaaaaaaaa, then bbbbbbbbbbbb); "
        "its report lists each"
    ]
    same = RunRecorder(tmp_path / "same", meta=first)
    same.flush()
    assert "code_history" not in RunRecorder(tmp_path / "same", meta=first, resume=True).meta


def test_a_resume_keeps_the_first_start_and_lists_each_resume(tmp_path):
    # Prepare: a run started at 10:00, resumed at 11:00 and at 12:00
    RunRecorder(tmp_path, meta={"started": "10:00", "wall_seconds": 5.0}).flush()
    # Execute
    once = RunRecorder(tmp_path, meta={"started": "11:00"}, resume=True)
    once.flush()
    twice = RunRecorder(tmp_path, meta={"started": "12:00"}, resume=True)
    # Assert: the first start stays "started"; the ServerApp adds to the earlier wall time
    assert (once.meta["started"], once.meta["resumed"]) == ("10:00", ["11:00"])
    assert (twice.meta["started"], twice.meta["resumed"]) == ("10:00", ["11:00", "12:00"])
    assert twice.meta["wall_seconds"] == 5.0
