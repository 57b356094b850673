"""privacy.json records (recomputable, resumable) and the privacy-utility plot of a sweep."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.dp_reference import independent_epsilon

from fedmammo.config import load_scenario
from fedmammo.evaluation.privacy_report import (
    PrivacyLog,
    generator_composition,
    plot_privacy_utility,
    recompute_epsilon,
    sweep_privacy_plot,
    utility_points,
)
from fedmammo.federation.runspec import RunSpec
from fedmammo.privacy.accounting import CentreAccountant, epsilon_of
from fedmammo.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[2]
DELTA = 1e-5


def report_of(acc: CentreAccountant, phase: str, *, target: float | None = 6.0) -> dict:
    """What decode_privacy yields for a centre's accountant after a round."""
    hist = acc.phases[phase]
    return {
        "phase": phase,
        "accountant": acc.mechanism,
        "ledger": "federated|0",
        "delta": DELTA,
        "epsilon": acc.phase_epsilon(phase, DELTA),
        "max_grad_norm": 1.0,
        "history": hist,
        "ledger_epsilon": acc.epsilon(DELTA),
        "ledger_history": acc.history,
        "noise_multiplier": hist[-1][0],
        "sample_rate": hist[-1][1],
        "planned_steps": 300,
        "round_steps": 100,
        "target_epsilon": target,
    }


def test_records_update_per_round_and_recompute_with_dp_accounting(tmp_path):
    # Prepare: a centre's ledger over two phases and two rounds.
    acc = CentreAccountant("rdp", centre="B")
    acc.record("gan", 1.3, 0.02, 200)
    log = PrivacyLog(tmp_path)
    log.record(centre="B", arm="federated", seed=0, report=report_of(acc, "gan"), round=None)
    acc.record("classifier", 1.1, 0.1, 100)
    log.record(centre="B", arm="federated", seed=0, report=report_of(acc, "classifier"), round=1)
    acc.record("classifier", 1.1, 0.1, 100)
    # Execute
    log.record(centre="B", arm="federated", seed=0, report=report_of(acc, "classifier"), round=2)
    log.write()
    data = json.loads((tmp_path / "privacy.json").read_text())
    # Assert: one record per phase; the latest round's cumulative history; recomputable.
    recs = {r["phase"]: r for r in data["records"]}
    assert set(recs) == {"gan", "classifier"}
    cls = recs["classifier"]
    assert cls["history"] == [[1.1, 0.1, 200]] and cls["rounds"] == [1, 2]
    assert cls["ledger_history"] == [[1.3, 0.02, 200], [1.1, 0.1, 200]]
    for r in recs.values():
        assert recompute_epsilon(r) == pytest.approx(r["epsilon"])
        assert r["epsilon"] == pytest.approx(independent_epsilon(r["history"], DELTA), rel=0.02)
    assert cls["ledger_epsilon"] == pytest.approx(
        independent_epsilon(cls["ledger_history"], DELTA), rel=0.02
    )
    assert data["summary"]["B"]["max_epsilon"] == pytest.approx(acc.epsilon(DELTA))


def test_the_no_dp_note_goes_when_a_centre_reports_dp(tmp_path):
    # Prepare: the server's scenario gives no centre DP; a deployed site's own profile does
    from fedmammo.evaluation.privacy_report import NO_DP_NOTE

    acc = CentreAccountant("rdp", centre="B")
    acc.record("classifier", 1.1, 0.1, 100)
    log = PrivacyLog(tmp_path)
    log.note(NO_DP_NOTE)
    # Execute: the site's report arrives; a later arm notes "no DP" again
    log.record(centre="B", arm="federated", seed=0, report=report_of(acc, "classifier"), round=1)
    log.note(NO_DP_NOTE)
    log.write()
    # Assert: privacy.json does not contradict its own record
    data = json.loads((tmp_path / "privacy.json").read_text())
    assert NO_DP_NOTE not in data["notes"] and len(data["records"]) == 1


