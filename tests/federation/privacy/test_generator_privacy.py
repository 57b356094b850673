"""privacy.json from a shared generator's reply: its DP record, its audits, and their notes."""

from __future__ import annotations

import json
from types import SimpleNamespace

from fedmammo.evaluation.results import RunRecorder
from fedmammo.federation.messages import AUDIT, PRIVACY, encode_attacks
from fedmammo.federation.privacy.codec import pack_history
from fedmammo.federation.privacy.server import GENERATOR_LEDGER_NOTE, record_generator_privacy

AUDITED = {"gan_leaks": {"auc": 0.55, "tpr_at_1pct_fpr": 0.02, "n_members": 112.0}}


def _dp_record() -> dict:
    """A ``privacy`` record as a DP centre sends it with its generator (one DP phase)."""
    history = [[1.2, 0.1, 100]]
    return {
        "accountant": "rdp",
        "ledger": "B_dcgan_all|0",
        "phase": "gan",
        "delta": 1e-5,
        "epsilon": 1.0,
        "ledger-epsilon": 1.0,
        "max-grad-norm": 1.0,
        "noise-multiplier": 1.2,
        "sample-rate": 0.1,
        "planned-steps": 100.0,
        "round-steps": 100,
        **pack_history("history", history),
        **pack_history("ledger-history", history),
    }


def _record(tmp_path, content: dict) -> dict:
    orc = SimpleNamespace(run_dir=tmp_path, recorder=RunRecorder(tmp_path))
    record_generator_privacy(orc, centre="B", name="B_dcgan_all", seed=0, content=content)
    return json.loads((tmp_path / "privacy.json").read_text())


def test_a_generator_audited_without_dp_gets_no_dp_ledger_note(tmp_path):
    # Prepare: a reply with an audit and no privacy record (the sharer trains without DP)
    content = {AUDIT: encode_attacks(AUDITED)}
    # Execute
    privacy = _record(tmp_path, content)
    # Assert: the audit is kept; no record and no note of a "DP discriminator"
    assert [a["attack"] for a in privacy["audits"]] == ["gan_leaks"]
    assert privacy["records"] == [] and privacy["notes"] == []


def test_a_dp_generator_gets_its_record_and_the_ledger_note(tmp_path):
    # Prepare: the same audit, with the DP discriminator's privacy record
    content = {PRIVACY: _dp_record(), AUDIT: encode_attacks(AUDITED)}
    # Execute
    privacy = _record(tmp_path, content)
    # Assert
    assert [(r["arm"], r["phase"]) for r in privacy["records"]] == [("B_dcgan_all", "gan")]
    assert privacy["notes"] == [GENERATOR_LEDGER_NOTE]
