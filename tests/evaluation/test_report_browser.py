"""report.html in a real browser: Debian's headless Chromium driven by Playwright.

Skips only when Chromium or Playwright is missing (.ci/run installs both).
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from report_fixture import make_run_dir, make_sweep_dir

from fedmammo.evaluation.html_report import write_comparison, write_report

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
CHROMIUM = os.environ.get("FEDMAMMO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(
        f"no Chromium executable at {CHROMIUM} (apt-get install chromium)", allow_module_level=True
    )

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def _open(browser, path):
    """Load a page from a file:// URL; return (page, console errors, failed requests)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.resolve().as_uri(), wait_until="load")
    return page, errors, requests


def _undecoded(page) -> list[str]:
    return page.evaluate(
        "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => i.alt)"
    )


def test_report_renders_in_chromium_with_the_numbers_of_results_json(browser, tmp_path):
    run = make_run_dir(tmp_path, plots=False)
    report = write_report(run)
    records = json.loads((run / "results.json").read_text())["metrics"]
    expected = {
        (r["arm"], r["centre"]): r
        for r in records
        if (r["split"], r["metric"], r["segment"], r["round"]) == ("test", "auc", None, None)
    }

    page, errors, requests = _open(browser, report)
    cells = page.evaluate(
        "Array.from(document.querySelectorAll('#results-auc td[data-value]')).map(td => "
        "({arm: td.dataset.arm, centre: td.dataset.centre, text: td.innerText.trim()}))"
    )
    n_images = page.evaluate("document.images.length")
    undecoded = _undecoded(page)
    shot = run / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    page.close()

    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert n_images >= 3 and undecoded == []
    assert {(c["arm"], c["centre"]) for c in cells} == set(expected)
    for c in cells:
        value, lo, hi = map(float, re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", c["text"]).groups())
        rec = expected[(c["arm"], c["centre"])]
        assert (value, lo, hi) == tuple(round(rec[k], 3) for k in ("value", "ci_low", "ci_high"))
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000


def test_comparison_page_renders_in_chromium(browser, tmp_path):
    sweep = make_sweep_dir(tmp_path)
    out = write_comparison([sweep], sweep / "report.html")

    page, errors, _ = _open(browser, out)
    headers = page.evaluate(
        "Array.from(document.querySelectorAll('#comparison thead th')).map(th => th.innerText)"
    )
    undecoded = _undecoded(page)
    page.screenshot(path=str(sweep / "report.png"), full_page=True)
    page.close()

    assert errors == [] and undecoded == []
    assert headers[1:] == ["privacy.target_epsilon=1.0", "privacy.target_epsilon=8.0"]
