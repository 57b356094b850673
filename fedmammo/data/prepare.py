"""Materialise a centre's data: phantom or dataset adapter -> manifest -> splits -> cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from torch.utils.data import ConcatDataset, Dataset

from fedmammo.config import CentreProfile
from fedmammo.data.cache import CachedImageDataset, ImageCache
from fedmammo.data.manifest import decode_lesions, normalise_manifest, read_manifest, write_manifest
from fedmammo.data.splits import SPLITS, assign_splits
from fedmammo.errors import ConfigError, DataError
from fedmammo.files import replace_whole
from fedmammo.seeds import hashed_int

__all__ = [
    "PHANTOM_STORE_ENV",
    "CentreData",
    "CentreJob",
    "PooledData",
    "centre_data_dir",
    "data_config_problem",
    "materialise_centre",
    "materialise_centres",
    "missing_data_root",
    "preparation_workers",
    "profile_stamp",
]

log = logging.getLogger(__name__)

#: Environment variable naming a folder of generated phantom centres (optional). A synthetic
#: centre prepared in a new data folder is then copied from it when the same profile, seed
#: and phantom code were generated before, and generated once into it otherwise: for runs
#: that each start from an empty data folder (the test suite, CI jobs, sweeps).
PHANTOM_STORE_ENV = "FEDMAMMO_PHANTOM_STORE"


def _phantom_version() -> str:
    """A hash of the phantom's source: new phantom code means new images."""
    folder = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(folder.glob("phantom*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def profile_stamp(profile: CentreProfile, data_seed: int) -> str:
    """A short hash of what determines a centre's data (profile data + labels + seed, and
    the phantom's code for synthetic centres)."""
    payload = {
        "phantom": _phantom_version() if profile.data.synthetic is not None else None,
        "data": profile.data.model_dump(mode="json"),
        "labels": profile.labels.model_dump(mode="json"),
        "source": profile.source,
        "name": profile.name,
        "seed": data_seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def centre_data_dir(root: str | Path, profile: CentreProfile, data_seed: int) -> Path:
    """Where a centre's phantom images and caches live under ``root``."""
    return Path(root) / f"{profile.name}-{profile_stamp(profile, data_seed)}"


#: A dataset's split names, from the most held out: a patient with images in several goes
#: wholly to the first of them (no test or validation patient is trained on).
_HELD_OUT_FIRST = ("test", "val", "train")


def _split(
    manifest: pd.DataFrame, profile: CentreProfile, *, test_only: bool, data_seed: int
) -> pd.DataFrame:
    """Patient-wise splits. A dataset's own split (``use_dataset_split``) is kept: ``train`` /
    ``val`` / ``test`` as given; ``train`` / ``test`` keeps the test split and divides train
    into train + val by the profile's fractions; the patients of images without one are split
    by the profile's fractions (warned). A split with other values is not used: every image is
    split by the profile's fractions (warned)."""
    if test_only:
        return assign_splits(manifest, {"test": 1.0}, seed=data_seed)
    official = manifest["split"]
    given = set(official.dropna().unique())
    if not (profile.data.use_dataset_split and given):
        return assign_splits(manifest, dict(profile.split), seed=data_seed)
    if other := sorted(str(v) for v in given - set(_HELD_OUT_FIRST)):
        log.warning(
            "centre %s: the dataset's split is not used (values other than train / val / "
            "test: %s); every image is split again by the profile's split fractions",
            profile.name,
            ", ".join(other[:5]),
        )
        return assign_splits(manifest, dict(profile.split), seed=data_seed)
    out = manifest.copy()
    out["split"] = official = _one_split_per_patient(official, manifest, profile)
    if "val" not in given:
        f_train, f_val = profile.split.get("train", 0.0), profile.split.get("val", 0.0)
        is_train = (official == "train").fillna(False).to_numpy(dtype=bool)
        if is_train.any() and f_train + f_val > 0:
            fractions = {"train": f_train / (f_train + f_val), "val": f_val / (f_train + f_val)}
            fractions = {k: v for k, v in fractions.items() if v > 0}
            sub = assign_splits(manifest[is_train], fractions, seed=data_seed)
            out.loc[is_train, "split"] = sub["split"].to_numpy()
    blank = out["split"].isna().to_numpy(dtype=bool)
    if blank.any():
        log.warning(
            "centre %s: %d of %d images, of %d patient(s), have no split in the dataset; those "
            "patients are split by the profile's split fractions, the others keep theirs",
            profile.name,
            int(blank.sum()),
            len(out),
            manifest.loc[blank, "patient_id"].nunique(),
        )
        sub = assign_splits(manifest[blank], dict(profile.split), seed=data_seed)
        out.loc[blank, "split"] = sub["split"].to_numpy()
    if "val" in given:
        log.info("centre %s: kept the dataset's train / val / test split", profile.name)
    elif "test" in given:
        log.info("centre %s: kept the dataset's official test split", profile.name)
    else:
        log.info("centre %s: the dataset's split has no test images", profile.name)
    out.attrs["dataset_split"] = True
    return out


def _check_training_images(manifest: pd.DataFrame, profile: CentreProfile) -> None:
    """DataError (one line) when a centre that trains has no image in its train split: found
    while its data is prepared, not at its first training round."""
    counts = manifest["split"].value_counts()
    if len(manifest) == 0 or counts.get("train", 0) > 0:
        return
    shown = ", ".join(f"{name} {int(counts.get(name, 0))}" for name in _HELD_OUT_FIRST)
    official = manifest.attrs.get("dataset_split", False)
    fix = (
        "set data.use_dataset_split: false to split its patients by the profile's split "
        "fractions, or give the centre role: test"
        if official
        else "give split.train a larger fraction (every split is of whole patients), more "
        "patients, or give the centre role: test"
    )
    raise DataError(
        f"centre {profile.name!r} trains but its split leaves it no training image ({shown} "
        f"of {len(manifest)} images, by {'the dataset' if official else 'the profile'}'s "
        f"split); fix: {fix}"
    )


def _one_split_per_patient(
    official: pd.Series, manifest: pd.DataFrame, profile: CentreProfile
) -> pd.Series:
    """``official`` with every patient in one split: the most held out of its images' (test,
    then val; a patient's images without one follow it), with a warning naming the patients
    split apart (CBIS-DDSM splits its mass and calcification lists apart; a user's CSV may
    too). NA for the patients without any."""
    patients = manifest["patient_id"].astype(str)
    rank = official.map({name: i for i, name in enumerate(_HELD_OUT_FIRST)})
    first = rank.groupby(patients).transform("min")  # (a patient's images without one follow)
    moved = sorted(set(patients[rank.notna() & (rank != first)]))
    if moved:
        log.warning(
            "centre %s: %d patients have images in more than one of the dataset's splits "
            "(%s); all their images are kept in the most held-out one (test, then val), so no "
            "test or validation patient is trained on",
            profile.name,
            len(moved),
            ", ".join(moved[:5]) + (", ..." if len(moved) > 5 else ""),
        )
    return first.map(dict(enumerate(_HELD_OUT_FIRST))).astype(official.dtype)


def _centre_seed(name: str, data_seed: int) -> int:
    return hashed_int(f"{name}:{data_seed}")


def missing_data_root(profile: CentreProfile) -> str | None:
    """Why a real-data centre's images cannot be read from its data root (one line): it does
    not exist, a table its format reads is not there or not readable as that format's (a
    dicom-folder labels CSV's columns and values); None for a phantom centre."""
    if profile.data.synthetic is not None:
        return None
    root = profile.data.resolved_root()
    unset = re.findall(r"\$\{?(\w+)", str(root)) if root is not None else []
    if unset:
        return (
            f"centre {profile.name!r}: data root {profile.data.root!r} names the environment "
            f"variable{'s' * (len(unset) > 1)} {', '.join(unset)}, not set; fix: export "
            f"{unset[0]}=/path/to/the/dataset (docs/datasets.md) or edit data.root"
        )
    if root is None or not root.exists():
        return (
            f"centre {profile.name!r}: data root {profile.data.root!r} (resolved: {root}) does "
            "not exist; fix: set the environment variable it names or edit data.root"
        )
    from fedmammo.data.adapters import missing_table, table_problem

    fmt = profile.data.format or ""
    if problem := missing_table(fmt, root, profile.data.options):
        return (
            f"centre {profile.name!r}: {problem}; fix: point data.root at the dataset's top "
            "folder, or give the table's path in data.options (docs/datasets.md)"
        )
    if problem := table_problem(fmt, root, profile.data.options):
        return f"centre {profile.name!r}: {problem}"
    return None


#: Adapter options a centre profile sets from its own fields, never from data.options.
_PROFILE_OPTIONS = {"centre": "name", "source": "source"}


def data_config_problem(profile: CentreProfile) -> str | None:
    """What is wrong with a real-data centre's ``data.format`` and ``data.options`` (their
    names, and the values checkable without the data, e.g. the label rule), or a phantom
    centre's segment styles (one line), or None; checked before any file is made."""
    if profile.data.synthetic is not None:
        from fedmammo.data.phantom import resolve_styles

        try:
            resolve_styles(profile)
        except ConfigError as exc:
            return str(exc)
        return None
    from fedmammo.data.adapters import list_formats, option_values_problem, options_of

    where = f"centre {profile.name!r}"
    fmt = profile.data.format or ""
    if fmt not in list_formats():
        return f"{where}: unknown data.format {fmt!r}; valid formats: {', '.join(list_formats())}"
    options = set(profile.data.options)
    if reserved := sorted(options & set(_PROFILE_OPTIONS)):
        fields = ", ".join(f"{k!r} by the profile's {_PROFILE_OPTIONS[k]!r}" for k in reserved)
        return f"{where}: data.options may not set {fields}; fix: set those profile fields"
    if unknown := sorted(options - options_of(fmt)):
        valid = ", ".join(sorted(options_of(fmt) - set(_PROFILE_OPTIONS)))
        return (
            f"{where}: unknown data.options {', '.join(map(repr, unknown))} for format "
            f"{fmt!r}; valid options: {valid} (docs/datasets.md)"
        )
    if problem := option_values_problem(fmt, profile.data.options):
        return f"{where}: data.options {problem} (docs/datasets.md)"
    return None


def _source_manifest(profile: CentreProfile, data_dir: Path, data_seed: int) -> pd.DataFrame:
    if profile.data.synthetic is not None:
        return _phantom_manifest(profile, data_dir / "phantom", data_seed)
    if problem := data_config_problem(profile):
        raise ConfigError(problem)
    if problem := missing_data_root(profile):
        raise DataError(problem)
    root = profile.data.resolved_root()
    assert root is not None
    return _dataset_manifest(profile, root, data_dir)


def _dataset_manifest(profile: CentreProfile, root: Path, data_dir: Path) -> pd.DataFrame:
    """The adapter's manifest of ``root``, read once and kept in ``data_dir`` while no file
    it was read from changes (:func:`_dataset_stamp`); written whole or not at all."""
    from fedmammo.data.adapters import load_manifest

    stamp_file, manifest_file = data_dir / "source_manifest.json", data_dir / "source_manifest.csv"
    stamp = _dataset_stamp(profile, root)
    try:
        kept = json.loads(stamp_file.read_text()) if stamp_file.is_file() else {}
    except ValueError:  # damaged: read the dataset again
        kept = {}
    if kept.get("stamp") == stamp and manifest_file.is_file():
        df = read_manifest(manifest_file)
        df.attrs.update(skipped=kept["skipped"], skip_reasons=kept["skip_reasons"])
        log.info(
            "centre %s: %d images listed from %s as before (no file under it changed; %d "
            "skipped then, summary in %s)",
            profile.name,
            len(df),
            root,
            kept["skipped"],
            data_dir / "summary.json",
        )
        return df
    options = {
        "print_summary": True,
        "summary_path": str(data_dir / "summary.json"),
        **profile.data.options,
    }
    df = load_manifest(
        profile.data.format or "", root, centre=profile.name, source=profile.source, **options
    )
    stamp_file.unlink(missing_ok=True)
    replace_whole(manifest_file, lambda t: write_manifest(df, t))
    kept = {
        "stamp": stamp,
        "skipped": df.attrs["skipped"],
        "skip_reasons": df.attrs["skip_reasons"],
    }
    # last: the stamp says the manifest beside it is whole
    replace_whole(stamp_file, lambda t: t.write_text(json.dumps(kept, indent=2)))
    return df


def _dataset_stamp(profile: CentreProfile, root: Path) -> str:
    """A hash of what a real-data centre's manifest is read from: the format, options and
    adapter code, and the path, size and modification time of every file under the root and
    of every file an option names. Listing a tree costs far less than reading its headers."""
    from fedmammo.data import adapters

    digest = hashlib.sha256()
    spec = [profile.name, profile.source, profile.data.format, profile.data.options]
    digest.update(json.dumps(spec, sort_keys=True, default=str).encode())
    for code in sorted(Path(adapters.__file__).parent.glob("*.py")):
        digest.update(code.read_bytes())
    named = [v for v in profile.data.options.values() if isinstance(v, str)]
    for top in [root, *(Path(os.path.expandvars(os.path.expanduser(v))) for v in named)]:
        files = sorted(top.rglob("*")) if top.is_dir() else [top] if top.is_file() else []
        for path in files:
            if path.is_file():
                st = path.stat()
                digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


#: Images of one phantom patient: one exam, R-CC, L-CC, R-MLO, L-MLO (``phantom.EXAM``; not
#: imported from there: the phantom's modules load SciPy, which a reused phantom never needs).
PHANTOM_IMAGES_PER_PATIENT = 4


def _phantom_manifest(profile: CentreProfile, phantom_dir: Path, data_seed: int) -> pd.DataFrame:
    """The manifest of the centre's phantom in ``phantom_dir``, generated (or copied from the
    phantom store) when there is none or it is not whole (:func:`_phantom_problem`: a manifest
    cut short by a full disk before manifests were written whole); image paths of a phantom
    folder moved or copied from elsewhere are rewritten to this folder's images."""
    manifest_path = phantom_dir / "manifest.csv"
    if manifest_path.is_file():
        manifest, problem = _phantom_problem(profile, manifest_path)
        if manifest is not None:
            return manifest
        log.warning(
            "%s: %s; generating centre %s's phantom again", manifest_path, problem, profile.name
        )
        manifest_path.unlink()
    _phantom_centre(profile, phantom_dir, data_seed)
    manifest, problem = _phantom_problem(profile, manifest_path)
    if manifest is None:
        store = os.environ.get(PHANTOM_STORE_ENV)
        copied = f" (copied from the phantom store {PHANTOM_STORE_ENV}={store})" if store else ""
        raise DataError(
            f"{manifest_path}: {problem}, just after it was made{copied}; delete {phantom_dir}"
            + (" and the store's entry for this centre" if store else "")
            + " and run again"
        )
    return manifest


def _phantom_problem(
    profile: CentreProfile, manifest_path: Path
) -> tuple[pd.DataFrame | None, str | None]:
    """``(manifest, None)`` when ``manifest_path`` is a whole phantom manifest of ``profile``,
    its image paths moved to its folder (:func:`_paths_moved_here`), else ``(None, why)``:
    cut short, unreadable, or not the profile's number of patients and images."""
    with open(manifest_path, "rb") as f:
        length = f.seek(0, os.SEEK_END)
        if length:
            f.seek(-1, os.SEEK_END)
        if not length or f.read(1) != b"\n":  # cut mid-line (a whole CSV ends its last line)
            return None, "the file is cut short (its last line is incomplete)"
    try:
        manifest = read_manifest(manifest_path)
        for lesions in manifest["lesions"]:
            decode_lesions(lesions)
    except (DataError, ValueError) as exc:  # pandas' parser errors are ValueErrors
        return None, f"the file cannot be read ({exc})"
    assert profile.data.synthetic is not None
    patients = sum(seg.patients for seg in profile.data.synthetic.segments)
    images = patients * PHANTOM_IMAGES_PER_PATIENT
    found = (len(manifest), manifest["patient_id"].nunique())
    if found != (images, patients) or manifest["path"].isna().any():
        return None, (
            f"it lists {found[0]} images of {found[1]} patients where the profile asks for "
            f"{patients} patients x {PHANTOM_IMAGES_PER_PATIENT} images = {images} (cut short?)"
        )
    return _paths_moved_here(manifest, manifest_path)


def _paths_moved_here(
    manifest: pd.DataFrame, manifest_path: Path
) -> tuple[pd.DataFrame | None, str | None]:
    """A phantom manifest names its images by absolute path (``<phantom>/dicom/<patient>/
    <file>.dcm``). When they lie in another folder (the data folder was moved or copied), they
    are rewritten to this folder's images and the manifest saved so: a copy never reads the
    original's files, and its cache's fingerprint (which hashes the paths) is its own."""
    here = manifest_path.parent.resolve()
    old = _image_folder(manifest)
    if old == here:
        return manifest, None
    if old is None:
        return None, "its image paths do not lie in one phantom folder's dicom/"
    if not (here / "dicom").is_dir():
        return None, f"its images are not in this folder (it names those of {old})"
    moved = normalise_manifest(_moved(manifest, str(old), str(here), where=manifest_path))
    write_manifest(moved, manifest_path)
    log.info(
        "%s: named the images of %s (the data folder was moved or copied); now those of %s",
        manifest_path,
        old,
        here,
    )
    return moved, None


def _phantom_centre(profile: CentreProfile, phantom_dir: Path, data_seed: int) -> None:
    """Generate the centre's phantom in ``phantom_dir``, or copy it from the phantom store
    (:data:`PHANTOM_STORE_ENV`), generating it there first when it is not there yet."""
    from fedmammo.data.phantom import generate_centre

    seed = _centre_seed(profile.name, data_seed)
    store = os.environ.get(PHANTOM_STORE_ENV)
    if not store:
        log.info("generating phantom centre %s in %s", profile.name, phantom_dir)
        generate_centre(profile, phantom_dir, seed=seed)
        return
    kept = Path(store).expanduser().resolve() / profile_stamp(profile, data_seed)
    if not (kept / "manifest.csv").is_file():
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{kept.name}-", dir=kept.parent))
        except OSError as exc:
            raise DataError(
                f"{PHANTOM_STORE_ENV}={store}: the phantom store cannot be written "
                f"({exc.strerror or exc}); point it to a writable folder or unset it"
            ) from exc
        log.info("generating phantom centre %s in the phantom store %s", profile.name, kept)
        generate_centre(profile, staging, seed=seed)
        write_manifest(_manifest_moved(staging, kept), staging / "manifest.csv")
        try:
            staging.rename(kept)  # atomic: readers see a whole entry or none
        except OSError:  # another process stored the same centre first: theirs is identical
            shutil.rmtree(staging, ignore_errors=True)
            if not (kept / "manifest.csv").is_file():
                raise DataError(
                    f"phantom store entry {kept} has no manifest.csv (not written by "
                    f"fedmammo, or damaged): delete it, or unset {PHANTOM_STORE_ENV}"
                ) from None
    else:
        log.info("copying phantom centre %s from the phantom store %s", profile.name, kept)
    shutil.copytree(
        kept, phantom_dir, ignore=shutil.ignore_patterns("manifest.csv"), dirs_exist_ok=True
    )
    # the manifest last: it marks the copy complete
    write_manifest(_manifest_moved(kept, phantom_dir), phantom_dir / "manifest.csv")


def _manifest_moved(folder: Path, to: Path) -> pd.DataFrame:
    """``folder``'s phantom manifest with its image paths moved to ``to`` (from ``folder``, or
    from where they were made if ``folder`` was moved since)."""
    manifest = read_manifest(folder / "manifest.csv")
    old = _image_folder(manifest)
    if old is None:
        raise DataError(f"{folder / 'manifest.csv'}: image paths outside {folder.resolve()}")
    return _moved(manifest, str(old), str(to.resolve()), where=folder / "manifest.csv")


def _image_folder(manifest: pd.DataFrame) -> Path | None:
    """The phantom folder holding all of ``manifest``'s images (paths ``<folder>/dicom/
    <patient>/<file>.dcm``), or None when they do not lie in one."""
    roots = {
        p.parents[2] if len(p.parts) > 3 and p.parent.parent.name == "dicom" else None
        for p in map(Path, manifest["path"].astype(str))
    }
    return roots.pop() if len(roots) == 1 else None


def _moved(manifest: pd.DataFrame, old: str, new: str, *, where: Path) -> pd.DataFrame:
    """``manifest`` with its image paths, all under folder ``old``, moved to folder ``new``."""
    if not all(p.startswith(old + os.sep) for p in manifest["path"]):
        raise DataError(f"{where}: image paths outside {old}")
    manifest["path"] = [new + p[len(old) :] for p in manifest["path"]]
    return manifest


@dataclass
class CentreData:
    """A centre's prepared data: the cached manifest (with splits) and its image cache."""

    name: str
    manifest: pd.DataFrame
    cache: ImageCache
    skipped: list = field(default_factory=list)  # (image id, reason) the cache could not read
    listed_skipped: int = 0  # images the dataset lists but its adapter skipped

    def rows(self, split: str | None, *, label: str | None = "malignant") -> np.ndarray:
        """Cache rows of a split (None = all), dropping rows whose ``label`` is missing; a
        split other than train, val, test (a server's typo or probe) is a ConfigError."""
        if split is not None and split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        m = self.manifest
        keep = (
            np.ones(len(m), dtype=bool)
            if split is None
            else (m["split"] == split).to_numpy(dtype=bool, na_value=False)
        )
        if label is not None:
            keep = keep & m[label].notna().to_numpy()  # the split's array may be read-only
        return np.flatnonzero(keep)

    def labels(self, rows: np.ndarray, label: str = "malignant") -> np.ndarray:
        return (
            self.manifest[label].to_numpy(dtype="float64", na_value=np.nan)[rows].astype(np.int64)
        )

    def patients(self, rows: np.ndarray) -> np.ndarray:
        """The patient of each row (what a bootstrap CI resamples)."""
        return self.manifest["patient_id"].astype(str).to_numpy()[rows]

    def segments(self, rows: np.ndarray) -> np.ndarray:
        return self.manifest["segment"].astype(str).to_numpy()[rows]

    def dataset(self, rows: np.ndarray, label: str = "malignant") -> Dataset:
        return CachedImageDataset(self.cache, rows, self.labels(rows, label))

    def counts(self) -> dict[str, int]:
        """Counts only: images per split, segment and label (what identify may report)."""
        m = self.manifest
        out: dict[str, int] = {"n-images": len(m), "n-patients": int(m["patient_id"].nunique())}
        lab = m["malignant"].astype("Int64").astype("string").fillna("na")
        for (split, seg, y), n in (
            m.groupby([m["split"].fillna("none"), m["segment"], lab]).size().items()
        ):
            out[f"n|{split}|{seg}|{y}"] = int(n)
        return out


@dataclass
class PooledData:
    """Several centres' data viewed as one (the simulation-only 'pooled' what-if arm)."""

    parts: list[CentreData]
    name: str = "pooled"

    def rows(self, split: str | None, *, label: str | None = "malignant") -> list[np.ndarray]:
        return [p.rows(split, label=label) for p in self.parts]

    def labels(self, rows: list[np.ndarray], label: str = "malignant") -> np.ndarray:
        return np.concatenate([p.labels(r, label) for p, r in zip(self.parts, rows, strict=True)])

    def segments(self, rows: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([p.segments(r) for p, r in zip(self.parts, rows, strict=True)])

    def patients(self, rows: list[np.ndarray]) -> np.ndarray:
        """``<centre>:<patient>``: two centres' patient ids never merge."""
        return np.concatenate(
            [p.name + ":" + p.patients(r) for p, r in zip(self.parts, rows, strict=True)]
        )

    def dataset(self, rows: list[np.ndarray], label: str = "malignant") -> Dataset:
        return ConcatDataset([p.dataset(r, label) for p, r in zip(self.parts, rows, strict=True)])


def materialise_centre(
    profile: CentreProfile,
    data_root: str | Path,
    *,
    image_size: tuple[int, int],
    data_seed: int = 0,
    test_only: bool = False,
    data_dir: str | Path | None = None,
    cache_workers: int | None = None,
) -> CentreData:
    """Prepare a centre once: source manifest, patient-wise splits, and the image cache.

    Everything is written under ``data_dir`` (default: a folder named after the centre and a
    hash of its profile under ``data_root``) and reused while inputs and settings are unchanged.
    ``cache_workers``: processes reading its images (``ImageCache.build``; None: by cores).
    """
    data_dir = Path(data_dir) if data_dir else centre_data_dir(data_root, profile, data_seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "centre.yaml").write_text(yaml.safe_dump(profile.model_dump(mode="json")))
    manifest = _source_manifest(profile, data_dir, data_seed)
    listed_skipped = int(manifest.attrs.get("skipped", 0))
    manifest["centre"] = profile.name
    key = profile.data.segment_key
    if key != ["source", "manufacturer"]:
        manifest["segment"] = manifest[key].astype(str).agg("-".join, axis=1)
    manifest = _split(manifest, profile, test_only=test_only, data_seed=data_seed)
    if not test_only:
        _check_training_images(manifest, profile)
    h, w = image_size
    cache = ImageCache.build(
        manifest, data_dir / f"cache_{h}x{w}", size=(h, w), workers=cache_workers
    )
    cached = normalise_manifest(cache.manifest)
    if cache.skipped:
        log.warning("centre %s: %d unreadable images skipped", profile.name, len(cache.skipped))
    return CentreData(
        name=profile.name,
        manifest=cached,
        cache=cache,
        skipped=list(cache.skipped),
        listed_skipped=listed_skipped,
    )


@dataclass(frozen=True)
class CentreJob:
    """One centre to prepare (:func:`materialise_centres`); ``thumbnail``: where to write a
    grid of its first images (synthetic centres only; None: no grid)."""

    profile: CentreProfile
    data_root: str
    image_size: tuple[int, int]
    data_seed: int = 0
    test_only: bool = False
    thumbnail: str | None = None


#: Fewer centres than this are prepared in this process: starting the workers (a forkserver
#: importing fedmammo, ~1.5 s) costs more than it saves (measured, benchmarks/bench_prepare.py:
#: 4 tiny centres 2.1 s alone, 2.8 s in 2 workers; 32 centres 12.8 s, 7.0 s).
MIN_CENTRES_FOR_POOL = 8
#: Memory set aside per centre prepared in parallel: the phantom's images of one patient or
#: one decoded DICOM file at a time, plus the worker's numpy / pandas / pydicom (~0.3 GB).
PREPARE_BYTES_PER_WORKER = 1 << 30


def preparation_workers(jobs: int, requested: int | None = None) -> int:
    """How many processes prepare ``jobs`` centres: one per core (or ``requested``), no more
    than the centres, and no more than half the available memory holds at
    PREPARE_BYTES_PER_WORKER each; 1 prepares them in this process, as for fewer than
    MIN_CENTRES_FOR_POOL centres unless ``requested``."""
    from fedmammo.data.cache_workers import available_memory, cores

    if requested is None and jobs < MIN_CENTRES_FOR_POOL:
        return 1
    workers = cores() if requested is None else max(1, int(requested))
    workers = min(workers, jobs)
    available = available_memory()
    if available is not None:
        workers = min(workers, max(1, int(available // 2 // PREPARE_BYTES_PER_WORKER)))
    return max(1, workers)


def _prepare(job: CentreJob, cache_workers: int | None = None) -> tuple[int, int]:
    """Prepare one centre (and its thumbnail grid); its image and skipped-file counts."""
    data = materialise_centre(
        job.profile,
        job.data_root,
        image_size=job.image_size,
        data_seed=job.data_seed,
        test_only=job.test_only,
        cache_workers=cache_workers,
    )
    if job.thumbnail and job.profile.data.synthetic is not None and len(data.manifest):
        from fedmammo.evaluation.report_charts import write_thumbnail_grid

        shown = np.arange(min(16, len(data.manifest)))
        write_thumbnail_grid(data.cache.images(shown), job.thumbnail)
    return len(data.manifest), data.listed_skipped + len(data.skipped)


def _worker_logging(queue, levels: dict[str, int]) -> None:
    """Pool initializer: send this worker's log records to the parent (spawned or forkserver
    workers would otherwise lose them, the run log with them)."""
    import logging.handlers

    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(queue)]
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)


class _Relay(logging.Handler):
    """Hands a worker's record to this process's logger of the same name (its handlers)."""

    def handle(self, record: logging.LogRecord) -> bool:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
        return True


def materialise_centres(
    jobs: list[CentreJob], *, workers: int | None = None
) -> Iterator[tuple[CentreJob, int, int]]:
    """Prepare every centre of ``jobs``; yield ``(job, images, skipped)`` in their order.

    Centres are independent (each its own folder), so several are prepared at once in worker
    processes (:func:`preparation_workers`; each reads its images in one process) and the
    results are the same as one by one; the workers' log records reach this process's
    handlers (the run log). The first error (a missing data root, unreadable files) is raised
    as the worker raised it, naming its centre; centres finished before it keep their
    folders, and a re-run reuses them.
    """
    n = preparation_workers(len(jobs), workers)
    if n <= 1:
        for job in jobs:
            yield (job, *_prepare(job))
        return
    import logging.handlers
    from concurrent.futures import ProcessPoolExecutor

    from fedmammo.data.cache_workers import pool_context

    context = pool_context()  # before the relay's thread: fork only from one thread
    if context.get_start_method() == "forkserver":  # workers fork from one that imported us
        context.set_forkserver_preload([__name__])
    queue = context.Queue()
    levels = {
        name: logging.getLogger(name or None).getEffectiveLevel() for name in ("", "fedmammo")
    }
    relay = logging.handlers.QueueListener(queue, _Relay())
    relay.start()
    try:
        with ProcessPoolExecutor(
            max_workers=n,
            mp_context=context,
            initializer=_worker_logging,
            initargs=(queue, levels),
        ) as pool:
            # the centres are the parallel work: each reads its images in its worker
            prepared = pool.map(partial(_prepare, cache_workers=1), jobs)
            for job, counts in zip(jobs, prepared, strict=True):
                yield (job, *counts)
    finally:
        relay.stop()
