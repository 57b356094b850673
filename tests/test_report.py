"""python -m fedmammo.report: one run, several runs, a sweep, and one-line errors."""

from __future__ import annotations

from report_fixture import make_run_dir, make_sweep_dir

from fedmammo.report import main


def test_one_run_writes_its_report(tmp_path, capsys):
    run = make_run_dir(tmp_path)

    code = main([str(run)])

    assert code == 0 and (run / "report.html").is_file()
    assert capsys.readouterr().out.strip() == str(run / "report.html")


def test_several_runs_write_one_comparison_page(tmp_path, monkeypatch):
    r1, r2 = make_run_dir(tmp_path, "r1"), make_run_dir(tmp_path, "r2", offset=0.1)
    monkeypatch.chdir(tmp_path)

    assert main([str(r1), str(r2)]) == 0
    assert main([str(r1), str(r2), "--out", str(tmp_path / "x.html"), "--metric", "auprc"]) == 0

    html = (tmp_path / "comparison.html").read_text()
    assert 'id="comparison"' in html and "tiny/r1" in html and "tiny/r2" in html
    assert 'data-metric="auprc"' in (tmp_path / "x.html").read_text()
    assert not (r1 / "report.html").exists()


def test_a_sweep_writes_each_point_and_the_comparison(tmp_path):
    sweep = make_sweep_dir(tmp_path)

    assert main([str(sweep)]) == 0

    assert (sweep / "report.html").is_file()
    assert all((p / "report.html").is_file() for p in (sweep / "points").iterdir())
    assert "points/privacy.target_epsilon=1.0/report.html" in (sweep / "report.html").read_text()


def test_a_sweep_reported_again_gets_its_privacy_utility_plot_redrawn(tmp_path):
    # Prepare: the sweep's sweep.csv (the points' records, one epsilon column) and its resolved
    # scenario's sweep key, as run_sweep writes them; an older figure in the folder
    import json

    import pandas as pd
    import yaml

    sweep = make_sweep_dir(tmp_path)
    frames = []
    for eps in (1.0, 8.0):
        point = sweep / "points" / f"privacy.target_epsilon={eps}"
        frame = pd.DataFrame(json.loads((point / "results.json").read_text())["metrics"])
        frames.append(frame.assign(**{"privacy.target_epsilon": eps}))
    pd.concat(frames).to_csv(sweep / "sweep.csv", index=False)
    old = (sweep / "privacy_utility.png").read_bytes()
    # Execute / Assert: without a swept epsilon key the figure is left as it is ...
    assert main([str(sweep)]) == 0
    assert (sweep / "privacy_utility.png").read_bytes() == old
    # ... and with one, it is drawn again from sweep.csv
    resolved = yaml.safe_load((sweep / "scenario.resolved.yaml").read_text())
    resolved["sweep"] = {"privacy.target_epsilon": [1.0, 8.0]}
    (sweep / "scenario.resolved.yaml").write_text(yaml.safe_dump(resolved))
    assert main([str(sweep)]) == 0
    new = (sweep / "privacy_utility.png").read_bytes()
    assert new != old and new[:4] == b"\x89PNG" and len(new) > 10 * len(old)


def test_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()

    missing = main([str(tmp_path / "nope")])
    err_missing = capsys.readouterr().err
    empty = main([str(tmp_path / "empty")])
    err_empty = capsys.readouterr().err

    assert missing == 2 and err_missing == f"error: {tmp_path / 'nope'}: no such run folder\n"
    assert (
        empty == 2 and err_empty == f"error: {tmp_path / 'empty'}: no results.json in this folder\n"
    )


def test_an_out_that_is_a_folder_is_one_line_naming_a_file_to_give(tmp_path, capsys):
    # Prepare: two runs, a sweep and an existing folder given as --out
    r1, r2 = make_run_dir(tmp_path, "r1"), make_run_dir(tmp_path, "r2", offset=0.1)
    sweep = make_sweep_dir(tmp_path)
    folder = tmp_path / "cmp"
    folder.mkdir()

    # Execute
    several = main([str(r1), str(r2), "--out", str(folder)])
    err_several = capsys.readouterr().err
    one = main([str(r1), "--out", str(folder)])
    err_one = capsys.readouterr().err
    swept = main([str(sweep), "--out", str(folder)])
    capsys.readouterr()

    # Assert: exit code 2, one line naming the option and a file to give; nothing written
    assert several == 2 and one == 2 and swept == 2
    assert err_several == (
        f"error: --out {folder}: a folder, not a file; fix: give a file name, "
        f"e.g. --out {folder / 'comparison.html'}\n"
    )
    assert err_one.count("\n") == 1 and err_one.endswith(f"--out {folder / 'report.html'}\n")
    assert not list(folder.iterdir()) and not list(tmp_path.rglob("report.html"))
    # a folder that does not exist yet, written as one (a trailing "/"): refused, not a file
    new = f"{tmp_path / 'new'}/"
    assert main([str(r1), "--out", new]) == 2
    assert capsys.readouterr().err.startswith(f"error: --out {new}: a folder, not a file")
    assert not (tmp_path / "new").exists()


def test_an_unknown_metric_is_one_line_listing_the_metrics_the_runs_hold(tmp_path, capsys):
    # Prepare: two runs and a sweep (whose points would get their own report first)
    r1, r2 = make_run_dir(tmp_path, "r1"), make_run_dir(tmp_path, "r2", offset=0.1)
    sweep = make_sweep_dir(tmp_path)
    out = tmp_path / "x.html"

    # Execute
    several = main([str(r1), str(r2), "--out", str(out), "--metric", "auc", "--metric", "aucc"])
    err_several = capsys.readouterr().err
    swept = main([str(sweep), "--metric", "aucc"])
    err_swept = capsys.readouterr().err

    # Assert: exit code 2, one line naming the option, the folders and the metrics held
    assert several == 2 and swept == 2
    assert err_several == (
        f"error: --metric 'aucc': not a final test metric of {r1}, {r2}; "
        "fix: one of the metrics held there: auc, auprc, n\n"
    )
    assert err_swept.startswith(f"error: --metric 'aucc': not a final test metric of {sweep};")
    assert err_swept.count("\n") == 1 and err_swept.endswith("held there: auc, auprc, n\n")
    # nothing written: no comparison page, no run's or sweep point's report
    assert not out.exists() and not (sweep / "report.html").exists()
    assert not list(tmp_path.rglob("report.html"))
