"""report.html and the comparison page, built from a tiny run folder written by the test."""

from __future__ import annotations

import base64
import json
import re

import pytest
from report_fixture import make_run_dir, make_sweep_dir, parse

from fedmammo.errors import DataError
from fedmammo.evaluation.html_report import write_comparison, write_report
from fedmammo.evaluation.report import format_estimate
from fedmammo.evaluation.results import RunRecorder
from fedmammo.evaluation.run_folder import expand_run_dirs, final_records, load_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _final(run_dir, metric="auc"):
    """Reference: final whole-centre test records of results.json, by (arm, centre)."""
    recs = json.loads((run_dir / "results.json").read_text())["metrics"]
    return {
        (r["arm"], r["centre"]): r
        for r in recs
        if r["split"] == "test"
        and r["metric"] == metric
        and r["segment"] is None
        and r["round"] is None
    }


def test_report_is_self_contained_and_every_image_is_an_embedded_png(tmp_path):
    run = make_run_dir(tmp_path)

    html = write_report(run).read_text()

    assert (run / "report.html").is_file()
    # no resource outside the page: every src is a data URI; every href an in-page anchor or
    # a link to a figure's own file in the run folder (relative, no network)
    for attr, url in re.findall(r'\b(src|href)="([^"]*)"', html):
        if attr == "href" and url.startswith("plots/"):
            assert (run / url).is_file(), url
        else:
            assert url.startswith(("data:", "#")), (attr, url)
    assert "<script" not in html and "@import" not in html and "url(" not in html
    images = parse(html).images
    assert len(images) >= 3  # the run's plot, generated learning curves, a's thumbnails
    for img in images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        assert base64.b64decode(img["src"][len(prefix) :]).startswith(PNG_MAGIC)


def test_results_table_cells_equal_results_json(tmp_path):
    run = make_run_dir(tmp_path)

    cells = parse(write_report(run).read_text()).cells

    for metric in ("auc", "auprc"):
        expected = _final(run, metric)
        shown = {
            (c["data-arm"], c["data-centre"]): c
            for c in cells
            if c.get("data-metric") == metric and "data-centre" in c
        }
        assert set(shown) == set(expected)
        for key, rec in expected.items():
            assert float(shown[key]["data-value"]) == rec["value"]
            assert shown[key]["text"] == format_estimate(
                rec["value"], rec["ci_low"], rec["ci_high"]
            )
    segments = [c for c in cells if "data-segment" in c]
    assert {c["data-segment"] for c in segments} == {"A-Ma", "A-Mb", "B-Ma", "B-Mb"}


def test_several_seeds_show_mean_and_spread(tmp_path):
    run = make_run_dir(tmp_path, seeds=(0, 1))

    final = final_records(load_run(run).frame())

    row = final[(final.metric == "auc") & (final.arm == "federated") & (final.centre == "a")]
    assert row["value"].item() == pytest.approx(0.715)  # 0.71 and 0.72
    assert row["std"].item() == pytest.approx(0.00707, abs=1e-4)
    assert row["ci_low"].isna().item() and row["n_seeds"].item() == 2


def test_header_centres_and_audit_trail(tmp_path):
    run = make_run_dir(tmp_path)

    html = write_report(run).read_text()

    assert "0123456789abcdef0123456789abcdef01234567" in html
    assert "torch 2.4.0" in html and "Test CPU; 2 cores; 8.0 GiB RAM; no GPU" in html
    assert "<dt>torch threads per centre</dt><dd>1</dd>" in html
    assert "12.5 s" in html and "2026-01-01 12:00:00" in html and "complete" in html
    # centres: consent, budget, epsilon spent, counts per segment and split
    assert "models yes, generators no" in html and "target epsilon 4" in html
    assert "2.5 (delta 1e-05)" in html and "dataset dicom-folder" in html
    assert "12 (4 malignant)" in html and "3 (0 malignant, 3 unlabelled)" in html
    assert "malignancy 75%" in html
    # the brightest-pixel reference of a's test images (b's run recorded none)
    table = html[html.index('id="centres-table"') :]
    table = table[: table.index("</table>")]
    assert "brightest-pixel AUROC, test (no model)" in table and "0.750 [0.500, 1.000]" in table
    # audit trail
    for text in ("egress refused", "budget spent", "dropped 1 lesion box", "privacy note"):
        assert text in html
    assert "DEBUG flwr" not in html and ">pooled<" not in html


