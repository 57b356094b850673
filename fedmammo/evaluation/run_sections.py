"""The report's run header, centres and audit-trail sections (HTML strings)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fedmammo.evaluation.html_parts import (
    NOT_RECORDED,
    Cell,
    esc,
    fmt_number,
    img_tag,
    records_table,
    table,
)
from fedmammo.evaluation.report import format_reference, reference_caveat
from fedmammo.evaluation.run_folder import RunFolder

__all__ = ["audit_section", "centres_section", "header_section", "started_at"]

_PRIVACY_COLUMNS = (
    "centre",
    "arm",
    "seed",
    "phase",
    "accountant",
    "epsilon",
    "ledger_epsilon",
    "delta",
    "noise_multiplier",
    "sample_rate",
    "planned_steps",
    "target_epsilon",
    "rounds",
)


def started_at(run: RunFolder) -> str | None:
    """The run's start from ``meta.started`` or its folder name (``YYYYMMDD-HHMMSS``)."""
    if run.meta.get("started"):
        return str(run.meta["started"])
    if not re.fullmatch(r"\d{8}-\d{6}", run.path.name):
        return None
    return datetime.strptime(run.path.name, "%Y%m%d-%H%M%S").strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: Any) -> str:
    if seconds is None:
        return NOT_RECORDED
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    minutes, sec = divmod(round(s), 60)
    hours, minutes = divmod(minutes, 60)
    human = f"{hours} h {minutes} min" if hours else f"{minutes} min {sec} s"
    return f"{s:.1f} s ({human})"


#: What results.json ``progress`` counts: its keys (``<arm>|<seed>``) are the units a resumed
#: run skips once done, an arm-seed run or a method's phase (share_gans' generators,
#: contrastive_dg's styles, cyclegan_uda's translators).
_EACH = "each an arm-seed run or a method phase"


def _status(run: RunFolder) -> str:
    progress = run.results.get("progress") or {}
    if not progress:
        return NOT_RECORDED
    done = [k for k, v in progress.items() if v.get("done")]
    if run.meta.get("finished") is False:  # the process ended before its method returned
        return (
            f"incomplete: the run stopped before its method finished (killed, interrupted or "
            f"an error: run.log); {len(done)} units done ({_EACH}); the others, begun or not, "
            f"are trained by: python -m fedmammo.simulate --resume {run.path}"
        )
    # an arm that ended early is finished: done (a privacy budget) or stopped without it (too
    # few centres: a --resume tries it again, a site may be back)
    retried = [k for k, v in progress.items() if v.get("stopped") and not v.get("done")]
    if len(done) + len(retried) == len(progress):
        stopped = [str(v["stopped"]).split("; ")[0] for v in progress.values() if v.get("stopped")]
        early = f"; ended early: {' | '.join(stopped)}" if stopped else ""
        again = f" ({len(retried)} of them tried again by --resume)" if retried else ""
        return f"complete ({len(done)} units done, {_EACH}){early}{again}"
    pending = ", ".join(
        f"{k} after round {v.get('round', 0)}"
        for k, v in progress.items()
        if not v.get("done") and k not in retried
    )
    return f"incomplete: {len(done)} of {len(progress)} units done ({_EACH}); {pending}"


def _machine(m: Any) -> str:
    if not isinstance(m, Mapping) or not m:
        return NOT_RECORDED
    gpus = m.get("gpus")
    parts = [
        str(m.get("cpu") or "CPU not recorded"),
        f"{m['cpu_count']} cores" if m.get("cpu_count") else "",
        f"{m['memory_gib']} GiB RAM" if m.get("memory_gib") else "",
        ("GPU: " + ", ".join(gpus)) if gpus else ("no GPU" if gpus is not None else ""),
        str(m.get("platform") or ""),
    ]
    return "; ".join(p for p in parts if p)


def _threads(centres: Any) -> str:
    """Each centre's torch threads as it reported them (a run's numbers depend on them), one
    value when all agree."""
    if not isinstance(centres, Mapping):
        return NOT_RECORDED
    found = {c: v.get("torch_threads") for c, v in centres.items() if isinstance(v, Mapping)}
    known = {c: n for c, n in found.items() if n is not None}
    if not known:
        return NOT_RECORDED
    if len(set(known.values())) == 1 and len(known) == len(found):
        return str(next(iter(known.values())))
    return ", ".join(f"{c} {found[c] if found[c] is not None else '?'}" for c in found)


