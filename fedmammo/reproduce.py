"""Write docs/reproduction.md: each seed paper's headlines against fedmammo's runs.

python -m fedmammo.reproduce RUN_OR_FOLDER [...] [--out docs/reproduction.md]

Every run folder found under the arguments (a folder holding ``results.json``, or any folder
above such folders; sweep points are skipped) is sorted by its method (``meta.kind``) and
scale (``meta.quick``); for each method and scale the most recent complete run is used (an
incomplete one only when no complete one exists, and marked so). Each claim of
:data:`CLAIMS` is checked in that run with :func:`fedmammo.evaluation.claims.check_claim`;
the table says the paper's number, fedmammo's quick and full results and whether the
direction agrees (from the full run when there is one). Nothing in the table is typed by
hand: rerun the command on the same run folders and the file is the same.

A run made before a commit of :data:`CI_CHANGES` (how its method's CIs are computed; by git
ancestry of the run's ``meta.git_commit`` in fedmammo's checkout) gets a note above the
table, since its cells and verdicts may differ from a run made now.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmammo.errors import DataError, FedmammoError
from fedmammo.evaluation.claims import MIN_SEEDS_WITHOUT_CI, Claim, Finding, check_claim

__all__ = [
    "CI_CHANGES",
    "CLAIMS",
    "CiChange",
    "Run",
    "find_runs",
    "lacks",
    "main",
    "render",
    "select_run",
]

_PS = "Periodic sampling (000, ICLR 2022 submission)"
_MTL = "Multi-task learning with poor and missing labels (001, Tardy & Mateus 2022)"
_DG = "Contrastive domain generalisation (002, Li et al.)"
_GANS = "Sharing generative models (003, Szafranowska et al. 2022)"
_UDA = "CycleGAN UDA, film <-> digital (004)"
_UDA_CELLS = (
    "Cells: both directions (film -> digital tested at the digital centre, digital -> "
    "film at the film centre); the paper's numbers are digital -> film (UKY -> DDSM)."
)
_DG_TASKS = ("detection_ap50@1", "matching_accuracy", "birads_accuracy", "density_accuracy")
_CNN = "The seed's CNN (the Swin rows follow)."
_SWIN = (
    "A CPU-sized Swin (64 px, embed_dim 32, 3M weights) from random initialisation, AdamW; "
    "the paper's Swin-T is at 224 px (28M)."
)
_CONTROL = (
    " The control arm A+own_lesions (A's own lesion patches drawn again, no generator) gets "
    "the same gain, and A+untrained_dcgan (a generator that never trained) most of it "
    "(README, 'A negative control'): here the gain is the arm's size, not what B's "
    "generator learned."
)
_SWIN_CONTROL = (
    " Against the control A+own_lesions~swin (A's own lesion patches drawn again) B's DCGAN "
    "still adds +0.098 here and +0.042 to +0.140 in every cell (README, 'The Swin against "
    "the size control')."
)
_MTL_STEPS = (
    "Part of the gap is FedAvg's weighting (labelled moves weight to the centre with 22 "
    "malignancy labels), but at equal weights the single task still leads, 0.740 vs 0.516 "
    "(docs/mtl_finetune.md); the paper trains far longer, in one place."
)

#: The papers' headlines, in the order of the table.
CLAIMS: tuple[Claim, ...] = (
    Claim(_PS, "Exp. 1, test (S3, Ma): Bal. labels below the (S1, Ma) baseline",
          "ΔAUC -1.55 (-2.61, -0.45), p = 0.005 (Table 2)", "periodic_sampling",
          "exp1-pooled-balanced_labels", None, ("delta_auc",), segments=("S3-Ma",),
          direction=-1,
          note="The phantom's S1-Ma and S2-Ma share one acquisition style (README)."),
    Claim(_PS, "Exp. 2, test (S3, Ma): Bal. labels below the baseline",
          "ΔAUC -1.18 (-2.21, -0.11), p = 0.028 (Table 3)", "periodic_sampling",
          "exp2-pooled-balanced_labels", None, ("delta_auc",), segments=("S3-Ma",),
          direction=-1),
    Claim(_PS, "Exp. 2, test (S3, Ma): Bal. segments below the baseline",
          "ΔAUC -1.89 (-3.02, -0.70), p = 0.0015 (Table 3)", "periodic_sampling",
          "exp2-pooled-balanced_segments", None, ("delta_auc",), segments=("S3-Ma",),
          direction=-1),
    Claim(_PS, "Exp. 2, test (S3, Ma): P. sampling above the baseline",
          "ΔAUC +0.92 (0.15, 1.69), p = 0.019 (Table 3)", "periodic_sampling",
          "exp2-pooled-periodic", None, ("delta_auc",), segments=("S3-Ma",),
          note="The phantom's task is near its ceiling (baseline AUC about 0.98)."),
    Claim(_PS, "Exp. 2, test (S3, Mb): P. sampling above the (S1, Mb) baseline",
          "ΔAUC +9.84 (8.79, 10.88), p < 0.0001 (Table 3)", "periodic_sampling",
          "exp2-pooled-periodic", None, ("delta_auc",), segments=("S3-Mb",),
          note="The phantom's (S1, Mb) baseline trains on 40 images and stays near chance."),
    Claim(_PS, "Exp. 2, test (S3, Ma): P. sampling above Bal. labels",
          "AUC 84.98 vs 82.88 (Table 3)", "periodic_sampling", "exp2-pooled-periodic",
          "exp2-pooled-balanced_labels", ("auc",), segments=("S3-Ma",)),
    Claim(_MTL, "Multi-task above single-task malignancy AUC, HMI test",
          "AUC 80.46 ± 0.79 vs 70.69 ± 0.36 (Table 4)", "mtl_finetune", "mtl",
          "single_task", ("auc",), centres=("hmi",), segments=(None,), note=_MTL_STEPS),
    Claim(_MTL, "Multi-task above single-task malignancy AUC, INbreast (unseen vendor)",
          "AUC 78.13 ± 0.83 vs 72.45 ± 0.26 (Table 4)", "mtl_finetune", "mtl",
          "single_task", ("auc",), centres=("inbreast_like",), segments=(None,),
          note=_MTL_STEPS),
    Claim(_MTL, "Reconstruction as the only auxiliary task helps, HMI test",
          "AUC 78.09 ± 1.06 vs 70.69 ± 0.36 (Table 4)", "mtl_finetune", "mtl_rec",
          "single_task", ("auc",), centres=("hmi",), segments=(None,), note=_MTL_STEPS),
    Claim(_MTL, "Multi-task with 50 % of malignancy labels dropped still above single-task",
          "AUC 78.57 ± 0.19 vs 70.69 ± 0.36 (Tables 4-5)", "mtl_finetune",
          "drop_malignancy_50", "single_task", ("auc",), centres=("hmi",), segments=(None,),
          note=_MTL_STEPS),
    Claim(_MTL, "Fine-tuning on ACR-derived labels: u1 = 0.9 above u1 = 0 (HMI test, INbreast)",
          "AUC 80.62 vs 72.67 (Table 8), 81.40 vs 72.24 (Table 9)", "mtl_finetune",
          "finetune_u1_0.9", "finetune_u1_0", ("auc",), centres=("hmi", "inbreast_like"),
          segments=(None,)),
    Claim(_DG, "MSVCL above SimCLR on unseen vendors (four-task average)",
          "89.1 vs 82.1 (Table III, SimCLR ImageNet -> Mammo)", "contrastive_dg", "msvcl",
          "simclr", _DG_TASKS, centres=("D", "E", "F"),
          note="fedmammo pre-trains from scratch (no ImageNet), federated; its BI-RADS task "
               "has 3 classes, not 5."),
    Claim(_DG, "MSVCL above random initialisation on unseen vendors",
          "89.1 vs 58.1 (Table III)", "contrastive_dg", "msvcl", "random", _DG_TASKS,
          centres=("D", "E", "F")),
    Claim(_DG, "MSVCL above supervised pre-training on unseen vendors",
          "89.1 vs 81.4 (Table III, supervised on ImageNet)", "contrastive_dg", "msvcl",
          "supervised", _DG_TASKS, centres=("D", "E", "F")),
    Claim(_GANS, "50 % of A's data, all lesions: B's DCGAN patches raise F1",
          "Swin-T F1 0.734 -> 0.880; every synthetic arm above INbreast alone (Tables 1-2)",
          "share_gans", "A+synth_B_dcgan@all-50", "A@all-50", ("f1",), centres=("A",),
          note=_CNN),
    Claim(_GANS, "50 % of A's data, masses only: B's DCGAN patches raise AUROC",
          "the gain is strongest in this low-data regime (Tables 1-2)", "share_gans",
          "A+synth_B_dcgan@masses-50", "A@masses-50", ("auc",), centres=("A",),
          note=_CNN + _CONTROL, paired=True),
    Claim(_GANS, "Swin, 50 % of A's data, all lesions: B's DCGAN patches raise F1",
          "F1 0.734 -> 0.880 (Results)", "share_gans", "A+synth_B_dcgan~swin@all-50",
          "A~swin@all-50", ("f1",), centres=("A",), note=_SWIN),
    Claim(_GANS, "Swin, 50 % of A's data, masses only: B's DCGAN patches raise AUROC",
          "strongest at 50 %, masses, and 'particularly pronounced in the Swin' (Results)",
          "share_gans", "A+synth_B_dcgan~swin@masses-50", "A~swin@masses-50", ("auc",),
          centres=("A",), note=_SWIN + _SWIN_CONTROL, paired=True),
    Claim(_GANS, "All of A's data, all lesions: B's WGAN-GP patches raise AUROC",
          "every synthetic arm above INbreast alone (Table 1)", "share_gans",
          "A+synth_B_wgan_gp@all-100", "A@all-100", ("auc",), centres=("A",),
          note=_CNN, paired=True),
    Claim(_GANS, "B's synthetic patches do at least as well as B's real ones",
          "real BCDR patches often worse than synthetic (Discussion)", "share_gans",
          "A+synth_B_dcgan@all-100", "A+real_B@all-100", ("auc",), centres=("A",),
          note="BCDR -> INbreast has a domain shift the phantom's B -> A may not have."),
    Claim(_UDA, "AlexNet: source + source translated to the target style above source only",
          "AUROC 0.516 -> 0.601", "cyclegan_uda", "uda-alexnet", "source_only-alexnet",
          ("auc",), note=_UDA_CELLS, paired=True),
    Claim(_UDA, "ResNet-50: the same", "AUROC 0.624 -> 0.672", "cyclegan_uda",
          "uda-resnet50", "source_only-resnet50", ("auc",),
          note=_UDA_CELLS, paired=True),
)  # fmt: skip


@dataclass(frozen=True)
class CiChange:
    """A commit that changed how the CIs of some methods (``kinds``) are computed: a run made
    before it may count other cells, and reach other verdicts, than one made now. ``rerun``
    names a run of the same study made at the commit, and ``verdicts`` what it gives
    (claim -> verdict); the note says where the table differs."""

    commit: str
    kinds: tuple[str, ...]
    what: str
    rerun: str = ""
    verdicts: tuple[tuple[str, str], ...] = ()


#: What a verdict from quick runs alone ends with.
QUICK_ONLY = " (quick only)"

#: CI changes a run may predate, oldest first.
CI_CHANGES: tuple[CiChange, ...] = (
    CiChange(
        "2ac88cc",
        ("fedavg", "periodic_sampling", "mtl_finetune", "share_gans", "cyclegan_uda"),
        "the bootstrap CIs resample patients (a patient's CC and MLO views and both breasts "
        "together) instead of images, which moves intervals both ways (0.5x-1.6x on "
        "privacy_budget_fedavg, docs/privacy_budget.md)",
    ),
    CiChange(
        "7d6e974",
        ("contrastive_dg",),
        "contrastive_dg's downstream CIs (crops, images, CC-MLO pairs, detection AP) resample "
        "patients instead of the samples themselves",
        rerun="docs/contrastive_dg.md's full run made at 7d6e974",
        verdicts=(
            ("MSVCL above SimCLR on unseen vendors (four-task average)", "no"),
            ("MSVCL above random initialisation on unseen vendors", "yes"),
            ("MSVCL above supervised pre-training on unseen vendors", "inconclusive"),
        ),
    ),
    CiChange(
        "37211ef",
        ("mtl_finetune", "share_gans", "cyclegan_uda"),
        "one model's test AUROC CI is a logit interval over patients with a t quantile, no "
        "longer the patient percentile bootstrap, which covered 76-94% with 5-30 cancer "
        "patients; wider with few of them, so fewer cells whose two arms' CIs separate "
        "(docs/report.md)",
    ),
)


@dataclass(frozen=True)
class Run:
    """One run folder as the table uses it."""

    path: Path
    kind: str
    quick: bool
    started: str
    complete: bool
    seeds: tuple[int, ...]
    commit: str
    metrics: tuple[dict[str, Any], ...]
    sha: str = ""  # meta.git_commit in full ("" when the run did not record one)

    @property
    def label(self) -> str:
        scale = "quick" if self.quick else "full"
        state = "" if self.complete else ", incomplete"
        seeds = ", ".join(map(str, self.seeds))
        where = f"{self.path.parent.name}/{self.path.name}{state}"
        return f"{self.kind} {scale} ({where}; seeds {seeds}; commit {self.commit})"


def _read(path: Path) -> Run:
    file = path / "results.json"
    try:
        results = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{file}: not a readable results.json ({exc})") from exc
    meta = results.get("meta") or {}
    if "kind" not in meta:
        raise DataError(f"{file}: meta.kind is missing (not a fedmammo run?)")
    progress = results.get("progress") or {}
    commit = str(meta.get("git_commit") or "unknown")[:7] + (
        "+dirty" if meta.get("git_dirty") else ""
    )
    return Run(
        path=path,
        kind=meta["kind"],
        quick=bool(meta.get("quick")),
        started=str(meta.get("started", "")),
        complete=bool(progress)
        and all(p.get("done") for p in progress.values())
        and meta.get("finished") is not False,  # (a killed run never reached its later units)
        seeds=tuple(meta.get("seeds") or ()),
        commit=commit,
        metrics=tuple(results.get("metrics") or ()),
        sha=str(meta.get("git_commit") or ""),
    )


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Every run folder at or under ``paths`` (sweep points skipped)."""
    runs = []
    for given in map(Path, paths):
        if not given.exists():
            raise DataError(f"{given}: no such file or folder")
        found = (
            [given]
            if (given / "results.json").is_file()
            else sorted(f.parent for f in given.rglob("results.json") if "points" not in f.parts)
        )
        if not found:
            raise DataError(f"{given}: holds no run folder (no results.json under it)")
        runs += [_read(p) for p in found]
    return runs


