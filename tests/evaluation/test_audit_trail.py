"""report.html's audit trail: the membership-inference audits table and how to read it."""

from __future__ import annotations

import json
import re

from report_fixture import make_run_dir

from fedmammo.evaluation.html_report import write_report


def _audit(n_nonmembers: float, tpr: float) -> dict:
    return {
        "centre": "a",
        "arm": "federated",
        "seed": 0,
        "attack": "gan_leaks",
        "auc": 0.5156,
        "tpr_at_1pct_fpr": tpr,
        "n_members": 112.0,
        "n_nonmembers": n_nonmembers,
        "fpr_reached": 0.0,
        "epsilon": 0.9958,
        "delta": 1e-05,
        "tpr_bound_at_1pct_fpr": 0.02708,
        "epsilon_lower_95": 0.0,
        "epsilon_provable_95": 2.059,
    }


def test_audits_table_marks_too_few_nonmembers_and_says_how_to_read_it(tmp_path):
    # Prepare: two audits, one on 28 non-members (the quick privacy_budget's C), one on 150
    run = make_run_dir(tmp_path)
    privacy = json.loads((run / "privacy.json").read_text())
    privacy["audits"] = [_audit(28.0, 0.08036), _audit(150.0, 0.01)]
    (run / "privacy.json").write_text(json.dumps(privacy))
    # Execute
    html = write_report(run).read_text()
    # Assert: the table's rows, numbers unchanged, only the 28 marked
    start = html.index('id="mia-audits"')
    table = html[start : html.index("</table>", start)]
    rows = [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r) for r in table.split("<tr")[2:]]
    assert [r[7] for r in rows] == ["28 (&lt; 100)", "150"]
    assert [r[5] for r in rows] == ["0.08036", "0.01"]
    assert table.count('class="num warn few"') == 1
    # long field names may wrap at their underscores, so the table fits the page
    assert "<th>tpr_<wbr>bound_<wbr>at_<wbr>1pct_<wbr>fpr</th>" in table
    # under it, how to read it: epsilon_lower_95 against the spend; the TPR only with 100+
    guide = html[html.index("</table>", start) :]
    guide = guide[: guide.index("</p>")]
    assert "compare <code>epsilon_lower_95</code>" in guide and "100 or more non-members" in guide
    assert "docs/privacy_budget.md, &quot;Reading an audit&quot;" in guide


def test_without_dp_the_guide_names_only_the_columns_the_table_has(tmp_path):
    # Prepare: a no-DP point's audit: no spent epsilon, no bound
    run = make_run_dir(tmp_path)
    privacy = json.loads((run / "privacy.json").read_text())
    audit = _audit(40.0, 0.0)
    for key in ("epsilon", "delta", "tpr_bound_at_1pct_fpr"):
        del audit[key]
    privacy["audits"] = [audit]
    (run / "privacy.json").write_text(json.dumps(privacy))
    # Execute
    html = write_report(run).read_text()
    # Assert: the guide reads the columns there are, and still marks the few non-members
    start = html.index('id="mia-audits"')
    guide = html[html.index("</table>", start) :]
    guide = guide[: guide.index("</p>")]
    assert "without DP there is no bound to compare with" in guide
    assert "tpr_bound_at_1pct_fpr" not in guide and "<code>epsilon</code>" not in guide
    assert "100 or more non-members" in guide and "40 (&lt; 100)" in html