def test_ledger_state_rebuilds_the_centre_accountant_for_a_resumed_run(tmp_path):
    # Prepare
    acc = CentreAccountant("rdp", centre="A")
    acc.record("classifier", 0.9, 0.05, 60)
    log = PrivacyLog(tmp_path)
    log.record(centre="A", arm="federated", seed=0, report=report_of(acc, "classifier"), round=1)
    log.write()
    # Execute
    state = PrivacyLog(tmp_path).ledger_state("A", "federated|0")
    rebuilt = CentreAccountant.from_state(state)
    # Assert: same composed budget, same phase steps, same plan of the noise.
    assert rebuilt.epsilon(DELTA) == pytest.approx(acc.epsilon(DELTA))
    assert rebuilt.phases == acc.phases
    assert rebuilt.plans["classifier"] == {
        "noise_multiplier": 0.9,
        "sample_rate": 0.05,
        "planned_steps": 300.0,
    }
    assert PrivacyLog(tmp_path).ledger_state("A", "local-A|0") is None


def test_refusals_audits_notes_and_non_finite_values_are_json_safe(tmp_path):
    # Prepare
    log = PrivacyLog(tmp_path)
    log.refusal(centre="A", arm="federated", seed=0, round=3, reason="privacy budget refusal: x")
    log.audit(centre="A", arm="federated", seed=0, result={"auc": 0.7, "epsilon": math.inf})
    log.audit(centre="A", arm="federated", seed=0, result={"auc": 0.6})
    log.note("n")
    log.note("n")
    # Execute
    log.write()
    text = (tmp_path / "privacy.json").read_text()
    data = json.loads(text)
    # Assert: strict JSON (no Infinity); an audit is replaced, not duplicated.
    assert "Infinity" not in text
    assert data["refusals"][0]["round"] == 3 and data["notes"] == ["n"]
    assert data["audits"] == [
        {"centre": "A", "arm": "federated", "seed": 0, "attack": "loss_threshold", "auc": 0.6}
    ]


def test_an_audit_proving_more_epsilon_than_spent_is_a_warning(tmp_path, caplog):
    # Prepare: LiRA proves 3.1 where the ledger spent 2.0; the loss attack proves 0.4.
    log = PrivacyLog(tmp_path)
    result = {"auc": 0.8, "epsilon": 2.0, "epsilon_lower_95": 0.4, "lira_epsilon_lower_95": 3.1}
    # Execute
    log.audit(centre="A", arm="local-A", seed=1, result=result)
    log.audit(centre="B", arm="local-B", seed=1, result={**result, "lira_epsilon_lower_95": 1.9})
    log.audit(centre="C", arm="pooled", seed=1, result={"auc": 0.9, "epsilon_lower_95": 5.0})
    # Assert: one warning, naming the attack, arm, centre and both epsilons; none without DP
    expected = (
        "WARNING: the LiRA audit of local-A (seed 1) at centre A proves epsilon >= 3.10 at 95% "
        "confidence, more than the 2.00 its ledger spent: check how this arm trained there"
    )
    assert log.notes == [expected]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [expected]


def test_an_audit_records_the_most_its_counts_could_prove(tmp_path):
    # Prepare: C's generator audit in the full privacy_budget sweep (112 and 28 patches).
    log = PrivacyLog(tmp_path)
    counts = {"n_members": 112.0, "n_nonmembers": 28.0, "delta": 1e-5, "epsilon": 8.0}
    # Execute
    log.audit(centre="C", arm="C_dcgan_all", seed=0, result={"auc": 0.51, **counts})
    log.audit(centre="C", arm="old", seed=0, result={"auc": 0.5})  # a record without counts
    # Assert: a perfect attack on 28 held-out patches proves epsilon >= 2.06 at most
    provable = math.log((0.025 ** (1 / 112) - 1e-5) / (1 - 0.025 ** (1 / 28)))
    assert log.audits[0]["epsilon_provable_95"] == pytest.approx(provable, rel=1e-9)
    assert log.audits[0]["epsilon_provable_95"] == pytest.approx(2.06, abs=0.01)
    assert "epsilon_provable_95" not in log.audits[1]


def _record(base: dict, centre: str, split: str, metric: str, value, low=None, high=None) -> dict:
    """One sweep.csv row: ``base`` (arm, seed, swept keys, ...) and the record's fields."""
    fields = {"centre": centre, "split": split, "metric": metric, "value": value}
    return {**base, **fields, "ci_low": low, "ci_high": high}