def _holds(run: Run, claim: Claim) -> bool:
    arms = {m.get("arm") for m in run.metrics}
    return claim.arm in arms and (claim.reference is None or claim.reference in arms)


def select_run(runs: list[Run], claim: Claim, quick: bool) -> Run | None:
    """The run a claim's cell uses: of the runs of its kind at this scale, the latest complete
    one holding the claim's arm and reference (a re-run of some arms answers their rows only),
    else the latest complete one, else the latest."""
    mine = [r for r in runs if r.kind == claim.kind and r.quick == quick]
    if not mine:
        return None
    return max(mine, key=lambda r: (r.complete and _holds(r, claim), r.complete, r.started))


def _verdict(quick: Finding | None, full: Finding | None) -> tuple[str, str]:
    if full is not None and full.verdict != "no data":
        return full.verdict, full.why
    if quick is not None and quick.verdict != "no data":
        return f"{quick.verdict}{QUICK_ONLY}", quick.why
    return "not run", (full or quick).why if (full or quick) else ""


def lacks(sha: str, commit: str) -> bool | None:
    """Whether a run made at ``sha`` was made without ``commit`` (``commit`` is not among its
    ancestors in fedmammo's checkout); None when git cannot tell (no ``sha``, no git or
    checkout, or a commit the checkout does not hold)."""
    if not sha:
        return None
    repo = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), "merge-base", "--is-ancestor", commit, sha],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {0: False, 1: True}.get(done.returncode)