def header_section(run: RunFolder) -> str:
    """Scenario, description, provenance, seeds, wall time, machine."""
    meta, sc = run.meta, run.scenario
    strategy = sc.get("strategy") or {}
    versions = meta.get("versions")
    codes = meta.get("code_history") or [meta]
    commit = ", then ".join(
        f"{c.get('git_commit') or NOT_RECORDED}"
        + (" (with uncommitted changes)" if c.get("git_dirty") else "")
        for c in codes
    )
    if len(codes) > 1:
        commit += " (resumed on other code)"
    facts = [
        ("scenario", meta.get("scenario") or sc.get("name") or NOT_RECORDED),
        ("description", sc.get("description") or NOT_RECORDED),
        (
            "method",
            f"{meta.get('kind') or strategy.get('kind') or NOT_RECORDED}"
            + (f": {strategy['description']}" if strategy.get("description") else ""),
        ),
        ("run folder", str(run.path.resolve())),
        ("started", started_at(run) or NOT_RECORDED),
        *([("resumed", ", ".join(map(str, meta["resumed"])))] if meta.get("resumed") else []),
        ("status", _status(run)),
        ("settings", ", ".join(run.settings) or "scenario as written"),
        ("seeds", ", ".join(map(str, meta.get("seeds") or sc.get("seeds") or [])) or NOT_RECORDED),
        ("data seed", fmt_number(sc.get("data_seed"))),
        ("image size", " x ".join(map(str, sc.get("image_size") or [])) or NOT_RECORDED),
        ("quick mode", fmt_number(meta.get("quick"))),
        ("deployment", fmt_number(meta.get("deployment"))),
        ("wall time", _duration(meta.get("wall_seconds"))),
        ("start-up time", _duration(meta.get("startup_seconds"))),
        ("git commit", commit or NOT_RECORDED),
        (
            "package versions",
            ", ".join(f"{k} {v}" for k, v in versions.items())
            if isinstance(versions, Mapping) and versions
            else NOT_RECORDED,
        ),
        ("machine", _machine(meta.get("machine"))),
        ("torch threads per centre", _threads(meta.get("centres"))),
    ]
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts)
    return f'<section id="run"><h2>Run</h2><dl class="facts">{items}</dl></section>'


# ---------------------------------------------------------------------- centres
def _centre_names(run: RunFolder) -> list[str]:
    listed = [c.get("name") or c.get("profile") for c in run.scenario.get("centres") or []]
    centres = run.meta.get("centres") or {}
    names = [*(run.meta.get("centre_order") or []), *listed, *centres]
    keep = [n for n in dict.fromkeys(names) if n]
    # pseudo-centres (the simulation-only pooled node) only when they hold counts
    return [n for n in keep if n in listed or (centres.get(n) or {}).get("counts")]


def _yes(flag: Any) -> str:
    return "yes" if flag else "no"


def _segment_counts(counts: Mapping[str, Any]) -> dict[str, dict[str, dict[str, int]]]:
    out: dict[str, dict[str, dict[str, int]]] = {}
    for key, n in counts.items():
        parts = key.split("|")
        if len(parts) == 4 and parts[0] == "n":
            _, split, segment, label = parts
            out.setdefault(segment, {}).setdefault(split, {})[label] = int(n)
    return out


def _split_cell(by_label: Mapping[str, int] | None) -> Cell:
    if not by_label:
        return Cell("0", cls="num")
    total = sum(by_label.values())
    text = f"{total} ({by_label.get('1', 0)} malignant"
    text += f", {by_label['na']} unlabelled)" if by_label.get("na") else ")"
    return Cell(text, cls="num", attrs={"data-n": total})


def _budget(privacy: Mapping[str, Any] | None) -> str:
    if not privacy or (
        privacy.get("target_epsilon") is None and privacy.get("noise_multiplier") is None
    ):
        return "no DP"
    parts = []
    if privacy.get("target_epsilon") is not None:
        parts.append(f"target epsilon {fmt_number(privacy['target_epsilon'])}")
    if privacy.get("noise_multiplier") is not None:
        parts.append(f"noise {fmt_number(privacy['noise_multiplier'])}")
    if privacy.get("delta") is not None:
        parts.append(f"delta {fmt_number(privacy['delta'])}")
    return ", ".join(parts)


