"""Credentials of a real federation: a CA, the SuperLink's TLS certificate, SuperNode keys.

    python -m fedmammo.federation.pki init DIR [--host HOST ...] [--days N]
    python -m fedmammo.federation.pki node DIR NAME
    python -m fedmammo.federation.pki register DIR/nodes/NAME.pub CONNECTION [--name NAME]
    python -m fedmammo.federation.pki connection FLWR_HOME NAME --address HOST:PORT --ca CA.crt
        [--default]

``init`` writes ``DIR/ca.crt`` (give it to every site), ``DIR/ca.key`` (keep it offline),
``DIR/server.pem`` and ``DIR/server.key`` (the SuperLink's; subject alternative names
localhost, 127.0.0.1, ::1 and every ``--host``). ``node`` writes a SuperNode's ECDSA P-384 key
pair in OpenSSH format, as Flower 1.41 reads them (``flower-supernode
--auth-supernode-private-key DIR/nodes/NAME``, ``flwr supernode register DIR/nodes/NAME.pub``);
a site should run it itself and send only the ``.pub`` file. ``register`` runs ``flwr
supernode register`` against a SuperLink started with ``--enable-supernode-auth`` and prints
the node id. ``connection`` adds (or replaces) one TLS connection in Flower's
``FLWR_HOME/config.toml``, keeping the others and the default connection (``--default``
changes it). See docs/deployment.md for the whole site checklist.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmammo.errors import ConfigError, FedmammoError
from fedmammo.federation.telemetry import quiet_flower

__all__ = [
    "Pki",
    "PkiError",
    "init_pki",
    "main",
    "make_node_key",
    "register_node",
    "superlink_tls_args",
    "supernode_tls_args",
    "write_connection",
]

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


class PkiError(FedmammoError):
    """Credentials could not be made, read or registered."""


@dataclass(frozen=True)
class Pki:
    """Paths of a federation's TLS credentials."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _write(path: Path, data: bytes, *, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmammo federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def init_pki(
    directory: str | Path,
    *,
    hosts: tuple[str, ...] | list[str] = (),
    days: int = 825,
    ca_name: str = "fedmammo federation CA",
    overwrite: bool = False,
) -> Pki:
    """Make a CA and a SuperLink certificate for localhost, 127.0.0.1, ::1 and ``hosts``."""
    out = Path(directory)
    pki = Pki(out / "ca.crt", out / "ca.key", out / "server.pem", out / "server.key")
    if pki.ca_key.exists() and not overwrite:
        raise PkiError(f"{pki.ca_key} exists; refusing to replace a CA (use a new directory)")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    all_hosts = [*DEFAULT_HOSTS, *hosts]
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(all_hosts[-1] if hosts else "localhost"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(_san(all_hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write(pki.ca_key, _pem_key(ca_key), private=True)
    _write(pki.ca_cert, ca.public_bytes(serialization.Encoding.PEM))
    _write(pki.server_key, _pem_key(server_key), private=True)
    _write(pki.server_cert, server.public_bytes(serialization.Encoding.PEM))
    return pki


def make_node_key(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write a SuperNode's ECDSA P-384 key pair (OpenSSH format); return (private, public)."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise PkiError(f"node name {name!r}: use letters, digits, '-' and '_' only")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    base = Path(directory) / "nodes" / name
    if base.exists():
        raise PkiError(f"{base} exists; refusing to replace a node key")
    _write(base, private, private=True)
    _write(base.with_suffix(".pub"), public + f" {name}\n".encode())
    return base, base.with_suffix(".pub")


def _flwr() -> str:
    candidate = Path(sys.executable).parent / "flwr"
    return str(candidate) if candidate.exists() else "flwr"


def register_node(
    public_key: str | Path,
    connection: str,
    *,
    name: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> int:
    """Register a SuperNode's public key with ``flwr supernode register``; return its node id."""
    cmd = [_flwr(), "supernode", "register", str(public_key), connection, "--format", "json"]
    if name:
        cmd += ["--name", name]
    env = dict(os.environ if env is None else env)
    quiet_flower(env)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        out = {}
    if proc.returncode != 0 or not out.get("success", False):
        detail = out.get("error-message") or (proc.stdout + proc.stderr).strip()[-400:]
        raise PkiError(f"flwr supernode register {public_key} failed: {detail}")
    return int(out["node-id"])


def _read_flower_config(path: Path) -> dict:
    """``path`` parsed, or Flower's own first-use config (``local`` the default) when absent."""
    if not path.exists():
        from flwr.cli.constant import DEFAULT_FLOWER_CONFIG_TOML

        return tomllib.loads(DEFAULT_FLOWER_CONFIG_TOML)
    try:
        config = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix or move it, then rerun") from None
    if not isinstance(config.get("superlink", {}), dict):
        raise ConfigError(f"{path}: 'superlink' is not a table; fix or move the file, then rerun")
    return config


def write_connection(
    flwr_home: str | Path,
    name: str,
    *,
    address: str,
    ca_cert: str | Path,
    default: bool = False,
) -> tuple[Path, str]:
    """Add or replace the TLS connection ``name`` in ``FLWR_HOME/config.toml`` (``flwr`` CLI).

    Every other connection and key is kept (a missing file starts as the one Flower writes on
    first use, with its ``local`` simulation connection); ``name`` becomes the default only
    with ``default`` or when none is set. Returns the path and a line saying what changed.
    """
    if name == "default" or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(
            f"connection name {name!r}: use letters, digits, '-' and '_' only (not 'default')"
        )
    path = Path(flwr_home) / "config.toml"
    config = _read_flower_config(path)
    links = config.setdefault("superlink", {})
    action = "replaced" if name in links else "added"
    links[name] = {"address": address, "root-certificates": str(Path(ca_cert).resolve())}
    before = links.get("default")
    if default or not before:
        links["default"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(config))
    others = sorted(k for k, v in links.items() if k != name and isinstance(v, dict))
    if links["default"] == before:
        chosen = f"default connection stays {before!r} (name {name!r} in flwr commands)"
    else:
        chosen = f"default connection is now {name!r}" + (f" (was {before!r})" if before else "")
    kept = ", ".join(map(repr, others)) or "no other connections"
    return path, f"{path}: {action} connection {name!r} ({address}, TLS); kept {kept}; {chosen}"


def superlink_tls_args(pki: Pki) -> list[str]:
    """``flower-superlink`` arguments for TLS and SuperNode authentication."""
    return [
        "--ssl-ca-certfile",
        str(pki.ca_cert),
        "--ssl-certfile",
        str(pki.server_cert),
        "--ssl-keyfile",
        str(pki.server_key),
        "--enable-supernode-auth",
    ]


def supernode_tls_args(ca_cert: str | Path, private_key: str | Path) -> list[str]:
    """``flower-supernode`` arguments: trust the federation's CA, sign with the node key."""
    return ["--root-certificates", str(ca_cert), "--auth-supernode-private-key", str(private_key)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedmammo.federation.pki")
    sub = parser.add_subparsers(dest="cmd", required=True)
    init = sub.add_parser("init", help="make a CA and the SuperLink's TLS certificate")
    init.add_argument("directory")
    init.add_argument("--host", action="append", default=[], help="SuperLink DNS name or IP")
    init.add_argument("--days", type=int, default=825)
    node = sub.add_parser("node", help="make a SuperNode's authentication key pair")
    node.add_argument("directory")
    node.add_argument("name")
    reg = sub.add_parser("register", help="register a SuperNode public key (flwr CLI)")
    reg.add_argument("public_key")
    reg.add_argument("connection")
    reg.add_argument("--name")
    con = sub.add_parser("connection", help="add a TLS connection to FLWR_HOME/config.toml")
    con.add_argument("flwr_home")
    con.add_argument("name")
    con.add_argument("--address", required=True)
    con.add_argument("--ca", required=True)
    con.add_argument("--default", action="store_true", help="make NAME the default connection")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "init":
            pki = init_pki(args.directory, hosts=args.host, days=args.days)
            print(f"CA {pki.ca_cert} (keep {pki.ca_key} offline); SuperLink {pki.server_cert}")
        elif args.cmd == "node":
            private, public = make_node_key(args.directory, args.name)
            print(f"private key {private} (stays at the site); public key {public}")
        elif args.cmd == "register":
            print(register_node(args.public_key, args.connection, name=args.name))
        else:
            con_args = {"address": args.address, "ca_cert": args.ca, "default": args.default}
            print(write_connection(args.flwr_home, args.name, **con_args)[1])
        return 0
    except (FedmammoError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
