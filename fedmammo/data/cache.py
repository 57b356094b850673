"""A centre's pre-processed images: one uint16 memory-mapped array plus an index by image_id."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fedmammo.data.cache_workers import SCALE, plan_workers, read_all
from fedmammo.data.manifest import decode_lesions, normalise_manifest, read_manifest, write_manifest
from fedmammo.data.reader_spec import DEFAULT_SIZE, READER_VERSION, Geometry
from fedmammo.errors import DataError
from fedmammo.files import replace_whole

__all__ = ["CACHE_FORMAT", "CachedImageDataset", "ImageCache"]

logger = logging.getLogger(__name__)

#: Bumped when the on-disk layout or the cached boxes change (invalidates caches, like
#: READER_VERSION). 2: lesion boxes cut to the stored breast, lost lesions marked dropped.
CACHE_FORMAT = "2"
_SCALE = SCALE
#: A lesion keeps its box when at least this fraction of the box holds stored breast pixels.
_MIN_VISIBLE = 0.5
_IMAGES, _INDEX, _MANIFEST, _FINGERPRINT = "images.npy", "index.json", "manifest.csv", "fp.json"


def _fingerprint(manifest: pd.DataFrame, size: tuple[int, int]) -> str:
    """Hash what the cached pixels and boxes depend on: files (size, mtime), boxes, settings."""
    digest = hashlib.sha256()
    settings = {"reader": READER_VERSION, "format": CACHE_FORMAT, "size": list(size)}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    lesions = manifest["lesions"] if "lesions" in manifest else [None] * len(manifest)
    rows = sorted(
        (str(i), str(p), "" if pd.isna(les) else str(les))
        for i, p, les in zip(manifest["image_id"], manifest["path"], lesions)
    )
    for image_id, path, les in rows:
        try:
            st = os.stat(path)
            stat: list[int] | None = [st.st_size, st.st_mtime_ns]
        except OSError:
            stat = None
        digest.update(json.dumps([image_id, path, stat, les]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _check_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("image_id", "path") if c not in manifest.columns]
    if missing:
        raise DataError(f"manifest lacks column(s) {missing}; the cache needs image_id and path")
    if manifest.empty:
        raise DataError("manifest is empty: nothing to cache")
    dup = manifest["image_id"][manifest["image_id"].duplicated()]
    if len(dup):
        raise DataError(f"manifest has duplicate image_id values, e.g. {dup.iloc[0]!r}")
    return normalise_manifest(manifest, where="manifest given to ImageCache.build")


def _visible_box(stored: np.ndarray, box: list[float]) -> list[float] | None:
    """Cut a cache-frame box to the stored breast pixels (non-zero) it covers.

    The reader zeroes everything outside the breast mask and the resize pads with zeros, so a
    box can cover no stored pixels at all (a lesion cut off by the crop or the mask). Returns
    None when the box is empty or less than ``_MIN_VISIBLE`` of its pixels are breast.
    """
    x0, y0, x1, y1 = box
    c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    c1, r1 = min(stored.shape[1], int(np.ceil(x1))), min(stored.shape[0], int(np.ceil(y1)))
    if x1 <= x0 or y1 <= y0 or c1 <= c0 or r1 <= r0:
        return None
    breast = stored[r0:r1, c0:c1] > 0
    if breast.mean() < _MIN_VISIBLE:
        return None
    rows, cols = np.flatnonzero(breast.any(axis=1)), np.flatnonzero(breast.any(axis=0))
    return [
        max(x0, float(c0 + cols[0])),
        max(y0, float(r0 + rows[0])),
        min(x1, float(c0 + cols[-1] + 1)),
        min(y1, float(r0 + rows[-1] + 1)),
    ]


def _cached_lesions(lesions: list[dict], geometry: Geometry, stored: np.ndarray) -> int:
    """Map ``lesions`` boxes to the cache frame in place; return how many were dropped.

    A dropped lesion keeps its record with ``box: None`` and the reason in ``dropped``, so that
    its image still counts as holding a lesion (it must not become a healthy image).
    """
    dropped = 0
    for lesion in lesions:
        if "box" not in lesion:
            continue
        box = _visible_box(stored, geometry.map_box(lesion["box"]))
        if box is None:
            lesion["dropped"] = "outside the stored breast (cut by the crop or the breast mask)"
            dropped += 1
        lesion["box"] = box
    return dropped


class ImageCache:
    """Pre-processed images of one centre, read from a cache directory (see build / open)."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        size: tuple[int, int],
        manifest: pd.DataFrame,
        records: list[dict[str, Any]],
        skipped: list[tuple[str, str]],
    ) -> None:
        self.cache_dir = cache_dir
        self.size = size
        self.manifest = manifest
        self.skipped = skipped
        self._records = records
        self._row = {r["image_id"]: i for i, r in enumerate(records)}
        self._array: np.ndarray | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        manifest: pd.DataFrame,
        cache_dir: str | Path,
        *,
        size: tuple[int, int] = DEFAULT_SIZE,
        progress: bool = False,
        workers: int | None = None,
    ) -> ImageCache:
        """Pre-process every image of ``manifest`` into ``cache_dir``, or reuse a matching cache.

        Unreadable images are skipped with a warning and listed in ``skipped``; DataError only
        when none can be read. The returned ``manifest`` holds the given rows that were cached.
        ``workers``: reading processes (None: one per available core), bounded by memory and
        the number of images (see cache_workers.plan_workers); 1 reads in this process.
        """
        manifest = _check_manifest(manifest)
        size = (int(size[0]), int(size[1]))
        cache_dir = Path(cache_dir)
        fingerprint = _fingerprint(manifest, size)
        fp_file = cache_dir / _FINGERPRINT
        cache = None
        if _stored_hash(fp_file) == fingerprint:
            try:
                cache = cls._load(cache_dir)
            except _Damaged as exc:  # e.g. a disk-full cut of an older version's build
                logger.warning("%s; rebuilding the image cache %s", exc, cache_dir)
        if cache is not None:
            stored = cache.manifest
            by_id = manifest.set_index(manifest["image_id"].astype(str), drop=False)
            cache.manifest = by_id.loc[[r["image_id"] for r in cache._records]].reset_index(
                drop=True
            )
            if _split_of(stored) != _split_of(cache.manifest):  # e.g. the centre's role changed
                # rewritten (whole): the images are unchanged, only the rows' splits (the
                # fingerprint does not cover them)
                write_manifest(cache.manifest, cache_dir / _MANIFEST)
            logger.info("%s: cache is up to date (%d images)", cache_dir, len(cache))
            return cache
        cache_dir.mkdir(parents=True, exist_ok=True)
        fp_file.unlink(missing_ok=True)  # an interrupted build must not look valid
        return cls._build(manifest, cache_dir, size, fingerprint, progress, workers)

    @classmethod
    def _build(
        cls,
        manifest: pd.DataFrame,
        cache_dir: Path,
        size: tuple[int, int],
        fingerprint: str,
        progress: bool,
        workers: int | None,
    ) -> ImageCache:
        n = len(manifest)
        tmp = cache_dir / f"{_IMAGES}.partial"
        array = _new_array(tmp, (n, *size))
        paths = [str(p) for p in manifest["path"]]
        ids = [str(i) for i in manifest["image_id"]]
        records: list[dict[str, Any]] = []
        kept: list[int] = []
        skipped: list[tuple[str, str]] = []
        dropped = 0
        n_workers = plan_workers(paths, workers)
        logger.info("%s: reading %d images with %d process(es)", cache_dir, n, n_workers)
        # this module's load_mammogram, looked up at build time (tests replace it)
        loader = sys.modules[__name__].load_mammogram
        results: Iterable[Any] = read_all(paths, size, workers=n_workers, loader=loader)
        if progress:
            from rich.progress import track

            results = track(results, total=n, description=f"caching {cache_dir.name}")
        lesion_column = manifest["lesions"].tolist()
        for i, result in enumerate(results):
            if isinstance(result, str):
                logger.warning("skipping image %s: %s", ids[i], result)
                skipped.append((ids[i], result))
                continue
            stored, geometry = result
            array[len(kept)] = stored
            lesions = decode_lesions(lesion_column[i])
            dropped += _cached_lesions(lesions, geometry, stored)
            records.append({"image_id": ids[i], "geometry": geometry.to_dict(), "lesions": lesions})
            kept.append(i)
        array.flush()
        del array
        if not kept:
            tmp.unlink(missing_ok=True)
            reasons = "; ".join(f"{i}: {r}" for i, r in skipped[:3])
            raise DataError(f"{cache_dir}: none of the {n} images could be read ({reasons} ...)")
        _finalise_array(tmp, cache_dir / _IMAGES, len(kept), size)
        cached = manifest.iloc[kept].reset_index(drop=True)
        # each file whole (a full disk leaves none of it), the fingerprint last: it marks the
        # cache valid
        write_manifest(cached, cache_dir / _MANIFEST)
        index = {"size": list(size), "images": records, "skipped": [list(s) for s in skipped]}
        _write_text(cache_dir / _INDEX, json.dumps(index))
        _write_text(cache_dir / _FINGERPRINT, json.dumps({"hash": fingerprint}))
        if dropped:
            logger.warning(
                "%s: dropped %d lesion boxes lying outside the stored breast (cut by the crop or "
                "the breast mask); their records keep box None",
                cache_dir,
                dropped,
            )
        if skipped:
            logger.warning("%s: cached %d images, skipped %d", cache_dir, len(kept), len(skipped))
        else:
            logger.info("%s: cached %d images", cache_dir, len(kept))
        return cls(cache_dir, size=size, manifest=cached, records=records, skipped=skipped)

    @classmethod
    def open(cls, cache_dir: str | Path) -> ImageCache:
        """Open a cache written by build; DataError naming the file when one of its files is
        missing, cannot be parsed or does not match the others (ImageCache.build rebuilds
        such a cache by itself)."""
        cache_dir = Path(cache_dir)
        needed = [cache_dir / f for f in (_IMAGES, _INDEX, _MANIFEST, _FINGERPRINT)]
        if not all(p.is_file() for p in needed):
            raise DataError(
                f"{cache_dir}: not a complete image cache (needs "
                f"{', '.join(p.name for p in needed)}); build it with ImageCache.build"
            )
        try:
            return cls._load(cache_dir)
        except _Damaged as exc:
            raise DataError(
                f"{exc}: the image cache {cache_dir} is damaged; delete that folder and it is "
                "rebuilt from the images on the next run"
            ) from None

    @classmethod
    def _load(cls, cache_dir: Path) -> ImageCache:
        """The cache in ``cache_dir``, its files checked against each other (_Damaged if not:
        unparsable JSON or CSV, an images.npy shorter than its header says)."""
        index_file, manifest_file = cache_dir / _INDEX, cache_dir / _MANIFEST
        try:
            index = json.loads(index_file.read_text())
            size = (int(index["size"][0]), int(index["size"][1]))
            records = index["images"]
            ids = [str(r["image_id"]) for r in records]
            skipped = [(str(i), str(r)) for i, r in index["skipped"]]
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise _Damaged(index_file, exc) from None
        try:
            manifest = read_manifest(manifest_file)
        except (OSError, ValueError, DataError) as exc:
            raise _Damaged(manifest_file, exc) from None
        if manifest["image_id"].astype(str).tolist() != ids:
            why = f"its {len(manifest)} rows are not the {len(ids)} images of {_INDEX}"
            raise _Damaged(manifest_file, why)
        if problem := _array_problem(cache_dir / _IMAGES, (len(ids), *size)):
            raise _Damaged(cache_dir / _IMAGES, problem)
        return cls(cache_dir, size=size, manifest=manifest, records=records, skipped=skipped)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"ImageCache({str(self.cache_dir)!r}, n={len(self)}, size={self.size})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = None  # re-mapped in the receiving process, never pickled
        return state

    @property
    def array(self) -> np.ndarray:
        """The (N, H, W) uint16 memory map (value / 65535 = intensity in [0, 1])."""
        if self._array is None:
            self._array = np.load(self.cache_dir / _IMAGES, mmap_mode="r")
        return self._array

    def row(self, image_id: str) -> int:
        """Return the array row of ``image_id``."""
        try:
            return self._row[str(image_id)]
        except KeyError:
            reason = dict(self.skipped).get(str(image_id))
            why = f"it was skipped: {reason}" if reason else "it is not in the manifest"
            msg = f"image_id {image_id!r} is not in the cache {self.cache_dir} ({why})"
            raise KeyError(msg) from None

    def rows(self, image_ids: Iterable[str]) -> np.ndarray:
        """Return the array rows of ``image_ids`` (int64)."""
        return np.array([self.row(i) for i in image_ids], dtype=np.int64)

    def get(self, image_id: str) -> np.ndarray:
        """Return one image as float32 (H, W) in [0, 1]."""
        return self.array[self.row(image_id)].astype(np.float32) / np.float32(_SCALE)

    def images(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Return the images at ``rows`` as float32 (n, H, W) in [0, 1]."""
        return self.array[np.asarray(rows, dtype=np.int64)].astype(np.float32) / np.float32(_SCALE)

    def geometry(self, image_id: str) -> Geometry:
        """Return how ``image_id`` was mapped from its DICOM pixels to the cache."""
        return Geometry.from_dict(self._records[self.row(image_id)]["geometry"])

    def boxes(self, image_id: str) -> list[dict[str, Any]]:
        """Return the lesion records of ``image_id`` with boxes in cache pixel coordinates.

        Boxes lie inside the stored breast with positive size; a lesion outside it (cut by the
        crop or the breast mask) has ``box`` None and the reason in ``dropped``.
        """
        return json.loads(json.dumps(self._records[self.row(image_id)]["lesions"]))


class _Damaged(Exception):
    """A cache file that cannot be read or does not match the others (``file: why``)."""

    def __init__(self, path: Path, why: object) -> None:
        super().__init__(f"{path}: {why}")


def _stored_hash(fp_file: Path) -> str | None:
    """The fingerprint ``fp_file`` holds; None when there is none or it cannot be read (an
    interrupted build: the cache is rebuilt)."""
    if not fp_file.is_file():
        return None
    try:
        stored = json.loads(fp_file.read_text())
        if not isinstance(stored, dict) or not isinstance(stored.get("hash"), str):
            raise ValueError(f"not the fingerprint {{'hash': ...}}: {stored!r:.60}")
    except ValueError as exc:  # also text that is not UTF-8
        logger.warning("%s: unreadable (%s); rebuilding the image cache", fp_file, exc)
        return None
    return stored["hash"]


def _array_problem(path: Path, shape: tuple[int, ...]) -> str | None:
    """Why ``path`` is not a whole uint16 .npy array of ``shape`` (None when it is): its header
    is read and the file's length checked against it, the data itself is not read."""
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in readers:
                return f"not a .npy array of a known version ({version})"
            stored, fortran, dtype = readers[version](f)
            needed = f.tell() + int(np.prod(stored)) * dtype.itemsize
            length = os.fstat(f.fileno()).st_size
    except (OSError, ValueError) as exc:
        return f"not a .npy array ({exc})"
    if tuple(stored) != shape or dtype != np.uint16 or fortran:
        return f"holds a {dtype} array of shape {tuple(stored)}, not uint16 of shape {shape}"
    if length != needed:
        return f"{length} bytes where its header asks for {needed} (cut short?)"
    return None


def _write_text(path: Path, text: str) -> None:
    replace_whole(path, lambda tmp: tmp.write_text(text))


def _new_array(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A new uint16 .npy memory map at ``path`` whose disk space is reserved first.

    ``open_memmap`` makes a sparse file: writing its pages through the map on a full file
    system kills the process with SIGBUS (no exception, no message). Reserving the space
    (``posix_fallocate``) turns that into an OSError ENOSPC naming the file, raised here,
    and the partial file is removed.
    """
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=shape)
    try:
        _reserve(path)
    except BaseException:
        del array
        path.unlink(missing_ok=True)
        raise
    return array


def _reserve(path: Path) -> None:
    """Allocate ``path``'s blocks (its current length); OSError naming it when they do not fit.
    Where the platform or file system cannot reserve space, nothing is done."""
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows
        return
    length = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, length)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return
        why, needs = exc.strerror or str(exc), f"{length / 2**20:.1f} MB"
        if length < 2**20:
            needs = f"{length / 2**10:.0f} KB"
        raise OSError(exc.errno, f"{why} (the image cache needs {needs} here)", str(path)) from None
    finally:
        os.close(fd)


def _finalise_array(tmp: Path, final: Path, kept: int, size: tuple[int, int]) -> None:
    """Move the partial array into place, dropping the unused rows of skipped images."""
    src = np.load(tmp, mmap_mode="r")
    if kept == src.shape[0]:
        del src
        os.replace(tmp, final)
        return
    partial = final.with_name(final.name + ".tmp")
    try:
        dst = _new_array(partial, (kept, *size))
    except BaseException:  # no room for the copy: the partial array goes too (disk space)
        del src
        tmp.unlink(missing_ok=True)
        raise
    for start in range(0, kept, 256):
        dst[start : start + 256] = src[start : min(kept, start + 256)]
    dst.flush()
    del dst, src
    os.replace(partial, final)
    tmp.unlink(missing_ok=True)


class CachedImageDataset(torch.utils.data.Dataset):
    """Torch dataset over cache rows: (image 1xHxW float32 in [0, 1], label int64; -1 = none)."""

    def __init__(
        self,
        cache: ImageCache,
        rows: Sequence[int] | np.ndarray,
        labels: np.ndarray | None = None,
        *,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        if self.rows.size and (self.rows.min() < 0 or self.rows.max() >= len(cache)):
            raise DataError(f"rows must lie in [0, {len(cache)}) for {cache!r}")
        if labels is None:
            self.labels = np.full(len(self.rows), -1, dtype=np.int64)
        else:
            try:
                self.labels = np.asarray(labels, dtype=np.int64)
            except (TypeError, ValueError) as exc:
                raise DataError(
                    f"labels must be integers (drop rows with missing labels or fill them with -1):"
                    f" {exc}"
                ) from exc
            if self.labels.shape != self.rows.shape:
                raise DataError(f"got {len(self.labels)} labels for {len(self.rows)} rows")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.cache.array[self.rows[i]].astype(np.float32) / np.float32(_SCALE)
        x = torch.from_numpy(img)[None]
        if self.transform is not None:
            x = self.transform(x)
        return x, torch.tensor(self.labels[i], dtype=torch.int64)


def __getattr__(name: str) -> Any:
    """``load_mammogram``, imported on first use: a built cache opens without the reader (and
    so without pydicom and SciPy), see :mod:`fedmammo.data.reader_spec`."""
    if name == "load_mammogram":
        from fedmammo.data.dicom import load_mammogram

        return load_mammogram
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _split_of(manifest: pd.DataFrame) -> list[str]:
    """Each row's split as text ('' where none): what manifest.csv must show."""
    if "split" not in manifest:
        return []
    return manifest["split"].astype("string").fillna("").tolist()