def centres_section(run: RunFolder) -> str:
    """Centres: role, data, consent, budget and epsilon spent; images per segment; thumbnails."""
    profiles = run.scenario.get("resolved_profiles") or {}
    roles = {c.get("name"): c.get("role") for c in run.scenario.get("centres") or []}
    meta_centres = run.meta.get("centres") or {}
    summary = (run.privacy or {}).get("summary") or {}
    rows, seg_rows, grids = [], [], []
    for name in _centre_names(run):
        profile = profiles.get(name) or {}
        data = profile.get("data") or {}
        synthetic = data.get("synthetic") is not None
        info = meta_centres.get(name) or {}
        counts = info.get("counts") or {}
        source = (
            "synthetic (phantom)"
            if synthetic
            else (f"dataset {data['format']}" if data.get("format") else NOT_RECORDED)
        )
        sharing = profile.get("sharing")
        consent = (
            f"models {_yes(sharing.get('models'))}, generators {_yes(sharing.get('generators'))}"
            + ("" if sharing.get("metrics", True) else ", metrics no")
            + (
                ", real patches (simulation only)"
                if sharing.get("real_patches_in_simulation")
                else ""
            )
            if sharing
            else NOT_RECORDED
        )
        missing = (profile.get("labels") or {}).get("missing") or {}
        labels = (
            ", ".join(f"{k} {100 * (1 - float(v)):.0f}%" for k, v in missing.items())
            if missing
            else ("all" if profile else NOT_RECORDED)
        )
        if run.privacy is None:  # no DP round wrote privacy.json: none spent without DP
            no_dp = bool(profile) and _budget(profile.get("privacy")) == "no DP"
            spent = "none" if no_dp else NOT_RECORDED
        elif name in summary:
            s = summary[name]
            spent = f"{fmt_number(s.get('max_epsilon'))} (delta {fmt_number(s.get('delta'))})"
            together = (s.get("generators") or {}).get("composed_epsilon")
            if together is not None and len(s["generators"]["released"]) > 1:
                n = len(s["generators"]["released"])
                spent += f"; its {n} generators together {fmt_number(together)}"
        else:
            spent = "none"
        rows.append(
            [
                name,
                info.get("role") or roles.get(name) or NOT_RECORDED,
                source,
                Cell(fmt_number(counts.get("n-images")), cls="num"),
                Cell(fmt_number(counts.get("n-patients")), cls="num"),
                _reference(info.get("brightest_pixel"), (sharing or {}).get("metrics")),
                labels,
                consent,
                _budget(profile.get("privacy")) if profile else NOT_RECORDED,
                spent,
            ]
        )
        for segment, splits in sorted(_segment_counts(counts).items()):
            seg_rows.append(
                [name, segment, *[_split_cell(splits.get(s)) for s in ("train", "val", "test")]]
            )
        grid = run.path / "thumbnails" / f"{name}.png"
        if grid.is_file():  # written for synthetic centres only; a real one's is not shown
            if synthetic:
                grids.append(img_tag(grid.read_bytes(), f"images of {name}", caption=name))
            else:
                grids.append(f"<p class='muted'>{esc(name)}: real images, not shown.</p>")
    parts = ['<section id="centres"><h2>Centres</h2>']
    if rows:
        parts.append(
            table(
                [
                    "centre",
                    "role",
                    "data",
                    "images",
                    "patients",
                    _reference_header(run.meta.get("kind")),
                    "labels available",
                    "consent (sharing)",
                    "privacy budget",
                    "epsilon spent",
                ],
                rows,
                table_id="centres-table",
            )
        )
    else:
        parts.append(f"<p class='muted'>Centres: {NOT_RECORDED}.</p>")
    if seg_rows:
        parts.append("<h3>Images per data segment and split</h3>")
        parts.append(
            table(
                ["centre", "segment", "train", "val", "test"], seg_rows, table_id="segments-table"
            )
        )
    if grids:
        parts.append("<h3>Sample images (synthetic centres only)</h3>" + "".join(grids))
    parts.append("</section>")
    return "".join(parts)


def _reference_header(kind: str | None) -> str:
    """The Centres table's reference column, saying so where the run's AUROCs score lesion
    patches (the row of results.md says the same)."""
    caveat = reference_caveat(kind)
    return f"brightest-pixel AUROC, test (no model{'; ' + caveat if caveat else ''})"


def _reference(ref: dict | None, consents: bool | None) -> str:
    """A centre's brightest-pixel reference AUROC with its CI (results.md explains it); why
    there is none: no consent to send metrics, no test images of both classes."""
    if not ref:
        return "withheld (sharing.metrics off)" if consents is False else NOT_RECORDED
    return format_reference(ref) or "n/a (no malignant and benign test images)"


# ---------------------------------------------------------------------- audit trail
def _list(items: list[str]) -> str:
    lis = "".join(
        f"<li class='{'warn' if i.upper().startswith('WARNING') else ''}'>{esc(i)}</li>"
        for i in items
    )
    return f"<ul>{lis}</ul>"


#: Fewer non-members than this and the attack's 1%-FPR operating point is an FPR measured on
#: too few examples: an FPR of 0 is consistent with one of several percent.
FEW_NONMEMBERS = 100

