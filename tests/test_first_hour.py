"""docs/first_hour.md works as written: every ```bash block is run, in order, and each step
keeps what the page promises.

The blocks run with bash in an empty folder holding symlinks to the checkout's scenarios/,
centres/ and strategies/ (so runs/ and data/ land in the temporary folder), with ``python``
the interpreter running this test and ``fedmammo`` a shim for ``python -m fedmammo.cli``
(the console script may not be installed in a development environment). A block preceded by
``<!-- not run -->`` (the install line) is skipped; nothing else is.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from fedmammo.evaluation.metrics import MIN_UNITS_PER_CLASS

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "first_hour.md"
NOT_RUN = "<!-- not run -->"
STEPS = {1: "run", 2: "read", 3: "change", 4: "dicom", 5: "sweep"}


@dataclass
class Block:
    step: int  # the number of the "## N." section it is in (0 before the first)
    code: str
    run: bool
    line: int


def parse_blocks(text: str) -> list[Block]:
    """The ```bash blocks of the page, with their section number and whether they run."""
    blocks: list[Block] = []
    lines = text.splitlines()
    step, i = 0, 0
    while i < len(lines):
        line = lines[i]
        heading = re.match(r"^## (\d+)\.", line)
        if heading:
            step = int(heading.group(1))
        if line.strip() == "```bash":
            prev = next((s.strip() for s in reversed(lines[:i]) if s.strip()), "")
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            code = "\n".join(lines[i + 1 : end])
            blocks.append(Block(step, code, prev != NOT_RUN, i + 1))
            i = end
        i += 1
    return blocks


def test_page_has_a_command_for_every_step():
    blocks = parse_blocks(DOC.read_text())
    skipped = [b for b in blocks if not b.run]
    assert [b.step for b in skipped] == [0], "only the install block may be marked not run"
    assert "pip install" in skipped[0].code
    run_steps = {b.step for b in blocks if b.run}
    assert run_steps == set(STEPS), f"steps with commands: {sorted(run_steps)}"
    assert all("fedavg_tiny.yaml" in b.code for b in blocks if "simulate scenarios/" in b.code)


def _bullet(text: str, step: int, name: str) -> str:
    """The ``- **name**: ...`` bullet of section ``## step.``, joined into one line."""
    section = text[text.index(f"\n## {step}.") :]
    section = section[: section.index("\n## ", 1)]
    start = section.index(f"- **{name}**")
    end = section.find("\n- ", start + 1)
    return " ".join(section[start : end if end > 0 else None].split())


def test_step_2_says_the_tiny_test_sets_give_no_ci():
    # Prepare: tiny_t is a test-only `tiny` centre: every patient a test patient
    profile = yaml.safe_load((ROOT / "centres" / "tiny.yaml").read_text())
    segments = profile["data"]["synthetic"]["segments"]
    patients = sum(seg["patients"] for seg in segments)
    cancers = sum(round(seg["prevalence"] * seg["patients"]) for seg in segments)
    text = DOC.read_text()
    # Execute
    results = _bullet(text, 2, "Results")
    # Assert: no CI is promised (the run shows none: _check_read's "(no CI)"), as step 1 says
    assert "every AUROC comes alone" in " ".join(text.split())
    assert "every AUROC stands alone, with no interval" in results
    assert "with CIs" not in results and "interval spans" not in results
    assert f"`tiny_t`'s {patients} hold {cancers}" in results
    assert cancers < MIN_UNITS_PER_CLASS
    assert f"fewer than the {MIN_UNITS_PER_CLASS} cancer patients a CI needs" in results


def _workdir(tmp: Path) -> dict[str, str]:
    for name in ("scenarios", "centres", "strategies"):
        (tmp / name).symlink_to(ROOT / name, target_is_directory=True)
    bin_dir = tmp / ".bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    shim = bin_dir / "fedmammo"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fedmammo.cli "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMAMMO_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)  # this checkout's fedmammo, also in a worktree
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("VIRTUAL_ENV", None)
    return env


def _runs(tmp: Path, name: str) -> list[Path]:
    return sorted(p for p in (tmp / "runs" / name).glob("*") if p.is_dir())


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def _test_auc(results: dict, centre: str) -> list[float | None]:
    return [
        r["value"]
        for r in results["metrics"]
        if r["split"] == "test"
        and r["metric"] == "auc"
        and r["centre"] == centre
        and r["segment"] is None
    ]


def _check_run(tmp: Path, out: str) -> None:
    (run,) = _runs(tmp, "fedavg_tiny")
    for name in ("report.html", "results.md", "results.json", "scenario.resolved.yaml"):
        assert (run / name).is_file(), name
    assert "fedavg_tiny" in (run / "report.html").read_text()
    assert _results(run)["meta"]["scenario"] == "fedavg_tiny"
    assert "run directory:" in out


