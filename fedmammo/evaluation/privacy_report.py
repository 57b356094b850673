"""privacy.json (what each centre's DP spent, recomputable) and the privacy-utility plot.

``privacy.json`` in a run directory holds:

- ``records``: one per centre, arm, seed and phase with ``accountant`` (rdp/prv), ``delta``,
  ``epsilon`` (this phase's steps alone), ``max_grad_norm``, ``history`` (list of
  ``[noise_multiplier, sample_rate, steps]``), and the composed budget of the arm at that
  centre: ``ledger``, ``ledger_epsilon``, ``ledger_history``; plus ``target_epsilon``,
  ``noise_multiplier``, ``sample_rate``, ``planned_steps`` and the ``rounds`` it trained;
  records of periodic sampling under DP (``sampling: poisson-periodic``: each step
  Poisson-samples one segment) also hold ``segment_history`` and ``ledger_segment_history``
  (``{segment: history}``) and ``segment_epsilons``; their ``history`` / ``ledger_history``
  keep the steps that touched every example, and ``epsilon`` / ``ledger_epsilon`` are the
  maximum over segments of the shared history composed with the segment's
  (:func:`recompute_epsilon`);
- ``refusals``: rounds a centre refused (budget or plan exhausted), with the reason;
- ``audits``: membership-inference results per centre, arm, seed and attack: AUC, TPR at 1%
  FPR (at ``fpr_reached``), the epsilon the attack proves at 95% confidence
  (``epsilon_lower_95``), the most any attack could prove on those counts
  (``epsilon_provable_95``) and, under DP, the epsilon spent; a ``WARNING`` note when an
  attack proves more than was spent;
- ``summary``: per centre the largest ``ledger_epsilon`` over arms and seeds;
- ``notes``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedmammo.files import replace_json
from fedmammo.privacy.accounting import epsilon_of
from fedmammo.privacy.audit import AuditResult

__all__ = [
    "PRIVACY_FILE",
    "PrivacyLog",
    "plot_privacy_utility",
    "recompute_epsilon",
    "sweep_privacy_plot",
    "utility_points",
]

logger = logging.getLogger(__name__)

PRIVACY_FILE = "privacy.json"
NO_DP = "no DP"
#: What a utility point's interval is (:func:`utility_points`).
CI95, NO_INTERVAL = "95% CI", "none"


class PrivacyLog:
    """The run's privacy.json, read on creation and rewritten by :meth:`write`."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / PRIVACY_FILE
        data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.records: list[dict] = data.get("records", [])
        self.refusals: list[dict] = data.get("refusals", [])
        self.audits: list[dict] = data.get("audits", [])
        self.notes: list[str] = data.get("notes", [])

    def _find(self, items: list[dict], **key: Any) -> dict | None:
        for item in items:
            if all(item.get(k) == v for k, v in key.items()):
                return item
        return None

    def record(self, *, centre: str, arm: str, seed: int, report: dict, round: int | None) -> dict:
        """Add or update the record of a centre's phase with a round's report (cumulative)."""
        key = {"centre": centre, "arm": arm, "seed": int(seed), "phase": report["phase"]}
        old = self._find(self.records, **key)
        rounds = list(old.get("rounds", [])) if old else []
        if round is not None and round not in rounds:
            rounds.append(int(round))
        new = {**key, **{k: v for k, v in report.items() if k != "phase"}, "rounds": rounds}
        if old is None:
            self.records.append(new)
        else:
            old.clear()
            old.update(new)
        return new

    def refusal(self, *, centre: str, arm: str, seed: int, round: int | None, reason: str) -> None:
        """Record a refused round."""
        self.refusals.append(
            {"centre": centre, "arm": arm, "seed": int(seed), "round": round, "reason": reason}
        )

    def audit(
        self, *, centre: str, arm: str, seed: int, result: dict, attack: str = "loss_threshold"
    ) -> None:
        """Record (or replace) one attack's audit of an arm's final model at a centre, with
        ``epsilon_provable_95`` (the most any attack could prove on its counts); a warning
        (log and notes) when the attack proves more epsilon than the ledger spent."""
        key = {"centre": centre, "arm": arm, "seed": int(seed), "attack": attack}
        old = self._find(self.audits, **key)
        if old is not None:
            self.audits.remove(old)
        if "n_members" in result and "n_nonmembers" in result:
            provable = AuditResult.provable_epsilon(
                result["n_members"], result["n_nonmembers"], result.get("delta") or 0.0
            )
            result = {**result, "epsilon_provable_95": provable}
        self.audits.append({**key, **result})
        spent = result.get("epsilon")
        for name, proved in (
            (attack, result.get("epsilon_lower_95")),
            ("LiRA", result.get("lira_epsilon_lower_95")),
        ):
            if spent is not None and proved is not None and proved > spent:
                text = (
                    f"WARNING: the {name} audit of {arm} (seed {seed}) at centre {centre} proves "
                    f"epsilon >= {proved:.2f} at 95% confidence, more than the {spent:.2f} its "
                    "ledger spent: check how this arm trained there"
                )
                logger.warning("%s", text)
                self.note(text)

    def note(self, text: str) -> None:
        """Add a note once."""
        if text not in self.notes:
            self.notes.append(text)

    def ledger_state(self, centre: str, ledger: str) -> dict | None:
        """The centre's ledger as ``CentreAccountant.from_state`` input (to resume a run)."""
        recs = [r for r in self.records if r["centre"] == centre and r.get("ledger") == ledger]
        if not recs:
            return None

        def steps(r: dict) -> int:
            segs = r.get("ledger_segment_history", {}).values()
            return sum(int(e[2]) for h in [r["ledger_history"], *segs] for e in h)

        def phase(r: dict) -> list:
            tagged = [
                [*e, k] for k, h in r.get("segment_history", {}).items() for e in h
            ]  # periodic steps carry their segment
            return [*r["history"], *tagged]

        latest = max(recs, key=steps)
        return {
            "accountant": latest["accountant"],
            "history": latest["ledger_history"],
            "segment_history": latest.get("ledger_segment_history", {}),
            "phases": {r["phase"]: phase(r) for r in recs},
            "plans": {
                r["phase"]: {
                    "noise_multiplier": r["noise_multiplier"],
                    "sample_rate": r["sample_rate"],
                    "planned_steps": float(r["planned_steps"]),
                }
                for r in recs
                if r.get("target_epsilon") is not None
            },
        }

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per centre: the largest composed epsilon over its arms and seeds, and its delta."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.records:
            best = out.get(r["centre"])
            if best is None or r["ledger_epsilon"] > best["max_epsilon"]:
                out[r["centre"]] = {
                    "max_epsilon": r["ledger_epsilon"],
                    "delta": r["delta"],
                    "arm": r["arm"],
                    "seed": r["seed"],
                }
        return out

    def write(self) -> Path:
        """Rewrite privacy.json (atomically replaced)."""
        payload = {
            "records": self.records,
            "refusals": self.refusals,
            "audits": self.audits,
            "summary": self.summary(),
            "notes": self.notes,
        }
        return replace_json(self.path, payload)


