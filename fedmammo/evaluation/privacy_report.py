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
- ``summary``: per centre the largest ``ledger_epsilon`` over arms and seeds; for a centre
  that trained DP generators (phase ``gan``) also ``generators``: the epsilon of all the
  generators it released in the run composed (:func:`generator_composition`: each generator
  is its own ledger, yet the receiver holds them all, trained on the same patches);
- ``notes``; one of them, remade at each write, when a centre's generators together exceed
  its target epsilon.
"""

from __future__ import annotations

import json
import logging
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedmammo.files import replace_json
from fedmammo.privacy.accounting import epsilon_of, over_target
from fedmammo.privacy.audit import AuditResult

__all__ = [
    "PRIVACY_FILE",
    "PrivacyLog",
    "composed_generators_note",
    "generator_composition",
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
#: The start of the notes :meth:`PrivacyLog.write` remakes from the records each time.
COMPOSED_NOTE = "generators released together: "
#: The note of a run whose scenario gives no centre DP; dropped once a centre reports DP (a
#: deployed site's own profile decides, not the server's scenario).
NO_DP_NOTE = "no centre trains with differential privacy in this run"


class PrivacyLog:
    """The run's privacy.json, read on creation and rewritten by :meth:`write`."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / PRIVACY_FILE
        data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.records: list[dict] = data.get("records", [])
        self.refusals: list[dict] = data.get("refusals", [])
        self.audits: list[dict] = data.get("audits", [])
        # the composition notes are remade from the records at each write, never kept
        self.notes: list[str] = [
            n for n in data.get("notes", []) if not n.startswith(COMPOSED_NOTE)
        ]

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
        if NO_DP_NOTE in self.notes:  # a centre's own profile trained with DP after all
            self.notes.remove(NO_DP_NOTE)
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
        """Add a note once (:data:`NO_DP_NOTE` only while no DP record is there)."""
        if text == NO_DP_NOTE and self.records:
            return
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
        """Per centre: the largest composed epsilon over its arms and seeds, and its delta;
        and ``generators`` (:func:`generator_composition`) for a centre that released DP
        generators."""
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
        for centre, together in generator_composition(self.records).items():
            out[centre]["generators"] = together
        return out

    def write(self) -> Path:
        """Rewrite privacy.json (atomically replaced)."""
        summary = self.summary()
        remade = [
            text
            for centre, s in summary.items()
            if "generators" in s and (text := composed_generators_note(centre, s["generators"]))
        ]
        payload = {
            "records": self.records,
            "refusals": self.refusals,
            "audits": self.audits,
            "summary": summary,
            "notes": [*self.notes, *remade],
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


# --------------------------------------------------------------------------- generators
def _steps(history: list) -> int:
    return sum(int(e[2]) for e in history)


def generator_composition(records: list[dict]) -> dict[str, dict[str, Any]]:
    """Per centre that trained DP generators (records of phase ``gan``): the epsilon of all
    the generators it released in the run, composed with their accountant and delta.

    Each shared generator is a ledger of its own (a what-if in the records), but a receiver
    that holds two generators of one centre holds two releases of the same patches. Where
    each generator's ledger holds its own steps alone (``ledger_scope`` arm, the simulation
    default) the composition is :func:`epsilon_of` over their ``ledger_history`` lists
    concatenated; where a ledger holds more steps than its generator took (``site``: one
    ledger for all the centre's work, which composes already) it is that ledger's, the one
    with the most steps. Generators of one seed compose; of several seeds, the largest.

    Returns ``{centre: {"released": [generator, ...], "composed_epsilon", "each_at_most"
    (the largest epsilon of one generator), "target_epsilon", "accountant", "delta",
    "seed", "ledgers": "one per generator" | "one for the centre"}}``; a centre whose
    generators used different accountants or deltas (no one composition) gets
    ``composed_epsilon`` None and a ``why``.
    """
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        if r.get("phase") == "gan" and r.get("ledger_history") is not None:
            groups.setdefault((str(r["centre"]), int(r["seed"])), []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for (centre, seed), recs in sorted(groups.items()):
        targets = [r["target_epsilon"] for r in recs if r.get("target_epsilon") is not None]
        entry: dict[str, Any] = {
            "released": [str(r["arm"]) for r in recs],
            "composed_epsilon": None,
            "each_at_most": max(float(r["ledger_epsilon"]) for r in recs),
            "target_epsilon": min(targets) if targets else None,
            "accountant": recs[0]["accountant"],
            "delta": recs[0]["delta"],
            "seed": seed,
        }
        if len({r["accountant"] for r in recs}) > 1 or len({r["delta"] for r in recs}) > 1:
            entry["why"] = "its generators used different accountants or deltas"
        else:
            own = [r.get("round_steps", _steps(r["history"])) for r in recs]
            shared = [r for r, n in zip(recs, own) if _steps(r["ledger_history"]) > int(n)]
            if shared:  # one ledger for everything the centre trained: it composes already
                history = max(shared, key=lambda r: _steps(r["ledger_history"]))["ledger_history"]
                entry["ledgers"] = "one for the centre"
            else:
                history = [e for r in recs for e in r["ledger_history"]]
                entry["ledgers"] = "one per generator"
            entry["composed_epsilon"] = epsilon_of(history, entry["delta"], entry["accountant"])
        best = out.get(centre)
        if best is None or (entry["composed_epsilon"] or 0.0) > (best["composed_epsilon"] or 0.0):
            out[centre] = entry
    return out


def composed_generators_note(centre: str, together: dict[str, Any]) -> str | None:
    """One line when a centre's generators (:func:`generator_composition`), each within its
    target, together spend more than it; None otherwise."""
    eps, target = together.get("composed_epsilon"), together.get("target_epsilon")
    n = len(together.get("released") or [])
    if n < 2 or eps is None or not over_target(eps, target):
        return None
    each = float(together["each_at_most"])
    within = (
        f"each generator within its target epsilon {target:g} (at most {each:.4g})"
        if not over_target(each, target)
        else f"one generator alone at {each:.4g} of its target epsilon {target:g}"
    )
    return (
        f"{COMPOSED_NOTE}centre {centre}: {within}, the {n} together spend epsilon "
        f"{eps:.4g} (composed, {together['accountant']}, delta {together['delta']:g}): they "
        f"were trained on the same images and all released in this run "
        f"({', '.join(together['released'])})"
    )


# --------------------------------------------------------------------------- plot
#: Why a utility point has no interval (:func:`utility_points`' ``why``).
NO_CI_RECORDED = "none recorded (too few test patients, or no bootstrap)"
NO_CI_MEAN = "a mean over centres"


def _epsilon_column(table: pd.DataFrame, key: str) -> pd.Series:
    return pd.to_numeric(table[key], errors="coerce")  # null / None / "" -> NaN (no DP)


def _value_text(value: Any) -> str:
    """A swept value as a legend shows it, alike from a sweep's records and its sweep.csv."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def _series_labels(table: pd.DataFrame, by: list[str]) -> pd.Series:
    """Per record: ``name=value, ...`` of the other swept keys (a key by its last part where
    that names it alone); "" without any."""
    if not by:
        return pd.Series("", index=table.index, dtype=object)
    last = [k.split(".")[-1] for k in by]
    names = [s if last.count(s) == 1 else k for k, s in zip(by, last, strict=True)]
    parts = [
        table[k].map(lambda v, n=n: f"{n}={_value_text(v)}") for k, n in zip(by, names, strict=True)
    ]
    out = parts[0]
    for part in parts[1:]:
        out = out + ", " + part
    return out


def utility_points(
    table: pd.DataFrame,
    *,
    epsilon_key: str,
    centre: str | None = None,
    metric: str = "auc",
    by: list[str] | tuple[str, ...] = (),
) -> pd.DataFrame:
    """Per arm, series and target epsilon (NaN = no DP): test AUROC at ``centre`` with an
    interval, and the attack AUC.

    ``by``: the sweep's other keys (not ``seed``): each combination of their values is a
    series of its own (``series``: ``max_grad_norm=0.5``, "" without), so every point is
    one sweep point, never a mean of several. With one seed the interval (``low``,
    ``high``) is the AUROC's own 95% CI; with several, the AUROC is the mean over seeds and
    the interval its mean +- the s.d. over seeds, as the report's tables give it (a mean of
    CI bounds would be no CI of anything); ``interval`` says which, and ``why`` why a point
    has none (``none recorded (...)``: its record holds no CI; ``a mean over centres``:
    with ``centre`` None the AUROC is first averaged over the evaluating centres of each
    seed). The attack AUC is the mean over the auditing centres and seeds.
    """
    if epsilon_key not in table.columns:
        raise KeyError(f"sweep table has no column {epsilon_key!r}")
    by = [k for k in by if k != epsilon_key and k != "seed" and k in table.columns]
    t = table.assign(
        _eps=_epsilon_column(table, epsilon_key).fillna(math.inf),
        series=_series_labels(table, by),
    )
    final = t["segment"].isna() & t["round"].isna()
    util = t[final & (t["split"] == "test") & (t["metric"] == metric)]
    if centre is not None:
        util = util[util["centre"] == centre]
    util = util.astype({"value": float, "ci_low": float, "ci_high": float})
    keys = ["arm", "series", "_eps"]
    per_seed = util.groupby([*keys, "seed"]).agg(
        value=("value", "mean"),
        ci_low=("ci_low", "first"),  # read only where the seed has one record (one centre)
        ci_high=("ci_high", "first"),
        n=("value", "size"),
    )
    rows = []
    for (arm, series, eps), g in per_seed.groupby(level=keys):
        values = g["value"].to_numpy()
        n = int(g["n"].iloc[0])
        why = ""
        if len(g) > 1:
            sd = float(np.std(values, ddof=1))
            low, high = values.mean() - sd, values.mean() + sd
            interval = f"s.d. over {len(g)} seeds"
        elif n == 1 and np.isfinite(g["ci_low"].iloc[0]):
            low, high, interval = float(g["ci_low"].iloc[0]), float(g["ci_high"].iloc[0]), CI95
        else:
            low, high, interval = math.nan, math.nan, NO_INTERVAL
            why = (
                NO_CI_RECORDED
                if n == 1
                else (NO_CI_MEAN if centre is None else f"a mean of {n} records")
            )
        rows.append((arm, series, eps, float(values.mean()), low, high, interval, why, len(g)))
    cols = ["arm", "series", "_eps", "auc", "low", "high", "interval", "why", "seeds"]
    u = pd.DataFrame(rows, columns=cols).set_index(keys)
    attack = t[final & (t["split"] == "audit") & (t["metric"] == "attack_auc")]
    a = attack.astype({"value": float}).groupby(keys).agg(attack_auc=("value", "mean"))
    out = u.join(a, how="outer").reset_index().rename(columns={"_eps": "epsilon"})
    out["epsilon"] = out["epsilon"].replace(math.inf, np.nan)
    out["series"] = out["series"].fillna("")
    return out.reindex(columns=["arm", "series", "epsilon", *cols[3:], "attack_auc"])


def _interval_label(pts: pd.DataFrame) -> str:
    """The y label's word for the points' intervals, and why those without one have none."""
    drawn = pts[pts["auc"].notna()]
    kinds = sorted(set(drawn["interval"].dropna()) - {NO_INTERVAL})
    whys = sorted(set(drawn.loc[drawn["interval"] == NO_INTERVAL, "why"].dropna()) - {""})
    why = "; ".join(whys)
    if not kinds:
        return f"no CI: {why}" if why else "no CI"
    text = " / ".join(kinds)
    if whys:
        text += f"; a dot alone: no CI, {why}"
    return text


def _series_name(arm: str, series: str) -> str:
    return f"{arm}, {series}" if series else arm


def plot_privacy_utility(
    table: pd.DataFrame,
    path: str | Path,
    *,
    epsilon_key: str,
    centre: str | None = None,
    metric: str = "auc",
    by: list[str] | tuple[str, ...] = (),
    notes: list[str] | tuple[str, ...] = (),
) -> Path | None:
    """Draw ``privacy_utility.png``: AUROC vs epsilon per arm (and per combination of the
    sweep's other keys ``by``: one line each, the legend naming them) with each point's
    interval (:func:`utility_points`: the 95% CI with one seed, +- the s.d. over seeds with
    several, none where its record holds none), attack AUC on a second axis. Both axes span
    the same range, so their one dotted line at 0.5 is chance for either. ``notes``: lines
    written under the legend.

    The no-DP point (epsilon null in the sweep) sits right of the largest epsilon, marked
    "no DP". Returns None when the table has no test AUROC and no audit.
    """
    from matplotlib.figure import Figure

    from fedmammo.evaluation.figures import write_png

    pts = utility_points(table, epsilon_key=epsilon_key, centre=centre, metric=metric, by=by)
    if pts.empty:
        logger.warning("privacy-utility plot: no test %s and no audit records", metric)
        return None
    finite = pts["epsilon"].dropna()
    top = float(finite.max()) if len(finite) else 1.0
    no_dp_x = top * 3.0
    pts = pts.assign(x=pts["epsilon"].fillna(no_dp_x))
    lines = sorted(dict.fromkeys(zip(pts["arm"], pts["series"], strict=True)))
    fig = Figure(figsize=(7.5, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    ax2 = ax.twinx()
    colours = [f"C{i}" for i in range(10)]
    for i, (arm, series) in enumerate(lines):
        g = pts[(pts["arm"] == arm) & (pts["series"] == series)].sort_values("x")
        g = g.assign(x=g["x"] * 1.04 ** (i - (len(lines) - 1) / 2))  # dodge overlapping bars
        c = colours[i % len(colours)]
        name = _series_name(arm, series)
        ok = g["auc"].notna()
        if ok.any():
            style = "-" if i < len(colours) else "-."  # past ten lines the colours repeat
            ax.plot(g["x"][ok], g["auc"][ok], color=c, marker="o", ls=style, label=f"{name}: AUROC")
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
                label=f"{name}: attack AUC",
            )
    ax.set_xscale("log")
    ticks = sorted(set(pts["x"]))
    ax.set_xticks(ticks)
    ax.set_xlim(min(ticks) / 1.5, max(ticks) * 1.5)
    ax.set_xticklabels(
        [NO_DP if x == no_dp_x and pts["epsilon"].isna().any() else f"{x:g}" for x in ticks]
    )
    ax.minorticks_off()
    ax.set_xlabel(f"target epsilon per centre ({epsilon_key})")
    where = f"at centre {centre}" if centre else "mean over evaluating centres"
    label = "AUROC" if metric == "auc" else metric
    ylabel = f"test {label} (o; {_interval_label(pts)}),\n{where}"
    widest = max(len(line) for line in ylabel.splitlines())  # ~0.55 em a character
    ax.set_ylabel(ylabel, fontsize=min(10.0, 3.4 * 72 / (0.55 * widest)))  # fits the axes
    ax2.set_ylabel("membership attack AUC (x), mean over centres\n(loss threshold or GAN-Leaks)")
    drawn = pts[["auc", "low", "high", "attack_auc"]].to_numpy(dtype=float)
    bottom = min(0.3, float(np.nanmin(drawn)) - 0.05) if np.isfinite(drawn).any() else 0.3
    for axis in (ax, ax2):  # one scale, so that 0.5 is chance on both
        axis.set_ylim(bottom, 1.0)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":", label="0.5: chance (both axes)")
    handles, labels = (
        a + b
        for a, b in zip(
            ax.get_legend_handles_labels(), ax2.get_legend_handles_labels(), strict=True
        )
    )
    # below the axes: the notes (wrapped), above them the legend; the figure grows to fit
    wrapped = [w for note in notes for w in textwrap.wrap(note, 150)]
    notes_in = 0.14 * len(wrapped) + (0.08 if wrapped else 0.0)
    longest = max((len(t) for t in labels), default=0)  # ~0.055 in a character at 7 pt
    ncol = max(1, min(3, int(7.3 // (0.055 * longest + 0.6))))
    legend_in = 0.16 * -(-len(labels) // ncol) + 0.12
    height = 4.55 + legend_in + notes_in
    fig.set_size_inches(7.5, height)
    fig.legend(
        handles,
        labels,
        fontsize=7,
        loc="lower center",
        ncol=ncol,
        bbox_to_anchor=(0.5, notes_in / height),
    )
    if wrapped:
        fig.text(0.01, 0.04 / height, "\n".join(wrapped), fontsize=6.5, ha="left", va="bottom")
    ax.set_title("Privacy vs utility")
    fig.tight_layout(rect=(0, (legend_in + notes_in) / height, 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(fig, out, 120)
    return out


def sweep_privacy_plot(
    run_dir: str | Path,
    table: pd.DataFrame,
    sweep_keys: list[str],
    *,
    centre: str | None = None,
    shadowed: dict[str, str] | None = None,
) -> Path | None:
    """``<run_dir>/privacy_utility.png`` when the sweep varies a ``*target_epsilon`` key: one
    line per arm and combination of the other swept keys (``seed`` pools as seeds).

    ``shadowed``: ``{centre: what it trained at instead}`` for the centres the swept epsilon
    never reached (their own privacy block won): their ``local-<centre>`` arm is left out
    (its x would be an epsilon it never had) and a note under the plot names them.
    """
    keys = [k for k in sweep_keys if k.split(".")[-1] == "target_epsilon"]
    if not keys or table.empty:
        return None
    if len(keys) > 1:
        logger.warning("privacy-utility plot: several epsilon keys %s; using %s", keys, keys[0])
    if centre is not None and centre not in set(table["centre"]):
        centre = None
    notes = []
    if keys[0].split(".")[0] == "privacy":  # a scenario-level key: a centre's own block wins
        for name, instead in sorted((shadowed or {}).items()):
            gone = f"local-{name}"
            left_out = gone in set(table["arm"])
            table = table[table["arm"] != gone]
            notes.append(
                f"{keys[0]} never reached centre {name}, whose own privacy block won ({instead}): "
                + (f"{gone} left out; " if left_out else "")
                + "there every arm trained so, whatever the x axis says"
            )
    return plot_privacy_utility(
        table,
        Path(run_dir) / "privacy_utility.png",
        epsilon_key=keys[0],
        centre=centre,
        by=[k for k in sweep_keys if k != keys[0]],
        notes=notes,
    )