def test_without_privacy_json_a_centre_without_dp_spent_none(tmp_path):
    # Prepare: a run in which no DP round wrote privacy.json (a share_gans run without DP)
    run = make_run_dir(tmp_path)
    (run / "privacy.json").unlink()
    # Execute
    html = write_report(run).read_text()
    # Assert: the last column, epsilon spent: b trains without DP (none); a's profile asks
    # for DP, so its spend is not known without the file
    table = html[html.index('id="centres-table"') :]
    table = table[: table.index("</table>")]
    spent = {
        row[0]: row[-1]
        for row in (re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r) for r in table.split("<tr")[1:])
        if row
    }
    assert spent["a"] == "not recorded" and spent["b"] == "none"


def test_the_run_folder_row_is_absolute_however_the_report_was_asked_for(tmp_path, monkeypatch):
    run = make_run_dir(tmp_path)
    monkeypatch.chdir(tmp_path)
    html = write_report(run.relative_to(tmp_path)).read_text()
    assert f"<dt>run folder</dt><dd>{run.resolve()}</dd>" in html


def test_missing_provenance_says_not_recorded_and_interrupted_run_says_so(tmp_path):
    run = make_run_dir(tmp_path, provenance=False, done=False)

    html = write_report(run).read_text()

    for key in ("git commit", "package versions", "machine", "torch threads per centre"):
        assert re.search(rf"<dt>{key}</dt><dd>not recorded</dd>", html), key
    # progress counts units (arm-seed runs or a method's phases), not only arm-seed runs
    assert "incomplete: 0 of 2 units done (each an arm-seed run or a method phase)" in html


def test_each_plot_of_the_run_links_to_its_file_relative_to_the_page(tmp_path):
    run = make_run_dir(tmp_path)

    beside = write_report(run).read_text()
    elsewhere = tmp_path / "pages" / "r.html"
    away = write_report(run, out=elsewhere).read_text()

    # the embedded image is wrapped in a link to plots/<name>.png, to open it full size
    link = '<a href="plots/test_roc_seed0.png" title="open full size"><img src="data:image/png'
    assert link in beside
    href = re.search(r'<a href="([^"]*test_roc_seed0\.png)"', away).group(1)
    assert href == "../tiny/20260101-120000/plots/test_roc_seed0.png"
    assert (elsewhere.parent / href).resolve() == (run / "plots" / "test_roc_seed0.png").resolve()
    # figures drawn from the records have no file, and no link
    assert beside.count('title="open full size"') == 1


def test_results_md_headings_nest_under_the_pages_section(tmp_path):
    run = make_run_dir(tmp_path)

    html = write_report(run).read_text()

    md = html[html.index("id='results-md'") :]
    md = md[: md.index("<h3>")] if "<h3>" in md else md
    # results.md's "# Results" and "## Extra table" sit under the <h3> "Tables of results.md"
    assert "<h4>Results: tiny</h4>" in md and "<h5>Extra table</h5>" in md
    assert not re.search(r"<h[123]>", md)