def _check_read(tmp: Path, out: str) -> None:
    (run,) = _runs(tmp, "fedavg_tiny")
    assert "# Results: fedavg_tiny" in out  # cat results.md
    assert f"{run.name}/report.html" in out  # fedmammo report prints the page it wrote
    # the Python snippet; tiny_t's test patients are too few for a CI
    assert re.search(r"federated at tiny_t: AUROC \d\.\d{3} \(no CI\)", out)


def _check_change(tmp: Path, out: str) -> None:
    run1, run2 = _runs(tmp, "fedavg_tiny")
    c1, c2 = (_results(r)["meta"]["centres"] for r in (run1, run2))
    assert c1["tiny_a"]["counts"] != c2["tiny_a"]["counts"], "the changed centre"
    assert (c1["tiny_a"]["counts"]["n-patients"], c2["tiny_a"]["counts"]["n-patients"]) == (12, 24)
    assert (c1["tiny_a"]["counts"]["n-images"], c2["tiny_a"]["counts"]["n-images"]) == (48, 96)
    for centre in ("tiny_b", "tiny_t"):
        assert c1[centre]["counts"] == c2[centre]["counts"], centre
    for page in ("compare_tiny_a.html", "compare_tiny_a_auprc.html"):
        html = (tmp / "runs" / page).read_text()
        assert run1.name in html and run2.name in html, page
        assert 'data-metric="auc"' in html
    assert 'data-metric="auprc"' in (tmp / "runs" / "compare_tiny_a_auprc.html").read_text()


def _check_dicom(tmp: Path, out: str) -> None:
    assert (tmp / "my_labels.csv").read_text().startswith("SOPInstanceUID,malignant,density")
    (run,) = _runs(tmp, "my_hospital")
    results = _results(run)
    centres = results["meta"]["centres"]
    assert set(centres) == {"tiny_a", "my_hospital", "tiny_t"}
    counts = centres["my_hospital"]["counts"]
    assert counts["n-images"] == 48 and counts["n-patients"] == 12
    assert any("|local-Ma|" in k for k in counts) and any("|local-Mb|" in k for k in counts)
    resolved = (run / "scenario.resolved.yaml").read_text()
    assert "dicom-folder" in resolved and "my_labels.csv" in resolved
    aucs = _test_auc(results, "my_hospital")
    assert aucs and all(v is not None and math.isfinite(v) for v in aucs), aucs
    assert "my_hospital" in (run / "report.html").read_text()
    assert "| my_hospital |" in out  # cat results.md: its own column


def _check_sweep(tmp: Path, out: str) -> None:
    sweep = _runs(tmp, "fedavg_tiny")[-1]
    points = sorted(p.name for p in (sweep / "points").iterdir())
    assert points == ["privacy.target_epsilon=1.0", "privacy.target_epsilon=null"], points
    for name in ("sweep.csv", "privacy_utility.png", "report.html"):
        assert (sweep / name).is_file(), name
    assert (sweep / "privacy_utility.png").read_bytes()[:4] == b"\x89PNG"
    html = (sweep / "report.html").read_text()
    assert "privacy_utility" in html and all(p in html for p in points)
    for p in points:
        point = sweep / "points" / p
        assert (point / "report.html").is_file(), p
        assert _test_auc(_results(point), "tiny_t"), p
    privacy = json.loads((sweep / "points" / points[0] / "privacy.json").read_text())
    assert "tiny_a" in json.dumps(privacy) and "epsilon" in json.dumps(privacy)
    assert "privacy.target_epsilon" in (sweep / "sweep.csv").read_text().splitlines()[0]


CHECKS = {1: _check_run, 2: _check_read, 3: _check_change, 4: _check_dicom, 5: _check_sweep}


@pytest.mark.slow
def test_first_hour_tutorial_runs_as_written(tmp_path):
    env = _workdir(tmp_path)
    blocks = [b for b in parse_blocks(DOC.read_text()) if b.run]
    timings: dict[int, float] = {}
    for step in sorted({b.step for b in blocks}):
        out = ""
        start = time.monotonic()
        for block in (b for b in blocks if b.step == step):
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block.code],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert proc.returncode == 0, (
                f"docs/first_hour.md line {block.line} (step {step}) exited "
                f"{proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
                f"--- stderr\n{proc.stderr[-4000:]}"
            )
            out += proc.stdout
        timings[step] = time.monotonic() - start
        CHECKS[step](tmp_path, out)
    print("first_hour step times (s):", {STEPS[k]: round(v) for k, v in timings.items()})
