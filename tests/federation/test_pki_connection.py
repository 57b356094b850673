"""``pki connection`` merges one TLS connection into Flower's ``config.toml``: the ``local``
simulation connection, every other connection and the default one are kept, as read back by
Flower 1.41's own reader (``flwr.cli.flower_config``)."""

from __future__ import annotations

import tomllib

import pytest
from flwr.cli.flower_config import read_superlink_connection

from fedmammo.errors import ConfigError
from fedmammo.federation.pki import main, write_connection

EXISTING = """\
[superlink]
default = "local"

[superlink.local]
address = ":local:"
options.num-supernodes = 5

[superlink.lab]
address = "10.0.0.2:9093"
insecure = true
"""


@pytest.fixture
def home(tmp_path, monkeypatch):
    folder = tmp_path / "flwr_home"
    folder.mkdir()
    (folder / "config.toml").write_text(EXISTING)
    monkeypatch.setenv("FLWR_HOME", str(folder))  # read_superlink_connection reads it
    return folder


def test_connection_keeps_local_and_the_default_and_replaces_itself(home, tmp_path, capsys):
    # Prepare
    ca = tmp_path / "ca.crt"
    ca.write_text("PEM")
    args = ["connection", str(home), "hospitals", "--ca", str(ca), "--address"]
    # Execute: twice, the second with a new address
    assert main([*args, "link.example:9093"]) == 0
    assert main([*args, "link.example:9094"]) == 0
    # Assert: one hospitals entry, the others untouched, the default unchanged
    config = tomllib.loads((home / "config.toml").read_text())
    assert config["superlink"] == {
        "default": "local",
        "local": {"address": ":local:", "options": {"num-supernodes": 5}},
        "lab": {"address": "10.0.0.2:9093", "insecure": True},
        "hospitals": {"address": "link.example:9094", "root-certificates": str(ca.resolve())},
    }
    assert read_superlink_connection(None).name == "local"
    assert read_superlink_connection("local").options.num_supernodes == 5
    hospitals = read_superlink_connection("hospitals")
    assert hospitals.address == "link.example:9094" and not hospitals.insecure
    first, second = capsys.readouterr().out.splitlines()
    assert "added connection 'hospitals'" in first and "replaced connection" in second
    assert "kept 'lab', 'local'" in second and "default connection stays 'local'" in second


def test_default_changes_only_when_asked_or_unset(home, tmp_path):
    # Execute / Assert: asked
    _, note = write_connection(home, "hospitals", address="h:1", ca_cert=tmp_path, default=True)
    assert read_superlink_connection(None).name == "hospitals"
    assert "default connection is now 'hospitals' (was 'local')" in note
    # unset: the new connection becomes the default
    (home / "config.toml").write_text('[superlink.lab]\naddress = "10.0.0.2:9093"\n')
    write_connection(home, "hospitals", address="h:1", ca_cert=tmp_path)
    assert read_superlink_connection(None).name == "hospitals"
    assert read_superlink_connection("lab").address == "10.0.0.2:9093"


def test_a_new_flower_home_keeps_flowers_local_default(tmp_path, monkeypatch):
    # Prepare: no config.toml yet (Flower would write its own on first use)
    home = tmp_path / "new_home"
    monkeypatch.setenv("FLWR_HOME", str(home))
    # Execute
    write_connection(home, "hospitals", address="h:1", ca_cert=tmp_path / "ca.crt")
    # Assert
    assert read_superlink_connection(None).name == "local"
    assert read_superlink_connection("local").address == ":local:"
    assert read_superlink_connection("hospitals").address == "h:1"


def test_a_broken_config_or_name_is_one_line_and_left_alone(home, tmp_path):
    (home / "config.toml").write_text("[superlink\n")
    with pytest.raises(ConfigError, match="is not valid TOML .*fix or move it"):
        write_connection(home, "hospitals", address="h:1", ca_cert=tmp_path)
    assert (home / "config.toml").read_text() == "[superlink\n"
    with pytest.raises(ConfigError, match="not 'default'"):
        write_connection(home, "default", address="h:1", ca_cert=tmp_path)
    with pytest.raises(ConfigError, match="letters, digits"):
        write_connection(home, "a.b", address="h:1", ca_cert=tmp_path)
