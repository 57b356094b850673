"""Telemetry is off unless FEDMAMMO_TELEMETRY=1; nothing is posted to Flower's servers."""

from __future__ import annotations

import os

import pytest

from fedmammo.federation.telemetry import quiet_flower


def test_subprocess_environment_gets_telemetry_and_update_check_off(monkeypatch):
    monkeypatch.delenv("FEDMAMMO_TELEMETRY", raising=False)
    env = {"PATH": "/bin", "FLWR_TELEMETRY_ENABLED": "1"}
    assert quiet_flower(env) is False
    assert env == {"PATH": "/bin", "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


@pytest.mark.parametrize("where", ["env", "process"])
def test_the_documented_switch_leaves_flower_alone(monkeypatch, where):
    if where == "process":
        monkeypatch.setenv("FEDMAMMO_TELEMETRY", "1")
        env = {}
    else:
        monkeypatch.delenv("FEDMAMMO_TELEMETRY", raising=False)
        env = {"FEDMAMMO_TELEMETRY": "1"}
    assert quiet_flower(env) is True
    assert "FLWR_TELEMETRY_ENABLED" not in env


def test_an_already_imported_flower_posts_nothing(monkeypatch):
    # Prepare: Flower imported with telemetry on, and a trap on its HTTP client
    import flwr.supercore.telemetry as telemetry

    monkeypatch.delenv("FEDMAMMO_TELEMETRY", raising=False)
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "1")
    monkeypatch.delenv("FLWR_DISABLE_UPDATE_CHECK", raising=False)  # restored afterwards
    monkeypatch.setattr(telemetry, "FLWR_TELEMETRY_ENABLED", "1")
    monkeypatch.setattr(telemetry, "_get_source_id", lambda: "test")  # no file in ~/.flwr
    monkeypatch.setattr(telemetry, "_get_partner_id", lambda: None)
    posted = []
    monkeypatch.setattr(telemetry.urllib.request, "urlopen", lambda *a, **k: posted.append(a))
    # Execute
    quiet_flower()
    answer = telemetry.create_event(telemetry.EventType.PING, None)
    # Assert
    assert answer == "disabled" and posted == []
    assert os.environ["FLWR_TELEMETRY_ENABLED"] == "0"
    assert os.environ["FLWR_DISABLE_UPDATE_CHECK"] == "1"
