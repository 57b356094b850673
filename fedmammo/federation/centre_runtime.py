"""Which centre a ClientApp is, and its prepared data (loaded once per process)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import Context

from fedmammo.config import CentreProfile, load_profile
from fedmammo.data.prepare import CentreData, PooledData, materialise_centre
from fedmammo.errors import ConfigError
from fedmammo.federation.runspec import POOLED, load_runspec, scenario_of
from fedmammo.training.runtime import select_device

if TYPE_CHECKING:  # messages imports the privacy ledger, which imports this module
    from fedmammo.federation.messages import CentreConfig

__all__ = [
    "CentreIdentity",
    "DataSettingsRefusal",
    "Rows",
    "centre_data",
    "device",
    "identity_of",
    "select_rows",
]

log = logging.getLogger(__name__)


class DataSettingsRefusal(ConfigError):
    """The server asked for data settings (image size, data seed) the centre does not serve."""


_DATA: dict[tuple, CentreData | PooledData] = {}


@dataclass
class CentreIdentity:
    """A node's centre: its profile and data location (or the pooled parts)."""

    name: str
    role: str
    profile: CentreProfile | None
    data_root: str
    data_dir: str | None = None
    pooled: tuple[tuple[CentreProfile, str], ...] = ()
    # the centre's own data settings (a site's prepared.yaml or node config; in simulation the
    # run's scenario); None: not known (a site prepared before they were recorded)
    image_size: tuple[int, int] | None = None
    data_seed: int | None = None

    @property
    def synthetic_data(self) -> bool:
        """Whether every image this centre holds is synthetic (phantom): only then may its
        figures show its own images (a real dataset's pixels never go into a plot)."""
        profiles = [p for p, _ in self.pooled] or [self.profile]
        return all(p is not None and p.data.synthetic is not None for p in profiles)


def _site_settings(node, data_dir: Path) -> tuple[tuple[int, int] | None, int | None, str]:
    """Image size, data seed and role of a deployed site: node config (``image-size="HxW"``,
    ``data-seed``, ``role``) over ``<data-dir>/prepared.yaml`` (written by deployment
    ``prepare``); role train when neither names one."""
    from fedmammo.federation.deployment import PREPARED_FILE, prepared_settings

    path = data_dir / PREPARED_FILE
    saved = prepared_settings(data_dir)
    size = saved.get("image_size")
    if "image-size" in node:
        size = str(node["image-size"]).lower().split("x")
    seed = node.get("data-seed", saved.get("data_seed"))
    role = str(node.get("role") or saved.get("role") or "train")
    try:
        return (
            tuple(int(v) for v in size) if size is not None else None,
            int(seed) if seed is not None else None,
            role,
        )
    except (TypeError, ValueError):
        raise ConfigError(
            f"centre data settings: image size {size} / data seed {seed} are not integers; "
            f"fix {path} or the node config (image-size=HxW, data-seed=N)"
        ) from None


def device() -> torch.device:
    """The centre's device: CUDA when present, else CPU (``select_device("auto")``)."""
    return select_device("auto")


def identity_of(context: Context) -> CentreIdentity:
    """Resolve the centre of this node from node config (deployment) or partition id."""
    node = context.node_config
    if "centre" in node:
        data_dir = Path(str(node.get("data-dir", ""))).expanduser()
        profile_path = Path(str(node.get("profile") or data_dir / "centre.yaml"))
        if not profile_path.is_file():
            raise ConfigError(
                f"node config: centre {node['centre']!r} has no profile at {profile_path}; fix: "
                'put the centre\'s YAML at <data-dir>/centre.yaml or pass profile="..."'
            )
        profile = load_profile(profile_path, {"name": str(node["centre"])})
        size, seed, role = _site_settings(node, data_dir)
        return CentreIdentity(
            name=profile.name,
            role=role,
            profile=profile,
            data_root=str(data_dir.parent),
            data_dir=str(data_dir),
            image_size=size,
            data_seed=seed,
        )
    spec = load_runspec(context.run_config)
    scenario = scenario_of(spec)
    pid = int(node["partition-id"])
    name = spec.node_order[pid]
    if name == POOLED:
        parts = tuple(
            (scenario.resolved_profiles[n], scenario.data_dir)
            for n in scenario.centre_names()
            if scenario.entry(n).role in ("train", "receiver")
        )
        return CentreIdentity(
            name="pooled",
            role="pooled",
            profile=None,
            data_root=scenario.data_dir,
            pooled=parts,
            image_size=tuple(scenario.image_size),
            data_seed=scenario.data_seed,
        )
    return CentreIdentity(
        name=name,
        role=scenario.entry(name).role,
        profile=scenario.resolved_profiles[name],
        data_root=scenario.data_dir,
        image_size=tuple(scenario.image_size),
        data_seed=scenario.data_seed,
    )


def centre_data(ident: CentreIdentity, config: CentreConfig) -> CentreData | PooledData:
    """This centre's data (cached) at its own image size and data seed; a request for other
    settings is refused (the server does not decide a centre's data)."""
    size = tuple(int(v) for v in config.image_size)
    data_seed = int(config.data_seed)
    own_size = ident.image_size if ident.image_size is not None else size
    own_seed = ident.data_seed if ident.data_seed is not None else data_seed
    if (size, data_seed) != (tuple(own_size), own_seed):
        raise DataSettingsRefusal(
            f"centre {ident.name} refused: the server asked for image size "
            f"{size[0]}x{size[1]} and data seed {data_seed}; this centre serves "
            f"{own_size[0]}x{own_size[1]}, data seed {own_seed} (its own settings)"
        )
    # keyed by everything that defines the data: one process may serve several scenarios
    profiles = tuple(p.model_dump_json() for p in [ident.profile] if p is not None)
    parts = tuple(p.model_dump_json() for p, _ in ident.pooled)
    key = (ident.name, ident.data_root, ident.data_dir, profiles, parts, size, data_seed)
    if key not in _DATA:
        if ident.image_size is None and ident.data_seed is None and ident.data_dir is not None:
            log.warning(
                "centre %s: no prepared data settings in its data dir; using the server's "
                "(run deployment prepare again to record them)",
                ident.name,
            )
        if ident.pooled:
            parts = [
                materialise_centre(p, root, image_size=size, data_seed=data_seed)
                for p, root in ident.pooled
            ]
            _DATA[key] = PooledData(parts=parts)
        else:
            assert ident.profile is not None
            _DATA[key] = materialise_centre(
                ident.profile,
                ident.data_root,
                image_size=size,
                data_seed=data_seed,
                test_only=ident.role == "test",
                data_dir=ident.data_dir,
            )
    return _DATA[key]


Rows = np.ndarray | list[np.ndarray]


def select_rows(data: CentreData | PooledData, split: str, segments: Sequence[str] | None) -> Rows:
    """Labelled rows of ``split``, restricted to ``segments`` when given (pooled: per part)."""
    rows = data.rows(split)
    if not segments:
        return rows
    keep = [str(s) for s in segments]
    if isinstance(data, PooledData):
        return [r[np.isin(p.segments(r), keep)] for p, r in zip(data.parts, rows, strict=True)]
    return rows[np.isin(data.segments(rows), keep)]