def recompute_epsilon(record: dict, *, ledger: bool = False) -> float:
    """Epsilon of a privacy.json record's history (or its ledger's) with fedmammo's accountant.

    Periodic records: the maximum over segments of the shared history composed with the
    segment's own steps.
    """
    history = record["ledger_history"] if ledger else record["history"]
    segments = record.get("ledger_segment_history" if ledger else "segment_history")
    if segments:
        return max(
            epsilon_of([*history, *h], record["delta"], record["accountant"])
            for h in segments.values()
        )
    return epsilon_of(history, record["delta"], record["accountant"])


# --------------------------------------------------------------------------- plot
def _epsilon_column(table: pd.DataFrame, key: str) -> pd.Series:
    return pd.to_numeric(table[key], errors="coerce")  # null / None / "" -> NaN (no DP)


def utility_points(
    table: pd.DataFrame, *, epsilon_key: str, centre: str | None = None, metric: str = "auc"
) -> pd.DataFrame:
    """Per arm and target epsilon (NaN = no DP): test AUROC at ``centre`` with an interval,
    and the attack AUC.

    With one seed the interval (``low``, ``high``) is the AUROC's own 95% CI (NaN where the
    test set was too small for one); with several, the AUROC is the mean over seeds and the
    interval its mean +- the s.d. over seeds, as the report's tables give it (a mean of CI
    bounds would be no CI of anything); ``interval`` says which. With ``centre`` None the
    AUROC is first averaged over the evaluating centres of each seed (no CI then). The
    attack AUC is the mean over the auditing centres and seeds.
    """
    if epsilon_key not in table.columns:
        raise KeyError(f"sweep table has no column {epsilon_key!r}")
    t = table.assign(_eps=_epsilon_column(table, epsilon_key).fillna(math.inf))
    final = t["segment"].isna() & t["round"].isna()
    util = t[final & (t["split"] == "test") & (t["metric"] == metric)]
    if centre is not None:
        util = util[util["centre"] == centre]
    util = util.astype({"value": float, "ci_low": float, "ci_high": float})
    per_seed = util.groupby(["arm", "_eps", "seed"]).agg(
        value=("value", "mean"),
        ci_low=("ci_low", "first"),  # read only where the seed has one record (one centre)
        ci_high=("ci_high", "first"),
        n=("value", "size"),
    )
    rows = []
    for (arm, eps), g in per_seed.groupby(level=["arm", "_eps"]):
        values = g["value"].to_numpy()
        if len(g) > 1:
            sd = float(np.std(values, ddof=1))
            low, high = values.mean() - sd, values.mean() + sd
            interval = f"s.d. over {len(g)} seeds"
        elif int(g["n"].iloc[0]) == 1 and np.isfinite(g["ci_low"].iloc[0]):
            low, high, interval = float(g["ci_low"].iloc[0]), float(g["ci_high"].iloc[0]), CI95
        else:
            low, high, interval = math.nan, math.nan, NO_INTERVAL
        rows.append((arm, eps, float(values.mean()), low, high, interval, len(g)))
    cols = ["arm", "_eps", "auc", "low", "high", "interval", "seeds"]
    u = pd.DataFrame(rows, columns=cols).set_index(["arm", "_eps"])
    attack = t[final & (t["split"] == "audit") & (t["metric"] == "attack_auc")]
    a = attack.astype({"value": float}).groupby(["arm", "_eps"]).agg(attack_auc=("value", "mean"))
    out = u.join(a, how="outer").reset_index().rename(columns={"_eps": "epsilon"})
    out["epsilon"] = out["epsilon"].replace(math.inf, np.nan)
    return out.reindex(columns=["arm", "epsilon", *cols[2:], "attack_auc"])