_FEW_NOTE = (
    f"means something only with {FEW_NONMEMBERS} or more non-members: with fewer, an FPR of 0 "
    f"is consistent with a much larger one. Rows with fewer are marked (&lt; {FEW_NONMEMBERS}) "
    "in <code>n_nonmembers</code>. See docs/privacy_budget.md, &quot;Reading an audit&quot;.</p>"
)
#: How to read the audit table, with DP (a spent epsilon and the bound it sets) and without.
_AUDIT_GUIDE = (
    "<p class='muted'>Reading it: compare <code>epsilon_lower_95</code>, the epsilon the attack "
    "proves at 95% confidence, with <code>epsilon</code>, the epsilon the ledger spent. "
    "<code>tpr_at_1pct_fpr</code> against <code>tpr_bound_at_1pct_fpr</code> (the most DP "
    f"allows at 1% FPR) {_FEW_NOTE}"
)
_AUDIT_GUIDE_NO_DP = (
    "<p class='muted'>Reading it: without DP there is no bound to compare with; "
    "<code>epsilon_lower_95</code> is the epsilon the attack proves at 95% confidence (0: "
    "nothing proved), and <code>tpr_at_1pct_fpr</code> above 0.01 shows members told apart, "
    f"which {_FEW_NOTE}"
)


def _mark_few(audit: Mapping[str, Any]) -> Mapping[str, Any]:
    """An audit row whose non-members are too few to compare its TPR with the DP bound: its
    ``n_nonmembers`` cell marked (the number unchanged)."""
    n = audit.get("n_nonmembers")
    if not isinstance(n, int | float) or isinstance(n, bool) or n >= FEW_NONMEMBERS:
        return audit
    note = (
        f"fewer than {FEW_NONMEMBERS} non-members: the TPR at 1% FPR is not comparable with "
        "the DP bound"
    )
    cell = Cell(f"{fmt_number(n)} (< {FEW_NONMEMBERS})", attrs={"title": note}, cls="num warn few")
    return {**audit, "n_nonmembers": cell}


def audit_section(run: RunFolder) -> str:
    """Failures, refusals, DP spends, membership-inference audits, notes, run.log warnings."""
    privacy = run.privacy or {}
    parts = ['<section id="audit"><h2>Audit trail</h2>']
    failures = run.results.get("failures") or []
    parts.append(f"<h3>Centre failures ({len(failures)})</h3>")
    parts.append(
        records_table(failures, table_id="failures") if failures else "<p>None recorded.</p>"
    )
    refusals = privacy.get("refusals") or []
    parts.append(f"<h3>Refused rounds ({len(refusals)})</h3>")
    if run.privacy is None:
        parts.append(f"<p class='muted'>privacy.json: {NOT_RECORDED}.</p>")
    else:
        parts.append(
            records_table(refusals, table_id="refusals") if refusals else "<p>None recorded.</p>"
        )
    records = privacy.get("records") or []
    parts.append("<h3>Differential-privacy spends</h3>")
    if records:
        parts.append(records_table(records, _PRIVACY_COLUMNS, table_id="dp-spends"))
    else:
        parts.append("<p>No DP spends recorded.</p>")
    frame = run.frame()
    eps = frame[frame["metric"].astype(str).str.contains("epsilon") & frame["round"].notna()]
    if not eps.empty:
        cols = ["arm", "seed", "centre", "round", "metric", "value"]
        recs = eps[cols].to_dict("records")
        parts.append("<h4>Epsilon per round</h4>" + records_table(recs, cols, table_id="dp-rounds"))
    audits = privacy.get("audits") or []
    if audits:
        parts.append("<h3>Membership-inference audits</h3>")
        parts.append(records_table([_mark_few(a) for a in audits], table_id="mia-audits"))
        with_dp = any("tpr_bound_at_1pct_fpr" in a for a in audits)
        parts.append(_AUDIT_GUIDE if with_dp else _AUDIT_GUIDE_NO_DP)
    timing = frame[(frame["split"] == "timing") & frame["round"].notna()]
    if not timing.empty:
        wide = timing.pivot_table(
            index=["arm", "metric"], columns="round", values="value", aggfunc="mean"
        )
        rows = [
            [f"{arm}: {metric}", *[Cell(fmt_number(v, 3), cls="num") for v in vals]]
            for (arm, metric), vals in zip(wide.index, wide.to_numpy())
        ]
        heads = ["arm: timing (s)", *[f"round {int(r)}" for r in wide.columns]]
        parts.append(
            "<details><summary>Round timings</summary>"
            + table(heads, rows, table_id="timings")
            + "</details>"
        )
    notes = [*(run.results.get("notes") or []), *(privacy.get("notes") or [])]
    parts.append(f"<h3>Notes ({len(notes)})</h3>" + (_list(notes) if notes else "<p>None.</p>"))
    parts.append(f"<h3>Warnings in {esc(run.warnings_source)} ({len(run.warnings)})</h3>")
    if run.warnings:
        parts.append(f"<pre class='log'>{esc(chr(10).join(run.warnings))}</pre>")
    else:
        parts.append("<p>None.</p>")
    parts.append("</section>")
    return "".join(parts)
