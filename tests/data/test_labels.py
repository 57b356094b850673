"""Tests of fedmammo.data.labels: manifest targets, the ACR rule, fine-tuning targets, drops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedmammo.data.labels import acr_to_malignancy, drop_labels, finetune_targets, manifest_targets
from fedmammo.data.manifest import normalise_manifest
from fedmammo.errors import ConfigError, DataError


def _manifest() -> pd.DataFrame:
    return normalise_manifest(
        pd.DataFrame(
            {
                "image_id": ["a", "b", "c", "d", "e"],
                "malignant": [1, 0, None, None, 0],
                "acr": [6, 1, 3, 4, None],
                "density": [1, 4, None, 2, 3],
                "view": ["CC", "MLO", "ML", "XCCL", None],
                "u_malignancy": [0.0, 0.2, None, 0.7, None],
                "u_density": [None, 0.5, 0.3, 0.0, 1.0],
            }
        )
    )


def test_manifest_targets_map_classes_and_missing_values():
    # Prepare
    df = _manifest()
    # Execute
    targets, unc = manifest_targets(df)
    # Assert
    assert targets["malignancy"].tolist() == [1, 0, -1, -1, 0]
    assert targets["acr"].tolist() == [5, 0, 2, 3, -1]
    assert targets["density"].tolist() == [0, 3, -1, 1, 2]
    assert targets["view"].tolist() == [0, 1, 0, -1, -1]  # ML merged into CC (seed 2.3)
    assert all(v.dtype == np.int64 for v in targets.values())
    assert unc["malignancy"].tolist() == pytest.approx([0.0, 0.2, 0.0, 0.0, 0.0])
    assert unc["density"].tolist() == pytest.approx([0.0, 0.5, 0.0, 0.0, 1.0])
    assert unc["acr"].dtype == np.float32 and not unc["acr"].any()


def test_manifest_targets_reject_out_of_range_values_naming_column_and_image():
    # Prepare
    df = _manifest().assign(u_view=[0.0, 0.0, 1.5, 0.0, 0.0])
    bad_acr = pd.DataFrame({"image_id": ["x"], "acr": [7]})
    # Execute / Assert
    with pytest.raises(DataError, match="u_view.*image_id c"):
        manifest_targets(df)
    with pytest.raises(DataError, match="'acr'.*image_id x"):
        manifest_targets(bad_acr, tasks=("acr",))
    with pytest.raises(DataError, match="no column 'density'"):
        manifest_targets(bad_acr, tasks=("density",))
    with pytest.raises(ConfigError, match="unknown label task"):
        manifest_targets(df, tasks=("birads",))


def test_acr_to_malignancy_rule():
    # Prepare
    acr = [1, 2, 3, 4, 5, 6, None, pd.NA]
    # Execute
    target, unc = acr_to_malignancy(acr, u1=0.25)
    target_seed, _ = acr_to_malignancy(acr, u1=0.25, acr6_malignant=False)
    # Assert
    assert target.tolist() == [0, 0, -1, 1, 1, 1, -1, -1]
    assert target_seed.tolist() == [0, 0, -1, 1, 1, -1, -1, -1]
    # synthetic labels (ACR 1-2, 4-5) get u1; ACR 6 is confirmed malignant (paper 2.3): u = 0
    assert unc.tolist() == pytest.approx([0.25, 0.25, 0, 0.25, 0.25, 0, 0, 0])
    with pytest.raises(ConfigError, match="u1"):
        acr_to_malignancy(acr, u1=1.5)


def test_finetune_targets_derive_malignancy_and_set_other_uncertainty():
    # Prepare
    df = _manifest()
    # Execute
    kept_t, kept_u = finetune_targets(df, u1=0.75)
    all_t, all_u = finetune_targets(df, u1=0.75, keep_confirmed=False)
    # Assert: rows a, b, e have confirmed labels; c (ACR 3) ignored; d (ACR 4) -> 1 with u1
    assert kept_t["malignancy"].tolist() == [1, 0, -1, 1, 0]
    assert kept_u["malignancy"].tolist() == pytest.approx([0.0, 0.2, 0.0, 0.75, 0.0])
    assert all_t["malignancy"].tolist() == [1, 0, -1, 1, -1]
    assert all_u["malignancy"].tolist() == pytest.approx([0.0, 0.75, 0.0, 0.75, 0.0])  # a: ACR 6
    assert kept_u["density"].tolist() == pytest.approx([0.5, 0.5, 0.0, 0.5, 0.5])
    assert kept_u["view"].tolist() == pytest.approx([0.5, 0.5, 0.5, 0.0, 0.0])


def test_drop_labels_fraction_nesting_and_independence():
    # Prepare
    n = 400
    targets = {
        "malignancy": np.r_[np.zeros(n // 2), np.full(n // 2, -1)].astype(np.int64),
        "view": np.ones(n, dtype=np.int64),
    }
    # Execute
    d25 = drop_labels(targets, 0.25, tasks=["malignancy"], seed=3)
    d50 = drop_labels(targets, 0.5, tasks=["malignancy"], seed=3)
    all50 = drop_labels(targets, 0.5, tasks=["malignancy", "view"], seed=3)
    # Assert
    assert (targets["malignancy"] == -1).sum() == n // 2  # input untouched
    assert (d25["malignancy"] >= 0).sum() == 150 and (d50["malignancy"] >= 0).sum() == 100
    assert np.array_equal(d25["view"], targets["view"])
    assert set(np.flatnonzero(d25["malignancy"] < 0)) <= set(np.flatnonzero(d50["malignancy"] < 0))
    assert np.array_equal(all50["malignancy"], d50["malignancy"])
    assert (all50["view"] >= 0).sum() == 200
    with pytest.raises(ConfigError, match="fraction"):
        drop_labels(targets, 1.5, tasks=["view"], seed=0)
    with pytest.raises(ConfigError, match="density"):
        drop_labels(targets, 0.5, tasks=["density"], seed=0)