def test_counts_among_the_other_metrics_are_integers(tmp_path):
    # Prepare: besides the fixture's n (40), a count and a rate of the multi-task records
    run = make_run_dir(tmp_path)
    results = json.loads((run / "results.json").read_text())
    for metric, value in (("n_breasts", 120.0), ("sensitivity", 0.5)):
        results["metrics"].append(
            {"arm": "federated", "seed": 0, "centre": "a", "segment": None, "split": "test",
             "metric": metric, "value": value, "ci_low": None, "ci_high": None, "round": None}
        )  # fmt: skip
    (run / "results.json").write_text(json.dumps(results))
    # Execute
    html = write_report(run).read_text()
    # Assert: counts as integers (not 40.000), other metrics with 3 decimals
    other = html[html.index('id="results-other"') :]
    other = other[: other.index("</table>")]
    shown = re.findall(
        r'<td>([^<]*)</td><td class="num" data-value="[^"]*"[^>]*>([^<]*)</td>', other
    )
    assert set(shown) == {("n", "40"), ("n_breasts", "120"), ("sensitivity", "0.500")}
    # over seeds: a whole mean stays whole (its s.d. beside it); a fractional one keeps decimals
    from fedmammo.evaluation.html_report import _value_cell

    assert _value_cell({"value": 48.0, "std": 0.0}, count=True).text == "48"
    assert _value_cell({"value": 48.0, "std": 1.414}, count=True).text == "48 (1.414)"
    assert _value_cell({"value": 47.5, "std": 0.707}, count=True).text == "47.500 (0.707)"


def test_thumbnails_only_for_synthetic_centres(tmp_path):
    run = make_run_dir(tmp_path)  # a thumbnail file for the real centre b too

    html = write_report(run).read_text()

    shown = [i["alt"] for i in parse(html).images if i["alt"].startswith("images of")]
    assert shown == ["images of a"]
    assert "b: real images, not shown." in html


def test_metric_bars_drawn_only_without_plots_and_results_md_tables_rendered(tmp_path):
    with_plots = make_run_dir(tmp_path, "r1")
    without = make_run_dir(tmp_path, "r2", plots=False)

    alts_with = [i["alt"] for i in parse(write_report(with_plots).read_text()).images]
    html = write_report(without).read_text()
    alts_without = [i["alt"] for i in parse(html).images]

    assert "test_roc_seed0" in alts_with and "test AUROC per arm" not in alts_with
    assert "test AUROC per arm" in alts_without and "learning curves" in alts_without
    md = html[html.index("id='results-md'") :]
    assert md.count("<table>") == 2
    assert "<td>61.00 (50.00, 70.00)</td>" in md and "<code>code</code>" in md


def test_comparison_has_one_column_per_run_and_expands_sweeps(tmp_path):
    r1 = make_run_dir(tmp_path, "r1")
    r2 = make_run_dir(tmp_path, "r2", offset=0.05)
    sweep = make_sweep_dir(tmp_path)

    out = write_comparison([r1, sweep, r2], tmp_path / "cmp.html")

    html = out.read_text()
    cells = parse(html).cells
    labels = ["tiny/r1", "privacy.target_epsilon=1.0", "privacy.target_epsilon=8.0", "tiny/r2"]
    assert list(dict.fromkeys(c["data-run"] for c in cells)) == labels
    runs = [r1, *expand_run_dirs([sweep]), r2]
    for label, run in zip(labels, runs):
        expected = _final(run)
        shown = {(c["data-arm"], c["data-centre"]): c for c in cells if c["data-run"] == label}
        assert {k: float(c["data-value"]) for k, c in shown.items()} == {
            k: r["value"] for k, r in expected.items()
        }
    assert "a: 2.5" in html  # epsilon
    # settings: the sweep's --set keys (not the sweep) and each point's own value
    row = re.search(r'<th class="fact">settings</th>(.*?)</tr>', html).group(1)
    assert re.findall(r"<td>(.*?)</td>", row) == [
        "-",
        "strategy.params.rounds=2, privacy.target_epsilon=1.0",
        "strategy.params.rounds=2, privacy.target_epsilon=8.0",
        "-",
    ]
    assert "privacy_utility" in html  # the sweep's own figure


