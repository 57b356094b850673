"""Files written whole: a failed write leaves the old file and no temporary behind."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedmammo.files import replace_json, replace_npz, replace_whole


def test_a_file_is_replaced_whole_and_a_failed_write_keeps_the_old_one(tmp_path):
    path = tmp_path / "results.json"
    assert replace_whole(path, lambda t: t.write_text("one")) == path
    replace_whole(path, lambda t: t.write_text("two"))
    assert path.read_text() == "two"

    def half_then_fail(tmp):
        tmp.write_text("thr")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_whole(path, half_then_fail)
    assert path.read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_npz_arrays_land_under_the_exact_name(tmp_path):
    path = tmp_path / "scores.npz.keep"  # savez would append .npz to a name; not here
    replace_npz(path, {"a": np.arange(3), "b": np.ones((2, 2))})
    with np.load(path) as z:
        assert z["a"].tolist() == [0, 1, 2] and z["b"].shape == (2, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.npz.keep"]


def test_json_files_are_strict_json_with_null_for_what_could_not_be_computed(tmp_path):
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    payload = {"auc": 0.9, "ci": [math.nan, math.inf], "nested": {"low": -math.inf}}
    replace_json(tmp_path / "a.json", payload)
    assert json.loads((tmp_path / "a.json").read_text(), parse_constant=refuse) == {
        "auc": 0.9,
        "ci": [None, None],
        "nested": {"low": None},
    }


def test_a_reference_without_a_ci_is_kept_as_null_in_results_json(tmp_path):
    from fedmammo.evaluation.results import RunRecorder

    sent = {"brightest_pixel_auc": 0.7, "ci_low": math.nan, "ci_high": math.nan}
    RunRecorder(tmp_path, meta={"centres": {"a": {"brightest_pixel": sent}}}).flush()
    text = (tmp_path / "results.json").read_text()
    kept = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in results.json"))
    assert kept["meta"]["centres"]["a"]["brightest_pixel"] == {
        "brightest_pixel_auc": 0.7,
        "ci_low": None,
        "ci_high": None,
    }