def sweep_table() -> pd.DataFrame:
    """A sweep.csv-like table: 2 arms x epsilons (1, 8, no DP) x 2 seeds, test AUC at T."""
    rows = []
    for arm in ("federated", "local-A"):
        for eps in (1.0, 8.0, None):
            for seed in (0, 1):
                base = {
                    "arm": arm,
                    "seed": seed,
                    "segment": None,
                    "round": None,
                    "privacy.target_epsilon": eps,
                }
                auc = {1.0: 0.6, 8.0: 0.7, None: 0.8}[eps] + 0.02 * seed
                rows.append(_record(base, "T", "test", "auc", auc, auc - 0.1, auc + 0.1))
                rows.append(_record(base, "A", "test", "auc", 0.5, 0.4, 0.6))
                for c, att in (("A", 0.5), ("B", 0.6 if eps is None else 0.5)):
                    rows.append(_record(base, c, "audit", "attack_auc", att))
                rows.append(
                    {
                        **base,
                        "centre": "T",
                        "split": "val",
                        "metric": "auc",
                        "value": 0.1,
                        "ci_low": None,
                        "ci_high": None,
                        "round": 1,
                    }
                )
    return pd.DataFrame(rows)


def test_utility_points_average_seeds_and_keep_the_no_dp_point():
    # Execute
    pts = utility_points(sweep_table(), epsilon_key="privacy.target_epsilon", centre="T")
    # Assert: 2 arms x 3 epsilons; means over seeds; attack mean over auditing centres.
    assert len(pts) == 6
    fed = pts[pts["arm"] == "federated"].set_index(
        pts["epsilon"].fillna(-1)[pts["arm"] == "federated"]
    )
    assert fed.loc[1.0, "auc"] == pytest.approx(0.61)
    assert fed.loc[-1, "auc"] == pytest.approx(0.81) and np.isnan(fed.loc[-1, "epsilon"])
    # two seeds: mean +- their s.d. (0.70 and 0.72), never a mean of the seeds' CI bounds
    sd = np.std([0.70, 0.72], ddof=1)
    assert (fed.loc[8.0, "low"], fed.loc[8.0, "high"]) == pytest.approx((0.71 - sd, 0.71 + sd))
    assert set(pts["interval"]) == {"s.d. over 2 seeds"} and set(pts["seeds"]) == {2}
    assert fed.loc[-1, "attack_auc"] == pytest.approx(0.55)
    assert fed.loc[8.0, "attack_auc"] == pytest.approx(0.5)


def test_with_one_seed_a_point_has_its_own_ci_or_none():
    table = sweep_table()
    table = table[table["seed"] == 0].copy()
    no_ci = (table["arm"] == "local-A") & (table["centre"] == "T") & (table["split"] == "test")
    table.loc[no_ci, ["ci_low", "ci_high"]] = np.nan  # too few patients for a CI
    pts = utility_points(table, epsilon_key="privacy.target_epsilon", centre="T")
    fed, local = (pts[pts["arm"] == a] for a in ("federated", "local-A"))
    assert fed["low"].tolist() == pytest.approx([0.5, 0.6, 0.7])
    assert fed["high"].tolist() == pytest.approx([0.7, 0.8, 0.9])
    assert set(fed["interval"]) == {"95% CI"}
    assert local["low"].isna().all() and set(local["interval"]) == {"none"}
    # over both evaluating centres of a seed: their mean, with no interval
    both = utility_points(table, epsilon_key="privacy.target_epsilon")
    assert both[both["arm"] == "federated"]["auc"].tolist() == pytest.approx([0.55, 0.6, 0.65])
    assert set(both["interval"]) == {"none"}


def test_plot_privacy_utility_writes_a_png_and_skips_empty_tables(tmp_path):
    # Execute
    out = plot_privacy_utility(
        sweep_table(), tmp_path / "p.png", epsilon_key="privacy.target_epsilon", centre="T"
    )
    empty = plot_privacy_utility(
        sweep_table().iloc[0:0], tmp_path / "e.png", epsilon_key="privacy.target_epsilon"
    )
    # Assert
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert empty is None and not (tmp_path / "e.png").exists()


