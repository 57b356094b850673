"""Builders of the bad-input suite: the data tests' DICOM and dataset-tree writers, reused."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest


def _load(name: str, path: Path) -> ModuleType:
    """Import a test helper module by file (the data tests' conftest files are not packages)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_TESTS = Path(__file__).resolve().parents[1]
#: write_dicom(path, pixels, **tags), breast_pixels(...), set_element(path, keyword, vr, value)
dicoms = _load("_bad_inputs_dicoms", _TESTS / "data" / "conftest.py")
#: build_cbis / build_inbreast / ... (published layouts), edit_csv, write_garbage
trees = _load("_bad_inputs_trees", _TESTS / "data" / "adapters" / "conftest.py")

#: The suite's modules import these builders as ``bad_inputs_builders`` (several conftest
#: modules are loaded under the one name "conftest" when test folders run together).
sys.modules.setdefault("bad_inputs_builders", sys.modules[__name__])

#: Small images keep the whole folder fast (64 rows x 48 columns).
SHAPE = (64, 48)


def good_dicom(path: Path, seed: int = 0, **tags: object) -> Path:
    """A readable 64x48 breast-like MG DICOM (a left breast with a burned-in label)."""
    return dicoms.write_dicom(path, dicoms.breast_pixels(*SHAPE, seed=seed), **tags)


def cbis_folder_ids(expected: dict[str, dict], folder: str) -> set[str]:
    """image_ids (SOPInstanceUIDs) of the CBIS-DDSM tree's image in ``folder``."""
    return {k for k, v in expected.items() if f"/{folder}/" in v["path"].replace("\\", "/")}


def manifest_of(paths: dict[str, Path]) -> pd.DataFrame:
    """A minimal manifest (image_id, patient_id, path) for ImageCache.build."""
    return pd.DataFrame(
        [{"image_id": i, "patient_id": f"p-{i}", "path": str(p)} for i, p in paths.items()]
    )


@pytest.fixture(scope="module")
def good_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two readable DICOMs that every DICOM fault row builds a cache beside (written once)."""
    root = tmp_path_factory.mktemp("good")
    return {f"good{i}": good_dicom(root / f"good{i}.dcm", seed=i) for i in range(2)}


@pytest.fixture(scope="module")
def good_pixels(good_pair: dict[str, Path]) -> dict[str, np.ndarray]:
    """What the reader makes of the good pair alone (the survivors' reference)."""
    from fedmammo.data.dicom import load_mammogram

    return {i: load_mammogram(p, (32, 24)) for i, p in good_pair.items()}
