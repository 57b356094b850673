"""GAN-sharing paper tables from hand-made records, record naming, and the sample grid figure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from rich.console import Console

from fedmammo.errors import DataError
from fedmammo.evaluation.privacy_report import PrivacyLog
from fedmammo.evaluation.results import RECORD_FIELDS, RunRecorder
from fedmammo.methods.share_gans.report import (
    MOVED,
    TOGETHER,
    build_gan_tables,
    composed_markdown,
    generator_table,
    moves_pixels,
    plot_sample_grid,
    print_tables,
    record_arm,
    section,
    split_record_arm,
    tables_markdown,
)
from fedmammo.privacy.accounting import epsilon_of


def _record(arm, seed, metric, value, split="test", segment=None, rnd=None):
    return {
        "arm": arm,
        "seed": seed,
        "centre": "A",
        "segment": segment,
        "split": split,
        "metric": metric,
        "value": value,
        "ci_low": None,
        "ci_high": None,
        "round": rnd,
    }


@pytest.fixture()
def frame() -> pd.DataFrame:
    rows = []
    values = {  # arm -> auc per seed
        "A": (0.70, 0.74),
        "A+real_B": (0.80, 0.84),
        "A+synth_B_dcgan": (0.76, 0.78),
    }
    for arm, aucs in values.items():
        for seed, auc in enumerate(aucs):
            for subset, pct in (("all", 100), ("all", 50), ("masses", 100)):
                name = f"{arm}@{subset}-{pct}"
                rows += [
                    _record(name, seed, "auc", auc - (0.1 if pct == 50 else 0.0)),
                    _record(name, seed, "accuracy", 0.6 + seed / 10),
                    _record(name, seed, "f1", None),
                    _record(name, seed, "auprc", auc),
                ]
    # records the tables must ignore: validation, per round, per segment, other arms
    rows += [
        _record("A@all-100", 0, "auc", 0.0, split="val"),
        _record("A@all-100", 0, "auc", 0.0, rnd=3),
        _record("A@all-100", 0, "auc", 0.0, segment="S-Me"),
        _record("federated", 0, "auc", 0.0),
    ]
    rows += [  # lesion patches added: the real arm fewer than the synthetic one
        _record("A+real_B@all-100", 0, "n_added_lesion", 42, split="val"),
        _record("A+synth_B_dcgan@all-100", 0, "n_added_lesion", 64, split="val"),
        _record("A@all-100", 0, "n_added_lesion", 0, split="val"),
    ]
    rows += [
        _record("B_dcgan_all", 0, "frechet_distance", 1.25, split="generator"),
        _record("B_dcgan_all", 0, "n_snapshots", 5, split="generator"),
    ]
    return pd.DataFrame(rows, columns=list(RECORD_FIELDS))


def test_record_arm_round_trip_and_pixel_flag():
    # Prepare / Execute
    name = record_arm("A+synth_B_dcgan+synth_C_dcgan", "masses", 0.5)
    # Assert
    assert name == "A+synth_B_dcgan+synth_C_dcgan@masses-50"
    assert split_record_arm(name) == ("A+synth_B_dcgan+synth_C_dcgan", "masses", 0.5)
    assert split_record_arm("federated") is None and split_record_arm("x@all") is None
    assert moves_pixels("A+real_B") and not moves_pixels("A+synth_B_dcgan")
    assert not moves_pixels("real_A")  # the receiver's own name is not an addition


def test_one_table_per_subset_and_fraction_with_mean_and_std_over_seeds(frame):
    # Execute
    tables = build_gan_tables(frame, arm_order=["A+real_B", "A"])
    # Assert
    assert [(t.subset, t.fraction) for t in tables] == [("all", 1.0), ("all", 0.5), ("masses", 1.0)]
    first = tables[0].frame
    assert list(first.index) == ["A+real_B", "A", "A+synth_B_dcgan"]
    assert first.loc["A", "AUROC"] == "0.720 (0.028)"  # mean and sample std of 0.70, 0.74
    assert tables[1].frame.loc["A", "AUROC"] == "0.620 (0.028)"
    assert first.loc["A", "Accuracy"] == "0.650 (0.071)"
    assert first.loc["A", "F1"] == "n/a"
    assert first.loc["A", "seeds"] == "2"
    assert list(first["added lesions"]) == ["42", "0", "64"]
    assert tables[2].frame.loc["A", "added lesions"] == "-"  # not recorded there
    assert first.loc["A+real_B", "pixels moved"] == MOVED
    assert first.loc["A+synth_B_dcgan", "pixels moved"] == "no"
    assert tables[0].best["AUROC"] == ("A+real_B",) and "F1" not in tables[0].best
    # every arm at the same accuracy: none is the best
    assert set(first["Accuracy"]) == {"0.650 (0.071)"} and "Accuracy" not in tables[0].best


def test_arms_tied_at_the_best_mean_are_all_bold(frame):
    # Prepare: A+synth_B_dcgan's AUROC raised to A+real_B's in every seed and block
    real = frame[(frame["arm"].str.startswith("A+real_B")) & (frame["metric"] == "auc")]
    tied = frame.copy()
    for _, r in real.iterrows():
        twin = r["arm"].replace("A+real_B", "A+synth_B_dcgan")
        same = (tied["arm"] == twin) & (tied["metric"] == "auc") & (tied["seed"] == r["seed"])
        tied.loc[same, "value"] = r["value"]
    # Execute
    tables = build_gan_tables(tied)
    text = tables_markdown(tables, generator_table(tied))
    # Assert: both arms bold in the AUROC column, nobody else
    assert tables[0].best["AUROC"] == ("A+real_B", "A+synth_B_dcgan")
    assert "| A+real_B | 0.650 (0.071) | n/a | **0.820 (0.028)** |" in text
    assert "| A+synth_B_dcgan | 0.650 (0.071) | n/a | **0.820 (0.028)** |" in text


def test_markdown_bolds_the_best_and_explains_the_flag(frame):
    # Prepare
    tables = build_gan_tables(frame)
    # Execute
    text = tables_markdown(tables, generator_table(frame))
    # Assert
    title = "### all lesion types (GAN-sharing paper Table 1), 50% of the receiver's training data"
    assert title in text
    assert "| A+real_B | 0.650 (0.071) | n/a | **0.820 (0.028)** |" in text
    assert "simulation-only upper bound" in text
    assert "| B_dcgan_all | 1.25 | 5 |" in text


def test_the_generator_note_says_when_dp_centres_withheld_the_frechet_distance(frame):
    # Prepare: the same run with every Frechet distance withheld (not recorded), then one
    gens = generator_table(frame)
    withheld = gens.drop(columns=["Frechet"])
    mixed = pd.concat([gens, pd.DataFrame({"snapshots": ["2"]}, index=["C_dcgan_all"])])
    # Execute / Assert: the note never describes a column the table lacks
    text = tables_markdown([], withheld)
    assert "No Frechet distance: the DP centres withheld it" in text
    assert "Real floor" not in text
    assert "Empty: withheld by a DP centre" in tables_markdown([], mixed)
    assert "withheld" not in tables_markdown([], gens)


def test_generator_table_and_console_output(frame):
    # Prepare
    console = Console(record=True, width=100)
    # Execute
    gens = generator_table(frame)
    print_tables(build_gan_tables(frame), console, gens)
    out = console.export_text()
    # Assert
    assert list(gens.columns) == ["Frechet", "snapshots"]
    assert "A+synth_B_dcgan" in out and "YES" in out and "B_dcgan_all" in out


@pytest.mark.parametrize("width", [65, 80])
def test_a_narrow_console_folds_the_tables_and_cuts_no_name(frame, width):
    # Prepare: 80 columns is what a log file gets (with the study's longer arm names the
    # arm column took all the room and "Accuracy" was cut to "Accura…"); 65 is about the
    # narrowest the five metric columns fit in
    console = Console(record=True, width=width)
    # Execute
    print_tables(build_gan_tables(frame), console, generator_table(frame))
    out = console.export_text()
    # Assert: nothing cropped or cut short; the headers whole; each arm name whole once the
    # pieces it was folded into (the first word of the lines that start in its column) are
    # joined
    assert "…" not in out and max(map(len, out.splitlines())) <= width
    for header in ("Accuracy", "AUROC", "AUPRC", "moved"):
        assert header in out, header
    first_column = "".join(line.split()[0] for line in out.splitlines() if line[2:3].strip())
    for arm in ("A+real_B", "A+synth_B_dcgan", "B_dcgan_all"):
        assert arm in first_column, arm


def test_empty_records_give_no_tables():
    # Execute / Assert
    assert build_gan_tables(pd.DataFrame(columns=list(RECORD_FIELDS))) == []
    assert "No final test metrics" in tables_markdown([])


def test_sample_grid_draws_each_row(tmp_path):
    # Prepare
    rng = np.random.default_rng(0)
    rows = [("real", rng.random((5, 16, 16))), ("synthetic", rng.random((30, 16, 16)))]
    # Execute
    path = plot_sample_grid(rows, tmp_path / "plots" / "grid.png", columns=6, title="t")
    image = imread(path)
    # Assert: wider than tall (6 columns, 2 rows), and not blank
    assert image.shape[1] > image.shape[0] and image[..., :3].std() > 0.05
    with pytest.raises(DataError, match="not \\(N, S, S\\)"):
        plot_sample_grid([("bad", np.zeros((16, 16)))], tmp_path / "bad.png")


def _dp_generators(tmp_path):
    """audit13 F5: porto released a DCGAN and a WGAN-GP, each 9.997 of its target 10,
    trained on the same 114 patches: the records, and privacy.json as the run wrote it."""
    history = [[2.0337, 0.125, 800]]
    eps = epsilon_of(history, 1e-5, "rdp")
    log = PrivacyLog(tmp_path)
    rows = []
    for name in ("porto_dcgan_all", "porto_wgan_gp_all"):
        report = {
            "phase": "gan",
            "accountant": "rdp",
            "ledger": f"{name}|0",
            "delta": 1e-5,
            "epsilon": eps,
            "max_grad_norm": 1.0,
            "history": history,
            "ledger_epsilon": eps,
            "ledger_history": history,
            "noise_multiplier": 2.0337,
            "sample_rate": 0.125,
            "planned_steps": 800,
            "round_steps": 800,
            "target_epsilon": 10.0,
        }
        log.record(centre="porto", arm=name, seed=0, report=report, round=None)
        for metric, value in (("n_training_patches", 114), ("epsilon", eps)):
            rows.append({**_record(name, 0, metric, value, split="generator"), "centre": "porto"})
    log.write()
    return pd.DataFrame(rows, columns=list(RECORD_FIELDS)), json.loads(log.path.read_text())


def test_the_generator_table_gives_a_centres_generators_together(tmp_path):
    # Prepare
    frame, privacy = _dp_generators(tmp_path)
    composed = epsilon_of([[2.0337, 0.125, 800]] * 2, 1e-5, "rdp")
    console = Console(record=True, width=100)
    # Execute
    gens = generator_table(frame, privacy)
    text = tables_markdown([], gens)
    print_tables([], console, gens)
    # Assert: each generator 9.997, together the composition of both histories (15.15)
    assert gens["DP epsilon"].tolist() == ["9.997", "9.997"]
    assert gens[TOGETHER].tolist() == [f"{composed:.4g} (2 generators)"] * 2
    assert f"{composed:.4g}" == "15.14"
    note = (
        "generators released together: centre porto: each generator within its target "
        "epsilon 10 (at most 9.997), the 2 together spend epsilon 15.14 (composed, rdp, delta "
        "1e-05): they were trained on the same images and all released in this run "
        "(porto_dcgan_all, porto_wgan_gp_all)"
    )
    assert f"- {note}" in text
    assert note in " ".join(console.export_text().split())
    # without privacy.json: the table as before
    assert TOGETHER not in generator_table(frame).columns


def test_results_md_gets_the_composition_the_runner_s_table_lacks(tmp_path):
    # Prepare: the runner's tables (without privacy.json), then the run's privacy.json
    frame, _ = _dp_generators(tmp_path)
    stored = tables_markdown([], generator_table(frame))
    recorder = RunRecorder(tmp_path, meta={"share_gans_tables_markdown": stored})
    # Execute
    text = section(recorder, Console(record=True))
    # Assert: the runner's text, then a table per centre and the note
    assert text.startswith(stored)
    assert "## DP generators of each sharing centre, together" in text
    assert (
        "| porto | porto_dcgan_all, porto_wgan_gp_all | 9.997 | 15.14 (2 generators) | 10 |" in text
    )
    assert "- generators released together: centre porto: each generator within" in text
    # a table that gives it already is not repeated
    given = tables_markdown(
        [], generator_table(frame, json.loads((tmp_path / "privacy.json").read_text()))
    )
    recorder.meta["share_gans_tables_markdown"] = given
    assert section(recorder, Console(record=True)) == given


def test_one_dp_generator_per_centre_adds_no_composition(tmp_path):
    # Prepare: porto's DCGAN alone
    frame, privacy = _dp_generators(tmp_path)
    privacy["records"] = privacy["records"][:1]
    frame = frame[frame["arm"] == "porto_dcgan_all"]
    # Execute / Assert: its own row's epsilon says it all
    gens = generator_table(frame, privacy)
    assert TOGETHER not in gens.columns and gens.attrs["notes"] == []
    assert composed_markdown(privacy) == ""