def test_sweep_draws_the_plot_only_for_an_epsilon_sweep(tmp_path):
    # Prepare: the real sweep loop with a stand-in run that writes each point's results.
    table = sweep_table()
    sweep = {"privacy.target_epsilon": [1.0, 8.0, None]}
    scenario = load_scenario(ROOT / "scenarios" / "dp_quick.yaml", sets={"sweep": sweep})
    spec = RunSpec(
        scenario_file=str(ROOT / "scenarios" / "dp_quick.yaml"),
        run_dir=str(tmp_path),
        sets={"sweep": sweep},
    )
    seen = []

    def fake_run(point_spec, point_scenario):
        eps = point_scenario.privacy.target_epsilon
        seen.append((eps, point_scenario.resolved_profiles["tiny_a"].privacy.enabled))
        rows = table[
            table["privacy.target_epsilon"].isna()
            if eps is None
            else table["privacy.target_epsilon"] == eps
        ].drop(columns="privacy.target_epsilon")
        Path(point_spec.run_dir, "results.json").write_text(
            json.dumps({"metrics": json.loads(rows.to_json(orient="records"))})
        )
        return Path(point_spec.run_dir)

    # Execute
    run_sweep(spec, scenario, fake_run)
    none = sweep_privacy_plot(tmp_path / "x", table, ["seed"])
    # Assert: null = no DP; the plot exists at the run root.
    assert seen == [(1.0, True), (8.0, True), (None, False)]
    assert (tmp_path / "privacy_utility.png").stat().st_size > 1000
    assert none is None


def test_the_privacy_utility_plot_draws_each_ci_as_it_is(tmp_path, monkeypatch):
    # Prepare: capture the figure; one seed; one point's CI lies wholly below its AUROC
    from fedmammo.evaluation import figures

    drawn = []
    monkeypatch.setattr(figures, "write_png", lambda fig, path, *a, **kw: drawn.append(fig) or path)
    table = sweep_table()
    table = table[table["seed"] == 0].copy()
    table.loc[table.index[0], ["ci_low", "ci_high"]] = [0.1, 0.2]
    # Execute
    plot_privacy_utility(
        table, tmp_path / "p.png", epsilon_key="privacy.target_epsilon", centre="T"
    )
    # Assert: every CI drawn from its low to its high end, the shifted one too
    pts = utility_points(table, epsilon_key="privacy.target_epsilon", centre="T")
    ax, ax2 = drawn[0].axes
    spans = sorted(
        tuple(np.round(sorted(seg[:, 1]), 6)) for c in ax.collections for seg in c.get_segments()
    )
    expected = sorted(
        (round(lo, 6), round(hi, 6))
        for lo, hi in zip(pts["low"], pts["high"], strict=True)
        if np.isfinite(lo) and np.isfinite(hi)
    )
    assert (0.1, 0.2) in spans and spans == expected
    assert (
        "95% CI" in ax.get_ylabel()
        and "mean over centres\n(loss threshold or GAN-Leaks)" in ax2.get_ylabel()
    )
    # one scale on both axes (down to the lowest CI end), so the 0.5 line is chance on both
    assert ax.get_ylim() == ax2.get_ylim() == pytest.approx((0.05, 1.0))
    (chance,) = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert set(chance.get_ydata()) == {0.5}


# --------------------------------------------------------------------------- audit13 F2, F3, F5
def two_key_table() -> pd.DataFrame:
    """One seed of a sweep over epsilon (2, 8) x max_grad_norm (0.5, 2.0): test AUROC with
    its CI at T (each point its own value), attack AUC at A."""
    rows = []
    for arm in ("federated", "local-A"):
        for eps in (2.0, 8.0):
            for k, norm in enumerate((0.5, 2.0)):
                auc = 0.6 + 0.01 * eps + 0.05 * k + (0.1 if arm == "federated" else 0.0)
                base = {
                    "arm": arm,
                    "seed": 0,
                    "segment": None,
                    "round": None,
                    "privacy.target_epsilon": eps,
                    "privacy.max_grad_norm": norm,
                }
                rows.append(_record(base, "T", "test", "auc", auc, auc - 0.1, auc + 0.05))
                rows.append(_record(base, "A", "audit", "attack_auc", 0.5 + 0.01 * k))
    return pd.DataFrame(rows)


def drawn_figure(monkeypatch) -> list:
    from fedmammo.evaluation import figures

    drawn: list = []
    monkeypatch.setattr(figures, "write_png", lambda fig, path, *a, **kw: drawn.append(fig) or path)
    return drawn


