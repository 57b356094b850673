"""Helpers to run the same apps at real sites: node-config strings and a site's data folder.

At each site: ``python -m fedmammo.federation.deployment prepare PROFILE.yaml --data-dir DIR``
materialises the centre (phantom or dataset adapter, splits, cache) and writes
``DIR/centre.yaml`` and ``DIR/prepared.yaml`` (the role, image size and data seed the site
prepared with: the centre serves only these, whatever a server asks); then ``flower-supernode ...
--node-config "$(python -m fedmammo.federation.deployment node-config --centre A --data-dir
DIR)"`` (refused for a DIR that ``prepare`` did not complete).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from rich.console import Console

from fedmammo.config import load_profile
from fedmammo.data.prepare import materialise_centre
from fedmammo.errors import ConfigError, FedmammoError
from fedmammo.federation.console import safe

__all__ = [
    "PREPARED_FILE",
    "check_prepared",
    "main",
    "node_config",
    "prepare_site",
    "prepared_settings",
    "site_role",
    "toml_string",
]

#: The site's own data settings, next to centre.yaml (read by ``centre_runtime.identity_of``).
PREPARED_FILE = "prepared.yaml"


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string that Flower's ``--node-config`` parser keeps whole.

    The parser (``flwr.common.config.parse_config_args``) cuts a quoted value at the next
    double quote before reading it as TOML, so a double quote, a backslash and control
    characters are written as ``\\uXXXX`` / ``\\\\`` escapes; spaces and single quotes
    stay as they are.
    """
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"' or ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def node_config(centre: str, data_dir: str | Path, *, role: str = "train") -> str:
    """The ``--node-config`` string of a SuperNode serving ``centre`` from ``data_dir``
    (values quoted and escaped: a data dir with spaces or quotes survives)."""
    values = {"centre": centre, "data-dir": str(Path(data_dir).resolve()), "role": role}
    return " ".join(f"{k}={toml_string(v)}" for k, v in values.items())


def prepared_settings(data_dir: str | Path) -> dict:
    """What ``prepare`` recorded in ``data_dir`` (centre, role, image size, data seed); {} if
    none."""
    path = Path(data_dir) / PREPARED_FILE
    return (yaml.safe_load(path.read_text()) if path.is_file() else None) or {}


def check_prepared(data_dir: str | Path, centre: str) -> Path:
    """``data_dir`` if ``prepare`` completed there (its ``centre.yaml`` and ``prepared.yaml``)
    for ``centre``, else a ConfigError naming the folder and the fix (a SuperNode would
    otherwise serve one centre's data under another's name)."""
    path = Path(data_dir).expanduser().resolve()
    missing = [f for f in ("centre.yaml", PREPARED_FILE) if not (path / f).is_file()]
    if missing:
        state = "does not exist" if not path.exists() else f"has no {' or '.join(missing)}"
        raise ConfigError(
            f"--data-dir {path} {state}: not a prepared centre folder; fix: correct the path, "
            f"or run `python -m fedmammo.federation.deployment prepare PROFILE.yaml "
            f"--data-dir {path}` first"
        )
    prepared = prepared_settings(path).get("centre")
    if prepared is not None and str(prepared) != centre:
        raise ConfigError(
            f"--data-dir {path} was prepared for centre {prepared!r}, not {centre!r}; fix: "
            f"--centre {prepared}, or the data dir prepared for {centre}"
        )
    return path


def site_role(data_dir: str | Path, asked: str | None = None) -> str:
    """The role a site serves its centre in: the one ``prepare`` split its images for (train
    when it did not record one); ``asked`` (node-config's ``--role``) must agree with it as
    far as the split goes (test or not), else a ConfigError naming the fix."""
    prepared = str(prepared_settings(data_dir).get("role") or asked or "train")
    if asked is not None and (asked == "test") != (prepared == "test"):
        raise ConfigError(
            f"--data-dir {Path(data_dir).resolve()} was prepared as role {prepared!r}, not "
            f"{asked!r}: a test centre keeps every image in the test split; fix: --role "
            f"{prepared}, or prepare the folder again with --role {asked}"
        )
    return asked or prepared


def prepare_site(
    profile_path: str | Path,
    data_dir: str | Path,
    *,
    image_size: tuple[int, int],
    data_seed: int = 0,
    role: str = "train",
    name: str | None = None,
) -> int:
    """Materialise a centre's data in ``data_dir``; return the number of cached images."""
    profile = load_profile(profile_path, {"name": name} if name else None)
    data = materialise_centre(
        profile,
        Path(data_dir).parent,
        image_size=image_size,
        data_seed=data_seed,
        test_only=role == "test",
        data_dir=data_dir,
    )
    settings = {
        "centre": profile.name,
        "role": role,  # a test centre's images are all test images: the split depends on it
        "image_size": [int(v) for v in image_size],
        "data_seed": int(data_seed),
    }
    (Path(data_dir) / PREPARED_FILE).write_text(yaml.safe_dump(settings, sort_keys=False))
    return len(data.manifest)


def main(
    argv: list[str] | None = None, *, prog: str = "python -m fedmammo.federation.deployment"
) -> int:
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="cmd", required=True)
    prep = sub.add_parser("prepare", help="materialise a site's centre in its data folder")
    prep.add_argument("profile", help="the centre's profile, a YAML file (e.g. centres/s1.yaml)")
    prep.add_argument(
        "--data-dir",
        required=True,
        help="the site's data folder: images, splits, cache, centre.yaml and prepared.yaml "
        "go here (the SuperNode's data-dir)",
    )
    prep.add_argument(
        "--name", help="the centre's name (default: the profile's); must match the scenario's"
    )
    prep.add_argument(
        "--role",
        default="train",
        choices=["train", "test", "sharer", "receiver"],
        help="the centre's role in the scenario; test puts every image in the test split "
        "(default: train)",
    )
    prep.add_argument(
        "--image-size",
        nargs=2,
        type=int,
        default=[256, 192],
        metavar=("HEIGHT", "WIDTH"),
        help="the size images are cached at (default: 256 192); must match the scenario's "
        "image_size (the site serves only this size)",
    )
    prep.add_argument(
        "--data-seed",
        type=int,
        default=0,
        help="seeds the phantom and the patient-wise splits (default: 0); must match the "
        "scenario's data_seed",
    )
    nc = sub.add_parser("node-config", help="print the SuperNode --node-config string")
    nc.add_argument("--centre", required=True, help="the centre's name in the scenario")
    nc.add_argument("--data-dir", required=True, help="the folder `prepare` wrote")
    nc.add_argument(
        "--role", help="the centre's role in the scenario (default: the one `prepare` was given)"
    )
    args = parser.parse_args(argv)
    console = Console()
    try:
        if args.cmd == "prepare":
            n = prepare_site(
                args.profile,
                args.data_dir,
                image_size=tuple(args.image_size),
                data_seed=args.data_seed,
                role=args.role,
                name=args.name,
            )
            console.print(f"prepared {n} images in {safe(args.data_dir)}")
        else:
            data_dir = check_prepared(args.data_dir, args.centre)
            print(node_config(args.centre, data_dir, role=site_role(data_dir, args.role)))
        return 0
    except FedmammoError as exc:
        # stderr: `--node-config "$(... node-config ...)"` must not capture the error as config
        Console(stderr=True).print(f"[red]error:[/] {safe(exc)}", highlight=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
