"""Helpers to run the same apps at real sites: node-config strings and a site's data folder.

At each site: ``python -m fedmammo.federation.deployment prepare --scenario S.yaml --centre A
--data-dir DIR`` (or ``prepare PROFILE.yaml --data-dir DIR`` with the scenario's image size,
data seed and the centre's role as options) materialises the centre (phantom or dataset
adapter, splits, cache) as the scenario resolves it and writes
``DIR/centre.yaml`` and ``DIR/prepared.yaml`` (the role, image size and data seed the site
prepared with: the centre serves only these, whatever a server asks); then ``flower-supernode ...
--node-config "$(python -m fedmammo.federation.deployment node-config --centre A --data-dir
DIR)"`` (refused for a DIR that ``prepare`` did not complete).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console

from fedmammo.config import CentreProfile, load_profile, load_scenario
from fedmammo.data.prepare import materialise_centre
from fedmammo.errors import ConfigError, FedmammoError
from fedmammo.federation.console import safe

__all__ = [
    "PREPARED_FILE",
    "SiteSettings",
    "check_prepared",
    "main",
    "node_config",
    "prepare_site",
    "prepared_settings",
    "scenario_site",
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
            f"or run `python -m fedmammo.federation.deployment prepare --scenario SCENARIO.yaml "
            f"--centre {centre} --data-dir {path}` first"
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


@dataclass(frozen=True)
class SiteSettings:
    """What a site prepares: its centre's profile, the centre's role, the image size and the
    data seed (from a scenario, or from a profile and the command line)."""

    profile: CentreProfile
    role: str = "train"
    image_size: tuple[int, int] = (256, 192)
    data_seed: int = 0


def scenario_site(scenario_path: str | Path, centre: str, *, quick: bool = False) -> SiteSettings:
    """The settings of ``centre`` in a scenario: its profile with the scenario's overrides and
    privacy default applied, its role, the scenario's image size and data seed (``quick``: as
    a ``--quick`` run resolves them). ConfigError naming the valid centres for another name."""
    scenario = load_scenario(scenario_path, quick=quick, with_recipe=False)
    entry = next((e for e in scenario.centres if e.name == centre), None)
    if entry is None:
        raise ConfigError(
            f"{scenario_path}: no centre named {centre!r}; valid: "
            f"{', '.join(scenario.centre_names())}"
        )
    return SiteSettings(
        scenario.resolved_profiles[centre],
        role=entry.role,
        image_size=tuple(scenario.image_size),
        data_seed=scenario.data_seed,
    )


def prepare_site(
    profile: str | Path | CentreProfile,
    data_dir: str | Path,
    *,
    image_size: tuple[int, int],
    data_seed: int = 0,
    role: str = "train",
    name: str | None = None,
) -> int:
    """Materialise a centre's data in ``data_dir``; return the number of cached images.
    ``profile``: a profile file (``name`` renames its centre), or a resolved profile (e.g.
    :func:`scenario_site`'s)."""
    if not isinstance(profile, CentreProfile):
        profile = load_profile(profile, {"name": name} if name else None)
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


def _shown(value: object) -> str:
    """An option's value as typed on the command line (``64 48`` for an image size)."""
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _site_of(args: argparse.Namespace) -> SiteSettings:
    """``prepare``'s settings: the scenario's for the centre (options that repeat them must
    agree), or the profile's and the options' (their defaults where not given)."""
    given = {"role": args.role, "image_size": args.image_size, "data_seed": args.data_seed}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}
    if args.scenario is None:
        if args.profile is None:
            raise ConfigError("prepare: give the centre's PROFILE, or --scenario S --centre NAME")
        if args.quick:
            raise ConfigError(
                "prepare: --quick needs --scenario (it picks the quick run's settings)"
            )
        profile = load_profile(args.profile, {"name": args.name} if args.name else None)
        return SiteSettings(profile, **given)
    if args.profile is not None:
        raise ConfigError(
            f"prepare: give a PROFILE ({args.profile}) or --scenario, not both: with --scenario "
            "the centre's profile is the scenario's"
        )
    if not args.name:
        raise ConfigError(
            f"prepare: --scenario needs --centre, the centre's name in {args.scenario}"
        )
    site = scenario_site(args.scenario, args.name, quick=args.quick)
    for key, value in given.items():
        if value != getattr(site, key):
            option = "--" + key.replace("_", "-")
            raise ConfigError(
                f"prepare: {option} {_shown(value)} differs from the scenario's "
                f"{_shown(getattr(site, key))} for centre {args.name} ({args.scenario}); fix: "
                f"drop {option}, the scenario sets it"
            )
    return site


def main(
    argv: list[str] | None = None, *, prog: str = "python -m fedmammo.federation.deployment"
) -> int:
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="cmd", required=True)
    prep = sub.add_parser(
        "prepare",
        help="materialise a site's centre in its data folder",
        description="Materialise a site's centre (phantom or dataset adapter, splits, cache) in "
        "its data folder, from the scenario the site takes part in (--scenario S --centre NAME: "
        "the centre's profile with the scenario's overrides, its role, the scenario's image "
        "size and data seed) or from a profile file and the options below.",
    )
    prep.add_argument(
        "profile",
        nargs="?",
        help="the centre's profile, a YAML file (e.g. centres/s1.yaml); or give --scenario",
    )
    prep.add_argument(
        "--scenario",
        help="the scenario the site takes part in: the centre's profile, role, image size and "
        "data seed are the scenario's (with --centre)",
    )
    prep.add_argument(
        "--quick",
        action="store_true",
        help="with --scenario: the settings of the scenario's --quick run",
    )
    prep.add_argument(
        "--data-dir",
        required=True,
        help="the site's data folder: images, splits, cache, centre.yaml and prepared.yaml "
        "go here (the SuperNode's data-dir)",
    )
    prep.add_argument(
        "--centre",
        "--name",
        dest="name",
        help="the centre's name in the scenario (needed with --scenario; default: the profile's)",
    )
    prep.add_argument(
        "--role",
        choices=["train", "test", "sharer", "receiver"],
        help="the centre's role in the scenario; test puts every image in the test split "
        "(default: train, or the scenario's)",
    )
    prep.add_argument(
        "--image-size",
        nargs=2,
        type=int,
        metavar=("HEIGHT", "WIDTH"),
        help="the size images are cached at (default: 256 192, or the scenario's); must match "
        "the scenario's image_size (the site serves only this size)",
    )
    prep.add_argument(
        "--data-seed",
        type=int,
        help="seeds the phantom and the patient-wise splits (default: 0, or the scenario's); "
        "must match the scenario's data_seed",
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
            site = _site_of(args)
            n = prepare_site(
                site.profile,
                args.data_dir,
                image_size=site.image_size,
                data_seed=site.data_seed,
                role=site.role,
            )
            console.print(
                f"prepared {n} images of centre {safe(site.profile.name)} in "
                f"{safe(args.data_dir)} (role {site.role}, image size "
                f"{site.image_size[0]}x{site.image_size[1]}, data seed {site.data_seed})",
                soft_wrap=True,  # one line, as README shows it
            )
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