def test_a_second_swept_key_makes_series_of_its_own_each_point_with_its_ci(tmp_path, monkeypatch):
    # Prepare: audit13 F2 (two keys: the plot averaged the two norms and drew no CI)
    table = two_key_table()
    drawn = drawn_figure(monkeypatch)
    keys = ["privacy.target_epsilon", "privacy.max_grad_norm"]
    # Execute
    pts = utility_points(
        table, epsilon_key=keys[0], centre="T", by=["privacy.max_grad_norm", "seed"]
    )
    sweep_privacy_plot(tmp_path, table, keys, centre="T")
    # Assert: 2 arms x 2 norms = 4 series of 2 points, each one sweep point with its own CI
    assert len(pts) == 8 and set(pts["interval"]) == {"95% CI"} and set(pts["seeds"]) == {1}
    assert set(pts["series"]) == {"max_grad_norm=0.5", "max_grad_norm=2"}
    point = pts[(pts["arm"] == "federated") & (pts["epsilon"] == 8.0)]
    point = point.set_index("series")
    assert point.loc["max_grad_norm=2", "auc"] == pytest.approx(0.83)
    assert point.loc["max_grad_norm=2", ["low", "high"]].tolist() == pytest.approx([0.73, 0.88])
    assert point.loc["max_grad_norm=0.5", "attack_auc"] == pytest.approx(0.5)
    ax, _ = drawn[0].axes
    auroc = [line for line in ax.get_lines() if line.get_label().endswith(": AUROC")]
    assert sorted(line.get_label() for line in auroc) == [
        "federated, max_grad_norm=0.5: AUROC",
        "federated, max_grad_norm=2: AUROC",
        "local-A, max_grad_norm=0.5: AUROC",
        "local-A, max_grad_norm=2: AUROC",
    ]
    assert sum(len(c.get_segments()) for c in ax.collections) == 8  # a CI per point
    assert "95% CI" in ax.get_ylabel() and "too few" not in ax.get_ylabel()
    # one key alone: the same records give 2 series (the norms averaged is not a sweep point)
    one = utility_points(table[table["privacy.max_grad_norm"] == 0.5], epsilon_key=keys[0])
    assert len(one) == 4 and set(one["series"]) == {""}


def test_a_missing_ci_is_given_its_own_cause(tmp_path, monkeypatch):
    # Prepare: one seed; local-A's records hold no CI; the mean over centres has none either
    table = sweep_table()
    table = table[table["seed"] == 0].copy()
    no_ci = (table["arm"] == "local-A") & (table["centre"] == "T") & (table["split"] == "test")
    table.loc[no_ci, ["ci_low", "ci_high"]] = np.nan
    drawn = drawn_figure(monkeypatch)
    eps = "privacy.target_epsilon"
    # Execute
    plot_privacy_utility(table, tmp_path / "a.png", epsilon_key=eps, centre="T")
    plot_privacy_utility(table, tmp_path / "b.png", epsilon_key=eps)
    plot_privacy_utility(
        table[table["arm"] == "local-A"], tmp_path / "c.png", epsilon_key=eps, centre="T"
    )
    # Assert
    labels = [fig.axes[0].get_ylabel() for fig in drawn]
    for fig in drawn:  # the long label fits the figure (its font shrinks)
        fig.canvas.draw()
        box = fig.axes[0].yaxis.label.get_window_extent()
        assert fig.bbox.x0 <= box.x0 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1
    assert labels[0].startswith(
        "test AUROC (o; 95% CI; a dot alone: no CI, none recorded (too few test patients, "
        "or no bootstrap))"
    )
    assert labels[1].startswith("test AUROC (o; no CI: a mean over centres)")
    assert labels[2].startswith(
        "test AUROC (o; no CI: none recorded (too few test patients, or no bootstrap))"
    )


def test_a_centre_the_swept_epsilon_never_reached_is_left_out_with_a_note(tmp_path, monkeypatch):
    # Prepare: audit13 F3: A kept its own target epsilon 3 at every point
    drawn = drawn_figure(monkeypatch)
    table = sweep_table()
    # Execute
    sweep_privacy_plot(
        tmp_path,
        table,
        ["privacy.target_epsilon"],
        centre="T",
        shadowed={"A": "its own target_epsilon 3 at every point"},
    )
    # Assert: local-A is not drawn at epsilons it never had; the note says why
    ax, ax2 = drawn[0].axes
    labels = [line.get_label() for line in ax.get_lines() + ax2.get_lines()]
    assert not any(label.startswith("local-A") for label in labels)
    assert "federated: AUROC" in labels
    (note,) = [t.get_text() for t in drawn[0].texts]
    assert " ".join(note.split()) == (
        "privacy.target_epsilon never reached centre A, whose own privacy block won (its own "
        "target_epsilon 3 at every point): local-A left out; there every arm trained so, "
        "whatever the x axis says"
    )