def _numbers(ns: list[int]) -> str:
    """1, 2, 3, 5, 7, 8 -> '1-3, 5, 7, 8'."""
    spans: list[list[int]] = []
    for n in ns:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(
        f"{a}-{b}" if b > a + 1 else ", ".join(map(str, range(a, b + 1))) for a, b in spans
    )


def _ci_notes(
    used: list[Run], verdicts: dict[str, str], lacking: Callable[[str, str], bool | None]
) -> list[str]:
    """One note per change of :data:`CI_CHANGES` that some listed run was made without."""
    lines = []
    for change in CI_CHANGES:
        before = [
            i
            for i, run in enumerate(used, 1)
            if run.kind in change.kinds and lacking(run.sha, change.commit)
        ]
        if not before:
            continue
        runs = f"Run{'s' if len(before) > 1 else ''} {_numbers(before)}"
        note = (
            f"> **{runs} below predate{'' if len(before) > 1 else 's'} commit {change.commit}**:"
            f" since then {change.what}; cell counts and verdicts may differ from a run made now."
        )
        differ = [
            (claim, then, verdicts[claim])
            for claim, then in change.verdicts
            if claim in verdicts and verdicts[claim].removesuffix(QUICK_ONLY) != then
        ]
        if differ:
            said = "; ".join(
                f'"{c}" as **{then}** where this page says {now}' for c, then, now in differ
            )
            same = len(change.verdicts) - len(differ)
            note += f" {change.rerun} reads {said}" + (
                f" (its other {same} verdicts as here)." if same else "."
            )
        lines += [note, ""]
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(
    runs: list[Run], command: str, *, lacking: Callable[[str, str], bool | None] = lacks
) -> str:
    """The markdown of docs/reproduction.md for ``runs``; ``lacking(sha, commit)`` says
    whether a run made at ``sha`` predates ``commit`` (default: git ancestry, :func:`lacks`)."""
    used: list[Run] = []

    def finding(claim: Claim, quick: bool) -> tuple[Finding | None, str]:
        run = select_run(runs, claim, quick)
        if run is None:
            return None, "no run"
        if run not in used:
            used.append(run)
        f = check_claim(claim, run.metrics)
        return f, f"{f.summary()} [{used.index(run) + 1}]"

    lines = [
        "# Reproduction: the seed papers' headlines on fedmammo",
        "",
        f"Generated by `{command}`; do not edit by hand.",
        "",
        "Differences are fedmammo's arm minus its reference, x 100 (AUC / accuracy / F1 points),",
        "averaged over the claim's test cells (centre x segment x metric) and seeds. A cell counts",
        "*for* the paper when it differs on the paper's side after Holm's correction for the",
        "claim's number of cells (family-wise 2.5% a side; each cell's p the paired permutation",
        "test's the run recorded beside a paired difference, else from the CIs, as for",
        "mtl_finetune's claims, which compare two arms' AUROCs). Agrees: **yes** = some cells",
        "for, none against, mean on the paper's side; **no** = the mirror; **inconclusive**",
        "otherwise.",
        "Without CIs (mean over seeds only) a direction needs",
        f"{MIN_SEEDS_WITHOUT_CI} or more seeds, every one on the same side. The verdict is the",
        "full run's when there is one.",
        "",
        "| paper | claim | paper's result | fedmammo quick | fedmammo full | agrees "
        "| why not / note |",
        "|---|---|---|---|---|---|---|",
    ]
    counts: dict[str, int] = {}
    verdicts: dict[str, str] = {}
    for claim in CLAIMS:
        quick, quick_text = finding(claim, True)
        full, full_text = finding(claim, False)
        verdict, why = _verdict(quick, full)
        key = verdict.removesuffix(QUICK_ONLY)
        counts[key] = counts.get(key, 0) + 1
        verdicts[claim.claim] = verdict
        note = "; ".join(t for t in (why, claim.note) if t)
        cells = (claim.paper, claim.claim, claim.paper_result, quick_text, full_text, verdict, note)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    order = ("yes", "no", "inconclusive", "not run")
    summary = ", ".join(f"{k} {counts[k]}" for k in order if k in counts)
    lines += ["", f"Summary: {summary}.", ""]
    lines += ["Runs:", ""] + [f"{i}. {run.label}" for i, run in enumerate(used, 1)]
    if not used:
        lines.append("(none)")
    lines[4:4] = _ci_notes(used, verdicts, lacking)  # after "Generated by ..."
    return "\n".join(lines) + "\n"


def _parser(prog: str = "python -m fedmammo.reproduce") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Write the table of the seed papers' headlines against fedmammo runs.",
    )
    p.add_argument("paths", nargs="+", metavar="RUN_OR_FOLDER", help="run folders or their parents")
    p.add_argument(
        "--out", type=Path, default=Path("docs/reproduction.md"), help="markdown file to write"
    )
    return p


def main(argv: list[str] | None = None, *, prog: str = "python -m fedmammo.reproduce") -> int:
    """Entry point; returns the exit code (2 with a one-line error for bad input)."""
    args = _parser(prog).parse_args(argv)
    try:
        runs = find_runs(args.paths)
    except FedmammoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = "python -m fedmammo.reproduce " + " ".join(args.paths)
    text = render(runs, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    summary = [ln for ln in text.splitlines() if ln.startswith("Summary:")][0]
    print(f"{args.out}: {len(CLAIMS)} claims, {len(runs)} run folder(s). {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
