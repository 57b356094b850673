"""A paper's headline checked against a run's records (fedmammo.evaluation.claims), and the
reproduction table built from run folders (fedmammo.reproduce)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from fedmammo.evaluation.claims import Claim, check_claim, holm_rejections
from fedmammo.reproduce import (
    CI_CHANGES,
    CLAIMS,
    _numbers,
    find_runs,
    lacks,
    main,
    render,
    select_run,
)


def rec(arm, value, lo=None, hi=None, *, seed=0, centre="c", segment=None, metric="auc"):
    return {
        "arm": arm, "seed": seed, "centre": centre, "segment": segment, "split": "test",
        "metric": metric, "value": value, "ci_low": lo, "ci_high": hi, "round": None,
    }  # fmt: skip


PAIRED = Claim("p", "x below baseline", "-1.2", "k", "x", None, ("delta_auc",), direction=-1)
TWO = Claim("p", "x above y", "80 vs 70", "k", "x", "y", ("auc",))


def test_a_paired_difference_whose_ci_excludes_zero_on_the_papers_side_agrees():
    records = [
        rec("x", -0.05, -0.08, -0.02, metric="delta_auc", segment="S3-Ma"),
        rec("x", -0.01, -0.04, 0.02, metric="delta_auc", segment="S3-Mb"),
    ]
    f = check_claim(PAIRED, records)
    assert (f.verdict, f.cells, f.cells_for, f.cells_against) == ("yes", 2, 1, 0)
    assert f.mean_difference == pytest.approx(-0.03)
    assert f.summary() == "Δ -3.0 (1/2 cells for, 0 against; 1 seed)"


def test_a_significant_difference_the_other_way_disagrees_and_says_where():
    f = check_claim(PAIRED, [rec("x", 0.04, 0.01, 0.07, metric="delta_auc")])
    assert f.verdict == "no" and f.why == "1 of 1 cells significantly the other way"


def test_overlapping_cis_or_mixed_cells_are_inconclusive():
    f = check_claim(PAIRED, [rec("x", -0.02, -0.05, 0.01, metric="delta_auc")])
    assert f.verdict == "inconclusive" and f.why == "no cell of 1 significant (Holm)"
    two = check_claim(TWO, [rec("x", 0.82, 0.74, 0.90), rec("y", 0.78, 0.70, 0.86)])
    assert two.verdict == "inconclusive" and two.why == "no cell of 1 significant (Holm)"
    mixed = [
        rec("x", -0.05, -0.08, -0.02, metric="delta_auc", seed=0),
        rec("x", 0.04, 0.01, 0.07, metric="delta_auc", seed=1),
    ]
    f = check_claim(PAIRED, mixed)
    assert f.verdict == "inconclusive" and f.why == "mixed: 1 cells for, 1 against"
    assert f.seeds == (0, 1)


def test_holm_rejects_step_down_at_the_family_level():
    assert holm_rejections([0.03, 0.005, 0.011]) == 2  # 0.005 <= 0.025/3, 0.011 <= 0.025/2
    assert holm_rejections([0.01, 0.02, 0.03]) == 0  # 0.01 > 0.025/3: none after it
    assert holm_rejections([0.02]) == 1 and holm_rejections([]) == 0
    assert holm_rejections([0.04, 0.04], alpha=0.1) == 2


def test_more_cells_need_stronger_evidence_and_a_recorded_p_decides_over_the_ci():
    # Prepare: paired differences whose 95% CIs lie below 0, each with a recorded p of 0.04
    def cells(k, p=0.04):
        out = []
        for seed in range(k):
            out += [
                rec("x", -0.05, -0.09, -0.01, metric="delta_auc", segment="S3-Ma", seed=seed),
                rec("x", p, metric="p_value", segment="S3-Ma", seed=seed),
            ]
        return out

    # Execute
    one, three = check_claim(PAIRED, cells(1)), check_claim(PAIRED, cells(3))
    weak = check_claim(PAIRED, cells(1, p=0.2))
    # Assert: one cell at one-sided 0.02 <= 0.025 counts; three at 0.02 > 0.025 / 3 do not
    # (three 95% CIs below 0 alone were a "yes" before Holm); a p of 0.2 outweighs the CI
    assert (one.verdict, one.cells_for) == ("yes", 1)
    assert (three.verdict, three.cells_for, three.why) == (
        "inconclusive",
        0,
        "no cell of 3 significant (Holm)",
    )
    assert weak.verdict == "inconclusive" and weak.mean_difference == pytest.approx(-0.05)


def test_two_arms_count_only_where_their_cis_do_not_overlap():
    records = [
        rec("x", 0.80, 0.75, 0.85, centre="a"), rec("y", 0.70, 0.65, 0.74, centre="a"),  # apart
        rec("x", 0.80, 0.70, 0.90, centre="b"), rec("y", 0.75, 0.68, 0.82, centre="b"),  # overlap
        rec("x", 0.90, 0.85, 0.95, centre="t"),  # no reference at t: not a cell
    ]  # fmt: skip
    f = check_claim(TWO, records)
    assert (f.verdict, f.cells, f.cells_for, f.cells_against) == ("yes", 2, 1, 0)
    assert f.mean_difference == pytest.approx((0.10 + 0.05) / 2)


def test_only_the_claims_cells_and_final_test_records_count():
    claim = Claim("p", "c", "r", "k", "x", "y", ("auc",), centres=("a",), segments=(None,))
    records = [
        rec("x", 0.9, centre="a"), rec("y", 0.5, centre="a"),
        rec("x", 0.1, centre="b"), rec("y", 0.9, centre="b"),  # another centre
        rec("x", 0.1, centre="a", segment="S1"), rec("y", 0.9, centre="a", segment="S1"),
        {**rec("x", 0.1, centre="a"), "round": 3}, {**rec("x", 0.1, centre="a"), "split": "val"},
        rec("x", float("nan"), centre="a", seed=1), rec("y", 0.5, centre="a", seed=1),
    ]  # fmt: skip
    f = check_claim(claim, records)
    assert f.cells == 1 and f.mean_difference == pytest.approx(0.4) and f.seeds == (0,)


def test_without_cis_a_direction_needs_three_seeds_all_on_one_side():
    def run(diffs):
        out = []
        for seed, d in enumerate(diffs):
            out += [rec("x", 0.5 + d, seed=seed), rec("y", 0.5, seed=seed)]
        return out

    assert check_claim(TWO, run([0.1, 0.2, 0.05])).verdict == "yes"
    assert check_claim(TWO, run([-0.1, -0.2, -0.05])).verdict == "no"
    f = check_claim(TWO, run([0.1, 0.2]))
    assert f.verdict == "inconclusive" and "2 seed(s)" in f.why
    f = check_claim(TWO, run([0.1, -0.2, 0.05]))
    assert f.verdict == "inconclusive" and f.why == "2 of 3 seeds in the paper's direction"
    assert f.summary() == "Δ -1.7 (3 cells, no CI; 3 seeds)"


def test_an_arm_the_run_does_not_have_is_no_data():
    f = check_claim(TWO, [rec("z", 0.5)])
    assert f.verdict == "no data" and f.why == "no final test auc of x vs y"
    assert f.summary() == "no final test auc of x vs y"


# ----------------------------------------------------------------- the reproduction table
def write_run(root, name, *, kind, quick, started, metrics, done=True, seeds=(0,)):
    path = root / kind / name
    path.mkdir(parents=True)
    results = {
        "meta": {"kind": kind, "quick": quick, "started": started, "seeds": list(seeds),
                 "git_commit": "abcdef0123", "git_dirty": False},
        "metrics": metrics,
        "progress": {"arm|0": {"round": 2, "done": done}},
    }  # fmt: skip
    (path / "results.json").write_text(json.dumps(results))
    return path


def periodic(delta):
    return [rec("exp2-pooled-periodic", delta, delta - 0.01, delta + 0.01, metric="delta_auc",
                segment="S3-Ma")]  # fmt: skip


def test_the_table_uses_the_latest_complete_run_per_method_and_scale(tmp_path):
    write_run(tmp_path, "old", kind="periodic_sampling", quick=False, started="2026-01-01",
              metrics=periodic(0.05))  # fmt: skip
    write_run(tmp_path, "new", kind="periodic_sampling", quick=False, started="2026-02-01",
              metrics=periodic(-0.05))  # fmt: skip
    write_run(tmp_path, "newest-but-unfinished", kind="periodic_sampling", quick=False,
              started="2026-03-01", metrics=periodic(0.5), done=False)  # fmt: skip
    write_run(tmp_path, "q", kind="periodic_sampling", quick=True, started="2026-01-01",
              metrics=periodic(0.03))  # fmt: skip
    runs = find_runs([tmp_path])
    assert len(runs) == 4
    claim = next(c for c in CLAIMS if c.kind == "periodic_sampling")
    assert select_run(runs, claim, quick=False).path.name == "new"
    assert select_run(runs, claim, quick=True).path.name == "q"
    text = render(runs, "cmd")
    row = next(ln for ln in text.splitlines() if "P. sampling above the baseline" in ln)
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[3] == "Δ +3.0 (1/1 cells for, 0 against; 1 seed) [1]"
    assert cells[4] == "Δ -5.0 (0/1 cells for, 1 against; 1 seed) [2]"
    assert cells[5] == "no"  # the full run decides
    assert "1. periodic_sampling quick (periodic_sampling/q; seeds 0; commit abcdef0)" in text
    assert "2. periodic_sampling full (periodic_sampling/new; seeds 0; commit abcdef0)" in text
    assert text == render(find_runs([tmp_path]), "cmd")  # regenerated: the same file
    mtl = next(ln for ln in text.splitlines() if "Multi-task above single-task" in ln)
    assert "| no run | no run | not run |" in mtl
    assert f"Summary: no 1, not run {len(CLAIMS) - 1}." in text  # yes, no, inconclusive, not run


def test_a_later_run_of_some_arms_answers_their_rows_and_the_earlier_run_the_others(tmp_path):
    # Prepare: a full run of every arm, then a later re-run of the fine-tuning arms only
    def mtl(arm, ref, diff):
        return [rec(arm, 0.5 + diff, 0.49 + diff, 0.51 + diff, centre="hmi"),
                rec(ref, 0.5, 0.49, 0.51, centre="hmi")]  # fmt: skip

    both = mtl("mtl", "single_task", 0.1) + mtl("finetune_u1_0.9", "finetune_u1_0", -0.1)
    write_run(tmp_path, "all", kind="mtl_finetune", quick=False, started="2026-01-01",
              metrics=both)  # fmt: skip
    write_run(tmp_path, "finetune", kind="mtl_finetune", quick=False, started="2026-02-01",
              metrics=mtl("finetune_u1_0.9", "finetune_u1_0", 0.1))  # fmt: skip
    runs = find_runs([tmp_path])
    tuning = next(c for c in CLAIMS if c.arm == "finetune_u1_0.9")
    multi = next(c for c in CLAIMS if c.arm == "mtl" and c.reference == "single_task")
    # Execute / Assert
    assert select_run(runs, tuning, quick=False).path.name == "finetune"
    assert select_run(runs, multi, quick=False).path.name == "all"
    text = render(runs, "cmd")
    assert "mtl_finetune full (mtl_finetune/all;" in text
    assert "mtl_finetune full (mtl_finetune/finetune;" in text
    row = next(ln for ln in text.splitlines() if tuning.claim in ln)
    assert "| Δ +10.0 (1/1 cells for, 0 against; 1 seed) [2] | yes |" in row


def test_an_unfinished_run_is_used_when_it_is_the_only_one_and_says_so(tmp_path):
    write_run(tmp_path, "r", kind="periodic_sampling", quick=False, started="2026-01-01",
              metrics=periodic(0.05), done=False)  # fmt: skip
    text = render(find_runs([tmp_path]), "cmd")
    assert "periodic_sampling/r, incomplete; seeds 0" in text


def test_a_run_killed_between_units_is_incomplete_though_its_units_are_done(tmp_path):
    # Prepare: every unit in progress done, but meta.finished false (the process was killed
    # before the method reached its later units)
    path = write_run(tmp_path, "r", kind="periodic_sampling", quick=False,
                     started="2026-01-01", metrics=periodic(0.05))  # fmt: skip
    results = json.loads((path / "results.json").read_text())
    results["meta"]["finished"] = False
    (path / "results.json").write_text(json.dumps(results))
    # Execute / Assert
    (run,) = find_runs([tmp_path])
    assert not run.complete
    assert "periodic_sampling/r, incomplete; seeds 0" in render([run], "cmd")


def test_the_command_writes_the_file_and_bad_paths_fail_in_one_line(tmp_path, capsys):
    write_run(tmp_path / "runs", "r", kind="periodic_sampling", quick=True,
              started="2026-01-01", metrics=periodic(0.05))  # fmt: skip
    out = tmp_path / "docs" / "reproduction.md"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert out.read_text().startswith("# Reproduction")
    assert f"{out}: {len(CLAIMS)} claims, 1 run folder(s)." in capsys.readouterr().out
    assert main([str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing'}: no such file or folder\n"
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "holds no run folder (no results.json under it)" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{not json")
    assert main([str(bad), "--out", str(out)]) == 2
    assert "results.json: not a readable results.json" in capsys.readouterr().err


def test_a_paired_claim_reads_the_arms_paired_gain_where_the_run_recorded_it():
    # Prepare: two arms whose CIs overlap, and the arm's paired gain over the reference on the
    # same resamples, whose CI excludes 0
    both = [rec("x", 0.82, 0.74, 0.90), rec("y", 0.78, 0.70, 0.86)]
    gain = rec("x", 0.04, 0.01, 0.07, metric="delta_auc")
    paired = Claim("p", "x above y", "80 vs 70", "k", "x", "y", ("auc",), paired=True)
    # Execute
    with_gain, old_run, unpaired = (
        check_claim(paired, [*both, gain]),
        check_claim(paired, both),
        check_claim(TWO, [*both, gain]),
    )
    # Assert: the paired CI decides where it exists; otherwise (or for a claim whose arm's
    # gain is not against its reference) the two CIs do
    assert (with_gain.verdict, with_gain.cells_for) == ("yes", 1)
    assert with_gain.mean_difference == pytest.approx(0.04)
    assert old_run.verdict == unpaired.verdict == "inconclusive"
    assert old_run.mean_difference == pytest.approx(0.04)


def test_paired_claims_compare_with_the_baseline_their_gain_is_recorded_against():
    # share_gans records each arm's gain over the receiver alone of its cell and classifier;
    # cyclegan_uda each arm's over source_only with its model
    paired = [c for c in CLAIMS if c.paired]
    assert {c.kind for c in paired} == {"share_gans", "cyclegan_uda"}
    for c in paired:
        assert c.metrics == ("auc",)
        if c.kind == "share_gans":
            arm, _, cell = c.arm.partition("@")
            label = arm.partition("~")[2]
            assert c.reference == (f"A~{label}@{cell}" if label else f"A@{cell}")
        else:
            assert c.reference == "source_only-" + c.arm.split("-", 1)[1]


# ------------------------------------------------------ runs made before a change of the CIs


def contrastive(simclr):
    """msvcl 0.80 [0.75, 0.85]: vs random separate (yes), vs supervised overlap
    (inconclusive), vs simclr as ``simclr`` (value, CI low, CI high) gives."""
    arms = {"msvcl": (0.80, 0.75, 0.85), "random": (0.50, 0.45, 0.55),
            "supervised": (0.79, 0.74, 0.84), "simclr": simclr}  # fmt: skip
    return [rec(a, *v, centre="D", metric="matching_accuracy") for a, v in arms.items()]


def test_runs_made_before_a_ci_change_get_a_note_naming_them_and_the_rerun_verdicts(tmp_path):
    # Prepare: a periodic-sampling and a contrastive run, and an ancestry that says both
    # predate every change (or none)
    write_run(tmp_path, "p", kind="periodic_sampling", quick=True, started="2026-01-01",
              metrics=periodic(0.05))  # fmt: skip
    write_run(tmp_path, "c", kind="contrastive_dg", quick=False, started="2026-01-01",
              metrics=contrastive((0.79, 0.74, 0.84)))  # fmt: skip
    runs = find_runs([tmp_path])
    # Execute
    old = render(runs, "cmd", lacking=lambda sha, commit: True).splitlines()
    new = render(runs, "cmd", lacking=lambda sha, commit: False)
    unknown = render(runs, "cmd", lacking=lambda sha, commit: None)
    # Assert: each change notes the runs of its methods, between "Generated by" and the
    # table's explanation; where the run made at the change reads another verdict, it says so
    assert old[2] == "Generated by `cmd`; do not edit by hand."
    assert old[-2:] == [  # the table's claims use the periodic run first
        "1. periodic_sampling quick (periodic_sampling/p; seeds 0; commit abcdef0)",
        "2. contrastive_dg full (contrastive_dg/c; seeds 0; commit abcdef0)",
    ]
    assert old[4].startswith("> **Run 1 below predates commit 2ac88cc**: since then the ")
    assert "resample patients" in old[4] and "cell counts and verdicts may differ" in old[4]
    assert old[6].startswith("> **Run 2 below predates commit 7d6e974**: since then ")
    assert old[6].endswith(
        "docs/contrastive_dg.md's full run made at 7d6e974 reads \"MSVCL above SimCLR on "
        'unseen vendors (four-task average)" as **no** where this page says inconclusive '
        "(its other 2 verdicts as here)."
    )
    assert old[8].startswith("Differences are fedmammo's arm")
    assert "predate" not in new and "predate" not in unknown
    assert new == unknown == "\n".join(old[:4] + old[8:]) + "\n"


def test_a_run_with_the_rerun_verdicts_gets_the_note_without_a_difference(tmp_path):
    # simclr above msvcl, CIs apart: "no", as the run made at 7d6e974
    write_run(tmp_path, "c", kind="contrastive_dg", quick=False, started="2026-01-01",
              metrics=contrastive((0.95, 0.90, 0.99)))  # fmt: skip
    text = render(find_runs([tmp_path]), "cmd", lacking=lambda sha, commit: True)
    note = next(ln for ln in text.splitlines() if "7d6e974**" in ln)
    assert note.endswith("cell counts and verdicts may differ from a run made now.")


def test_a_quick_runs_verdict_equal_to_the_reruns_is_no_difference(tmp_path):
    # the same "no", from a quick run only: "no (quick only)" on the page
    write_run(tmp_path, "c", kind="contrastive_dg", quick=True, started="2026-01-01",
              metrics=contrastive((0.95, 0.90, 0.99)))  # fmt: skip
    text = render(find_runs([tmp_path]), "cmd", lacking=lambda sha, commit: True)
    assert "no (quick only)" in text
    note = next(ln for ln in text.splitlines() if "7d6e974**" in ln)
    assert note.endswith("cell counts and verdicts may differ from a run made now.")


def test_a_note_lists_its_runs_in_spans():
    assert _numbers([1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]) == "1-5, 8-13"
    assert _numbers([6, 7]) == "6, 7" and _numbers([2]) == "2"


def test_the_changes_rerun_verdicts_name_claims_of_the_table():
    texts = {c.claim: c.kind for c in CLAIMS}
    for change in CI_CHANGES:
        assert {texts[claim] for claim, _ in change.verdicts} <= set(change.kinds)
        assert all(v in ("yes", "no", "inconclusive") for _, v in change.verdicts)


def _sha(rev):
    repo = str(Path(__file__).resolve().parents[2])
    args = ["git", "-C", repo, "rev-parse", "--verify", "--quiet", rev + "^{commit}"]
    out = subprocess.run(args, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_lacks_reads_the_ancestry_of_the_runs_commit_and_says_none_when_git_cannot_tell():
    before, at = _sha("2ac88cc^"), _sha("2ac88cc")
    if before is None or at is None:
        pytest.skip("this checkout does not hold commit 2ac88cc (a shallow clone?)")
    assert lacks(before, "2ac88cc") is True
    assert lacks(at, "2ac88cc") is False
    assert lacks("", "2ac88cc") is None
    assert lacks("abcdef0123", "2ac88cc") is None  # a commit the checkout does not hold