def fedavg_sweep(sets: dict) -> tuple:
    from fedmammo.sweep import load_points

    path = ROOT / "scenarios" / "privacy_budget_fedavg.yaml"
    sets = {"sweep": {"privacy.target_epsilon": [2.0, 8.0]}, **sets}
    scenario = load_scenario(path, sets=sets)
    return path, scenario, load_points(path, scenario, sets=sets, quick=False)


def test_the_planner_names_a_centre_an_epsilon_sweep_never_reaches(monkeypatch):
    # Prepare: audit13 F3: B's own privacy block (target 3) wins over the swept default
    from rich.console import Console

    from fedmammo import sweep

    monkeypatch.setattr(sweep, "_SHOWN", set())
    monkeypatch.setattr(sweep, "console", Console(record=True, width=400))
    # Execute
    _, scenario, points = fedavg_sweep({"centres.B.privacy": {"target_epsilon": 3.0}})
    fedavg_sweep({"centres.B.privacy": {"target_epsilon": 3.0}})  # --check's other mode
    shown = sweep.console.export_text()
    _, _, plain = fedavg_sweep({})
    _, _, off = fedavg_sweep({"centres.B.privacy": {}})
    # Assert: B alone (T tests only, A takes the sweep); printed once, as a warning
    expected = (
        "sweep key privacy.target_epsilon reaches centre B at no point: its own privacy block "
        "(in its profile or overrides) wins over the scenario's (its own target_epsilon 3 at "
        "every point); fix: remove that block if the sweep should reach it"
    )
    views = [sweep._privacy_view(p.scenario) for p in points]
    assert sweep.shadowed_privacy(list(scenario.sweep), views) == {"B": expected}
    assert [p.scenario.resolved_profiles["B"].privacy.target_epsilon for p in points] == [3, 3]
    assert shown.count(expected) == 1 and f"warning: {expected}" in shown
    # nothing when the sweep reaches every centre; without DP of its own: a note
    views = [sweep._privacy_view(p.scenario) for p in plain]
    assert sweep.shadowed_privacy(list(scenario.sweep), views) == {}
    assert (
        "note: sweep key privacy.target_epsilon reaches centre B at no point: its own privacy "
        "block (in its profile or overrides) wins over the scenario's (it trains without DP at "
        "every point)"
    ) in sweep.console.export_text()
    assert not any(p.scenario.resolved_profiles["B"].privacy.enabled for p in off)


def test_a_sweep_logs_the_shadowed_centre_and_the_plot_leaves_its_arm_out(tmp_path, monkeypatch):
    # Prepare: the real sweep loop with a stand-in run; B keeps its own target epsilon
    from fedmammo import sweep
    from fedmammo.config.loading import write_resolved
    from fedmammo.federation.run_log import run_log

    monkeypatch.setattr(sweep, "_SHOWN", set())
    sets = {
        "sweep": {"privacy.target_epsilon": [1.0, 8.0]},
        "centres.B.privacy.target_epsilon": 3.0,
    }
    scenario = load_scenario(ROOT / "scenarios" / "privacy_budget_fedavg.yaml", sets=sets)
    spec = RunSpec(
        scenario_file=str(ROOT / "scenarios" / "privacy_budget_fedavg.yaml"),
        run_dir=str(tmp_path),
        sets=sets,
    )
    table = sweep_table().replace({"local-A": "local-B"})
    table = table[table["privacy.target_epsilon"].notna()]

    def fake_run(point_spec, point_scenario):
        eps = point_scenario.privacy.target_epsilon
        rows = table[table["privacy.target_epsilon"] == eps].drop(columns="privacy.target_epsilon")
        Path(point_spec.run_dir, "results.json").write_text(
            json.dumps({"metrics": json.loads(rows.to_json(orient="records"))})
        )
        return Path(point_spec.run_dir)

    drawn = drawn_figure(monkeypatch)
    write_resolved(tmp_path, scenario, quick=False)  # as simulate does before the sweep
    # Execute
    with run_log(tmp_path):
        run_sweep(spec, scenario, fake_run)
    redrawn = sweep.redraw_privacy_utility(tmp_path)
    # Assert: the sweep's run.log and each point's say so; the plot (twice) leaves local-B out
    line = "sweep key privacy.target_epsilon reaches centre B at no point"
    assert (tmp_path / "run.log").read_text().count(line) == 1
    for point in ("privacy.target_epsilon=1.0", "privacy.target_epsilon=8.0"):
        log = (tmp_path / "points" / point / "run.log").read_text()
        assert f"WARNING fedmammo.sweep: {line}" in log
    assert redrawn is not None and len(drawn) == 2
    for fig in drawn:
        labels = [line.get_label() for line in fig.axes[0].get_lines()]
        assert "federated: AUROC" in labels and not any("local-B" in x for x in labels)
        assert "centre B" in fig.texts[0].get_text()