def _interval_label(pts: pd.DataFrame, centre: str | None) -> str:
    """The y label's word for the points' intervals, and where some have none."""
    kinds = sorted(set(pts["interval"].dropna()) - {NO_INTERVAL})
    why = "too few test patients" if centre else "a mean over centres"
    text = " / ".join(kinds) if kinds else f"no CI: {why}"
    if kinds and (pts["interval"] == NO_INTERVAL).any():
        text += "; a dot alone: no CI"
    return text


def plot_privacy_utility(
    table: pd.DataFrame,
    path: str | Path,
    *,
    epsilon_key: str,
    centre: str | None = None,
    metric: str = "auc",
) -> Path | None:
    """Draw ``privacy_utility.png``: AUROC vs epsilon per arm with each point's interval
    (:func:`utility_points`: the 95% CI with one seed, +- the s.d. over seeds with several,
    none where the test set held too few patients), attack AUC on a second axis. Both axes
    span the same range, so their one dotted line at 0.5 is chance for either.

    The no-DP point (epsilon null in the sweep) sits right of the largest epsilon, marked
    "no DP". Returns None when the table has no test AUROC and no audit.
    """
    from matplotlib.figure import Figure

    from fedmammo.evaluation.figures import write_png

    pts = utility_points(table, epsilon_key=epsilon_key, centre=centre, metric=metric)
    if pts.empty:
        logger.warning("privacy-utility plot: no test %s and no audit records", metric)
        return None
    finite = pts["epsilon"].dropna()
    top = float(finite.max()) if len(finite) else 1.0
    no_dp_x = top * 3.0
    pts = pts.assign(x=pts["epsilon"].fillna(no_dp_x))
    fig = Figure(figsize=(7.5, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    ax2 = ax.twinx()
    colours = ("tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple", "tab:brown")
    arms = sorted(set(pts["arm"]))
    for i, arm in enumerate(arms):
        g = pts[pts["arm"] == arm].sort_values("x")
        g = g.assign(x=g["x"] * 1.04 ** (i - (len(arms) - 1) / 2))  # dodge overlapping bars
        c = colours[i % len(colours)]
        ok = g["auc"].notna()
        if ok.any():
            ax.plot(g["x"][ok], g["auc"][ok], color=c, marker="o", label=f"{arm}: AUROC")
            # each interval as it is (a percentile CI of patients need not hold the AUROC)
            span = ok & g["low"].notna() & g["high"].notna()
            ax.vlines(g["x"][span], g["low"][span], g["high"][span], colors=c, lw=1)
        if g["attack_auc"].notna().any():
            ax2.plot(
                g["x"],
                g["attack_auc"],
                color=c,
                marker="x",
                linestyle="--",
                label=f"{arm}: attack AUC",
            )
    ax.set_xscale("log")
    ticks = sorted(set(pts["x"]))
    ax.set_xticks(ticks)
    ax.set_xlim(min(ticks) / 1.5, max(ticks) * 1.5)
    ax.set_xticklabels(
        [NO_DP if x == no_dp_x and pts["epsilon"].isna().any() else f"{x:g}" for x in ticks]
    )
    ax.minorticks_off()
    ax.set_xlabel("target epsilon per centre")
    where = f"at centre {centre}" if centre else "mean over evaluating centres"
    label = "AUROC" if metric == "auc" else metric
    ax.set_ylabel(f"test {label} (o; {_interval_label(pts, centre)}), {where}")
    ax2.set_ylabel("membership attack AUC (x), mean over centres\n(loss threshold or GAN-Leaks)")
    drawn = pts[["auc", "low", "high", "attack_auc"]].to_numpy(dtype=float)
    bottom = min(0.3, float(np.nanmin(drawn)) - 0.05) if np.isfinite(drawn).any() else 0.3
    for axis in (ax, ax2):  # one scale, so that 0.5 is chance on both
        axis.set_ylim(bottom, 1.0)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":", label="0.5: chance (both axes)")
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    fig.legend(
        handles[0] + handles2[0], handles[1] + handles2[1], fontsize=7, loc="lower center", ncol=3
    )
    ax.set_title("Privacy vs utility")
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(fig, out, 120)
    return out


def sweep_privacy_plot(
    run_dir: str | Path, table: pd.DataFrame, sweep_keys: list[str], *, centre: str | None = None
) -> Path | None:
    """``<run_dir>/privacy_utility.png`` when the sweep varies a ``*target_epsilon`` key."""
    keys = [k for k in sweep_keys if k.split(".")[-1] == "target_epsilon"]
    if not keys or table.empty:
        return None
    if len(keys) > 1:
        logger.warning("privacy-utility plot: several epsilon keys %s; using %s", keys, keys[0])
    if centre is not None and centre not in set(table["centre"]):
        centre = None
    return plot_privacy_utility(
        table, Path(run_dir) / "privacy_utility.png", epsilon_key=keys[0], centre=centre
    )
