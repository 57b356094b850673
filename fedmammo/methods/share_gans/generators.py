"""Generators the server received: their description, snapshot weights, and their folder.

``generators/<centre>_<gan>_<subset>/`` holds ``gen-e<epoch>.pt`` state dicts of the
snapshots plus ``description.json`` (a :class:`~fedmammo.models.gans.GeneratorDescription`
whose ``extra`` holds the subset, training parameters and the Frechet figures), so
``load_generators: <run dir>`` in another scenario reuses them. The control arms'
generators (``untrained_<gan>``) are made here by :func:`untrained_generator`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import ArrayRecord

from fedmammo.errors import ConfigError
from fedmammo.models.gans import GeneratorDescription, build_generator, describe

__all__ = [
    "GENERATORS_DIR",
    "SharedGenerator",
    "check_patch_size",
    "generator_name",
    "load_shared_generator",
    "read_description",
    "saved_generator",
    "save_shared_generator",
    "untrained_generator",
]

GENERATORS_DIR = "generators"


@dataclass
class SharedGenerator:
    """A generator the server received: description, snapshot weights, quality figures."""

    name: str
    description: GeneratorDescription
    snapshots: list[tuple[str, ArrayRecord]] = field(default_factory=list)  # (gen-e<epoch>, w)


def generator_name(centre: str, gan: str, subset: str) -> str:
    """Folder and record name of a shared generator: ``<centre>_<gan>_<subset>``."""
    return f"{centre}_{gan}_{subset}"


def save_shared_generator(root: Path, gen: SharedGenerator) -> Path:
    """Write ``<root>/<name>/gen-e<epoch>.pt`` per snapshot and ``description.json``."""
    folder = root / gen.name
    folder.mkdir(parents=True, exist_ok=True)
    for record, arrays in gen.snapshots:
        torch.save(arrays.to_torch_state_dict(), folder / f"{record}.pt")
    desc = gen.description.to_dict()
    desc["extra"]["snapshot_files"] = [f"{r}.pt" for r, _ in gen.snapshots]
    (folder / "description.json").write_text(json.dumps(desc, indent=1, default=str))
    return folder


def saved_generator(source: Path | None, name: str) -> Path | None:
    """The folder of generator ``name`` that ``load_generators: <source>`` names (a run folder
    or its ``generators/`` folder), or None when it holds none."""
    if source is None:
        return None
    for folder in (source / GENERATORS_DIR / name, source / name):
        if (folder / "description.json").is_file():
            return folder
    return None


def read_description(folder: Path) -> GeneratorDescription:
    """The :class:`GeneratorDescription` a saved generator's ``description.json`` holds."""
    path = folder / "description.json"
    if not path.is_file():
        raise ConfigError(f"{folder}: no description.json; not a saved shared generator")
    try:
        return GeneratorDescription.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a generator description ({e})") from None


def check_patch_size(folder: Path, description: GeneratorDescription, size: int) -> None:
    """ConfigError unless a saved generator makes the recipe's ``patches.size`` patches."""
    if description.patch_size != size:
        raise ConfigError(
            f"{folder}: generator of {description.patch_size}-px patches, the recipe's "
            f"patches.size is {size}"
        )


def load_shared_generator(folder: Path) -> SharedGenerator:
    """Read a generator written by :func:`save_shared_generator`."""
    desc = read_description(folder)
    files = desc.extra.get("snapshot_files") or sorted(p.name for p in folder.glob("gen-e*.pt"))
    snapshots = [
        (Path(f).stem, ArrayRecord(torch.load(folder / f, weights_only=True))) for f in files
    ]
    return SharedGenerator(name=folder.name, description=desc, snapshots=snapshots)


def untrained_generator(
    name: str, kind: str, *, patch_size: int, latent_dim: int, width: int, seed: int, subset: str
) -> SharedGenerator:
    """A control arm's generator: ``kind``'s architecture as initialised (seeded by ``seed``),
    never trained, so it carries nothing of any centre's data; one snapshot, ``gen-e0``."""
    with torch.random.fork_rng():  # the caller's random state is left as it was
        torch.manual_seed(seed)
        gen = build_generator(patch_size=patch_size, latent_dim=latent_dim, width=width)
    desc = describe(
        kind,
        patch_size=patch_size,
        latent_dim=latent_dim,
        width=width,
        epochs=0,
        snapshot_epochs=[0],
        extra={"subset": subset, "training": {"untrained": True}},
    )
    return SharedGenerator(name, desc, [("gen-e0", ArrayRecord(gen.state_dict()))])