def gan_record(name: str, history: list, *, round_steps: int, target: float = 10.0) -> dict:
    """What decode_privacy gives for a DP generator's one round (phase gan)."""
    eps = epsilon_of(history, DELTA, "rdp")
    return {
        "phase": "gan",
        "accountant": "rdp",
        "ledger": f"{name}|0",
        "delta": DELTA,
        "epsilon": eps,
        "max_grad_norm": 1.0,
        "history": history,
        "ledger_epsilon": eps,
        "ledger_history": history,
        "noise_multiplier": history[-1][0],
        "sample_rate": history[-1][1],
        "planned_steps": round_steps,
        "round_steps": round_steps,
        "target_epsilon": target,
    }


def test_a_centres_generators_are_composed_in_the_summary_with_a_note(tmp_path):
    # Prepare: audit13 F5: porto's DCGAN and WGAN-GP, each 9.997 of 10, same 114 patches
    h = [[2.0337, 0.125, 800]]
    log = PrivacyLog(tmp_path)
    for name in ("porto_dcgan_all", "porto_wgan_gp_all"):
        log.record(
            centre="porto",
            arm=name,
            seed=0,
            report=gan_record(name, h, round_steps=800),
            round=None,
        )
    log.record(
        centre="lisbon",
        arm="lisbon_dcgan_all",
        seed=0,
        report=gan_record("l", h, round_steps=800),
        round=None,
    )
    # Execute
    log.write()
    PrivacyLog(tmp_path).write()  # read and written again: the note is remade, not repeated
    data = json.loads((tmp_path / "privacy.json").read_text())
    # Assert: composed over the concatenated histories with the same accountant and delta
    together = data["summary"]["porto"]["generators"]
    composed = epsilon_of([*h, *h], DELTA, "rdp")
    assert together["composed_epsilon"] == pytest.approx(composed)
    assert composed == pytest.approx(15.15, abs=0.02)
    assert together["released"] == ["porto_dcgan_all", "porto_wgan_gp_all"]
    assert together["ledgers"] == "one per generator"
    assert data["summary"]["porto"]["max_epsilon"] == pytest.approx(9.997, abs=0.01)
    assert data["summary"]["lisbon"]["generators"]["composed_epsilon"] == pytest.approx(
        epsilon_of(h, DELTA, "rdp")
    )
    assert data["notes"] == [
        "generators released together: centre porto: each generator within its target "
        f"epsilon 10 (at most {epsilon_of(h, DELTA, 'rdp'):.4g}), the 2 together spend "
        f"epsilon {composed:.4g} (composed, rdp, delta 1e-05): they were trained on the same "
        "images and all released in this run (porto_dcgan_all, porto_wgan_gp_all)"
    ]


def test_generators_of_one_site_ledger_are_not_composed_twice(tmp_path):
    # Prepare: ledger_scope site: the second generator's ledger holds the first one's steps
    first, second = [[2.0, 0.1, 300]], [[2.0, 0.1, 300], [3.0, 0.1, 200]]
    records = [
        {"centre": "B", "arm": "B_dcgan_all", "seed": 0, **gan_record("a", first, round_steps=300)},
        {
            "centre": "B",
            "arm": "B_wgan_gp_all",
            "seed": 0,
            **gan_record("b", second, round_steps=200),
        },
    ]
    # Execute
    together = generator_composition(records)["B"]
    # Assert: the shared ledger's own epsilon, which composes both already
    assert together["ledgers"] == "one for the centre"
    assert together["composed_epsilon"] == pytest.approx(epsilon_of(second, DELTA, "rdp"))