def test_comparison_leaves_out_rows_no_run_has_a_value_for(tmp_path):
    # Prepare: two runs whose centre b recorded a test AUROC that could not be computed
    runs = [make_run_dir(tmp_path, name) for name in ("r1", "r2")]
    for run in runs:
        results = json.loads((run / "results.json").read_text())
        results["metrics"].append(
            {"arm": "local-b", "seed": 0, "centre": "b", "segment": None, "split": "test",
             "metric": "auc", "value": None, "ci_low": None, "ci_high": None, "round": None}
        )  # fmt: skip
        (run / "results.json").write_text(json.dumps(results))
    # Execute
    html = write_comparison(runs, tmp_path / "cmp.html").read_text()
    # Assert: no row of dashes for local-b @ b; the rows with values stay
    assert "local-b @ b" not in html
    assert {(c["data-arm"], c["data-centre"]) for c in parse(html).cells} == {
        key for key, r in _final(runs[0]).items() if r["value"] is not None
    }


def test_comparison_says_which_run_holds_none_of_the_metrics_shown(tmp_path):
    # Prepare: r2's method records no AUROC (its test metrics are a task's accuracy)
    r1, r2 = (make_run_dir(tmp_path, name) for name in ("r1", "r2"))
    results = json.loads((r2 / "results.json").read_text())
    for r in results["metrics"]:
        r["metric"] = "density_accuracy" if r["metric"] == "auc" else r["metric"]
    (r2 / "results.json").write_text(json.dumps(results))
    # Execute
    html = write_comparison([r1, r2], tmp_path / "cmp.html").read_text()
    # Assert: a line names r2, the metric shown, and what r2 holds; none for r1
    (line,) = re.findall(r"<p class='muted'>([^<]*holds none[^<]*)</p>", html)
    assert line.startswith("tiny/r2 holds none of the metrics shown (auc); its test metrics: ")
    assert "density_accuracy" in line and line.endswith("(choose with --metric).")
    # counts in a comparison as integers, as on the run's page
    both = write_comparison([r1, r2], tmp_path / "n.html", metrics=("n",)).read_text()
    assert {c["data-metric"] for c in parse(both).cells} == {"n"}
    shown = re.findall(r'data-metric="n"[^>]*>([^<]*)<', both)
    assert shown and set(shown) == {"40"}


def test_missing_folder_and_missing_results_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such run folder"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no results.json"):
        write_report(tmp_path / "empty")


def test_sweep_points_come_in_sweep_order(tmp_path):
    sweep = make_sweep_dir(tmp_path)
    points = sweep / "points"
    (points / "privacy.target_epsilon=8.0").rename(points / "privacy.target_epsilon=100.0")
    (points / "privacy.target_epsilon=1.0").rename(points / "privacy.target_epsilon=null")

    natural = [p.name for p in expand_run_dirs([sweep])]
    (sweep / "sweep.csv").write_text(
        "arm,point\nx,privacy.target_epsilon=null\nx,privacy.target_epsilon=100.0\n"
    )
    ran = [p.name for p in expand_run_dirs([sweep])]

    assert natural == ["privacy.target_epsilon=100.0", "privacy.target_epsilon=null"]
    assert ran == ["privacy.target_epsilon=null", "privacy.target_epsilon=100.0"]


def test_an_arm_stopped_early_is_named_in_the_status(tmp_path):
    # Prepare: every arm-seed run done, one of them ended by a centre's privacy budget
    run = make_run_dir(tmp_path)
    recorder = RunRecorder(run, resume=True)
    recorder.stop_arm(
        "federated",
        0,
        "arm federated seed 0: stopped before round 2: centre b refused it (privacy budget); "
        "the model of the last completed round is final",
    )
    recorder.flush()
    # Execute
    html = write_report(run).read_text()
    # Assert: recorded in the arm's progress and kept as a note; the status names the arm
    results = json.loads((run / "results.json").read_text())
    assert results["progress"]["federated|0"]["stopped"].startswith("arm federated seed 0: ")
    assert results["notes"][-1] == results["progress"]["federated|0"]["stopped"]
    assert (
        "complete (2 units done, each an arm-seed run or a method phase); "
        "ended early: arm federated seed 0: stopped before round 2: centre b refused it "
        "(privacy budget)"
    ) in html


