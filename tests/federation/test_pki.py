"""Credentials made by fedmammo.federation.pki are what Flower 1.41 and TLS clients expect."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from fedmammo.federation.pki import PkiError, init_pki, main, make_node_key, write_connection


def test_server_certificate_is_signed_by_the_ca_and_names_every_host(tmp_path):
    # Prepare / Execute
    pki = init_pki(tmp_path, hosts=["link.hospital.example", "10.1.2.3"])
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    # Assert
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "link.hospital.example"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.1.2.3")
    }
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (pki.ca_key, pki.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_an_existing_ca_is_never_replaced(tmp_path):
    init_pki(tmp_path)
    with pytest.raises(PkiError, match="refusing to replace a CA"):
        init_pki(tmp_path)


def test_node_keys_are_in_the_format_flower_reads(tmp_path):
    # Prepare
    from flwr.cli.supernode.register import try_load_public_key

    # Execute
    private, public = make_node_key(tmp_path, "centre_a")
    # Assert: what flower-supernode and `flwr supernode register` load
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert b"BEGIN PUBLIC KEY" in try_load_public_key(public)
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(PkiError, match="refusing to replace"):
        make_node_key(tmp_path, "centre_a")
    with pytest.raises(PkiError, match="letters, digits"):
        make_node_key(tmp_path, "../evil")


def test_cli_and_connection_file(tmp_path, capsys):
    assert main(["init", str(tmp_path / "pki"), "--host", "203.0.113.7"]) == 0
    assert main(["node", str(tmp_path / "pki"), "site1"]) == 0
    assert main(["init", str(tmp_path / "pki")]) == 2  # refuses: the CA exists
    path, _ = write_connection(
        tmp_path / "home", "fed", address="203.0.113.7:9093", ca_cert=tmp_path / "pki" / "ca.crt"
    )
    text = path.read_text()
    assert '[superlink.fed]\naddress = "203.0.113.7:9093"' in text
    assert f'"{(tmp_path / "pki" / "ca.crt").resolve()}"' in text
    assert 'default = "local"' in text  # Flower's first-use default is kept
    assert "insecure" not in text