def test_an_arm_stopped_below_min_centres_is_finished_not_pending(tmp_path):
    # Prepare: local done; federated stopped at round 2 (too few centres: no "done", so that
    # a --resume tries it again); then an unfinished run of the same state plus a pending arm
    run = make_run_dir(tmp_path, done=False)
    recorder = RunRecorder(run, resume=True)
    recorder.complete_arm("local-a", 0)
    recorder.progress["federated|0"] = {"round": 1}
    recorder.stop_arm(
        "federated",
        0,
        "arm federated seed 0: stopped at round 2: 1 of 2 centres sent an update, fewer than "
        "min_centres=2 (none from b, whose reasons are in the failures); completed rounds kept",
    )
    recorder.flush()
    # Execute / Assert: complete, the stop named, and that a resume retries it
    html = write_report(run).read_text()
    assert (
        "complete (1 units done, each an arm-seed run or a method phase); ended early: arm "
        "federated seed 0: stopped at round 2: 1 of 2 centres sent an update, fewer than "
        "min_centres=2 (none from b, whose reasons are in the failures) (1 of them tried "
        "again by --resume)"
    ) in html
    recorder.progress["pooled|0"] = {"round": 3}
    recorder.flush()
    html = write_report(run).read_text()
    assert "incomplete: 1 of 3 units done" in html and "; pooled|0 after round 3<" in html


def test_a_sweep_points_page_says_its_warnings_are_the_whole_sweeps(tmp_path):
    # Prepare: a sweep whose points have no run.log of their own (the sweep writes one)
    sweep = make_sweep_dir(tmp_path)
    point = expand_run_dirs([sweep])[0]
    (point / "run.log").unlink(missing_ok=True)
    line = "2026-01-01 13:00:00,000 WARNING fedmammo.x: centre b: mostly noise at epsilon 1"
    (sweep / "run.log").write_text(line + "\n")
    # Execute
    html = write_report(point).read_text()
    # Assert: the line is shown, under a heading that says whose it is
    assert "Warnings in the sweep&#x27;s run.log (every point&#x27;s lines) (1)" in html
    assert "mostly noise at epsilon 1" in html


def test_a_segment_evaluated_at_two_centres_has_a_column_per_centre(tmp_path):
    # Prepare: the same segment name (a density class, as in multi-task runs) at a and b
    run = make_run_dir(tmp_path)
    results = json.loads((run / "results.json").read_text())
    for centre, value in (("a", 0.25), ("b", 0.582)):
        results["metrics"].append(
            {"arm": "federated", "seed": 0, "centre": centre, "segment": "density=A",
             "split": "test", "metric": "auc", "value": value, "ci_low": None,
             "ci_high": None, "round": None}
        )  # fmt: skip
    (run / "results.json").write_text(json.dumps(results))
    # Execute
    cells = parse(write_report(run).read_text()).cells
    # Assert: each centre's value under its own column, neither lost
    shown = {
        c["data-segment"]: float(c["data-value"])
        for c in cells
        if c.get("data-segment", "").endswith("density=A") and c["data-arm"] == "federated"
    }
    assert shown == {"a: density=A": 0.25, "b: density=A": 0.582}


def test_two_sweeps_compared_name_their_points_after_their_folders(tmp_path):
    first = make_sweep_dir(tmp_path / "one")
    second = make_sweep_dir(tmp_path / "two")
    second = second.rename(second.with_name("20260102-090000"))

    cells = parse(write_comparison([first, second], tmp_path / "cmp.html").read_text()).cells

    assert list(dict.fromkeys(c["data-run"] for c in cells)) == [
        f"{sweep}/privacy.target_epsilon={eps}"
        for sweep in ("20260101-130000", "20260102-090000")
        for eps in (1.0, 8.0)
    ]


def test_only_metrics_with_a_ci_are_titled_with_one(tmp_path):
    # Prepare: one seed; AUROC records carry a CI, AUPRC's none
    run = make_run_dir(tmp_path)
    # Execute
    html = write_report(run).read_text()
    # Assert
    assert "Test AUROC [95% CI] per arm and evaluating centre" in html
    assert "Test AUPRC per arm and evaluating centre" in html
    assert "AUPRC [95% CI]" not in html


def test_a_patch_level_method_says_the_reference_is_not_comparable(tmp_path):
    # Prepare: a share_gans run, whose AUROCs score lesion patches
    run = make_run_dir(tmp_path)
    results = json.loads((run / "results.json").read_text())
    results["meta"]["kind"] = "share_gans"
    (run / "results.json").write_text(json.dumps(results))
    # Execute
    html = write_report(run).read_text()
    fedavg = write_report(make_run_dir(tmp_path, "r2")).read_text()
    # Assert: the Centres column says so; a method of image AUROCs keeps the plain header
    caveat = "image-level: not comparable with this run&#x27;s lesion-patch AUROCs"
    assert f"brightest-pixel AUROC, test (no model; {caveat})" in html
    assert "0.750 [0.500, 1.000]" in html
    assert "<th>brightest-pixel AUROC, test (no model)</th>" in fedavg and caveat not in fedavg


def test_the_centres_table_says_why_a_reference_is_missing():
    from fedmammo.evaluation.run_sections import _reference

    assert _reference(None, consents=False) == "withheld (sharing.metrics off)"
    assert _reference(None, consents=True) == "not recorded"  # a run from before it existed
    missing = {"brightest_pixel_auc": None, "ci_low": None, "ci_high": None}
    assert _reference(missing, consents=True) == "n/a (no malignant and benign test images)"
    assert _reference({"brightest_pixel_auc": 0.9}, consents=True) == "0.900"


def test_a_run_resumed_on_other_code_names_each_commit(tmp_path):
    # Prepare: the fixture's run, whose results.json says it was resumed on a dirty checkout
    run = make_run_dir(tmp_path)
    data = json.loads((run / "results.json").read_text())
    first = {"git_commit": data["meta"]["git_commit"], "git_dirty": False}
    data["meta"]["code_history"] = [first, {"git_commit": "f" * 40, "git_dirty": True}]
    (run / "results.json").write_text(json.dumps(data))
    # Execute
    html = write_report(run).read_text()
    # Assert
    assert (
        f"<dt>git commit</dt><dd>{first['git_commit']}, then {'f' * 40} (with uncommitted "
        "changes) (resumed on other code)</dd>"
    ) in html


def test_a_sharer_of_several_generators_shows_them_composed_beside_its_spend(tmp_path):
    # Prepare: privacy.json's summary as a share_gans run with two DP generators of a leaves it
    run = make_run_dir(tmp_path)
    privacy = json.loads((run / "privacy.json").read_text())
    privacy["summary"]["a"]["generators"] = {
        "released": ["gan_dcgan@all", "gan_wgan_gp@all"],
        "composed_epsilon": 15.15,
        "each_at_most": 2.5,
    }
    (run / "privacy.json").write_text(json.dumps(privacy))
    # Execute
    html = write_report(run).read_text()
    # Assert
    assert "2.5 (delta 1e-05); its 2 generators together 15.15" in html


def test_a_run_killed_between_units_is_incomplete_whatever_its_progress_says(tmp_path):
    # Prepare: every unit the results name is done, but the process ended before its method
    # returned (meta.finished false: killed after the AlexNet arms, before the ResNet ones)
    run = make_run_dir(tmp_path)
    recorder = RunRecorder(run, resume=True)
    recorder.meta["finished"] = False
    recorder.flush()
    # Execute
    html = write_report(run).read_text()
    # Assert: not "complete"; how to finish it
    assert "incomplete: the run stopped before its method finished" in html
    assert f"python -m fedmammo.simulate --resume {run}" in html
    assert "status</dt><dd>complete" not in html
