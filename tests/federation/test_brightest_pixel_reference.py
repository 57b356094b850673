"""Each centre reports, when it connects, the malignancy AUROC of its test images scored by
their brightest pixel (no model): the training-free reference results.md and the report put
beside the arms' AUROCs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from helpers.flower_messages import make_incoming
from helpers.run_helpers import REPO
from sklearn.metrics import roc_auc_score

from fedmammo.evaluation.report import (
    REFERENCE_NOTE,
    REFERENCE_TITLE,
    reference_caveat,
    reference_table,
)
from fedmammo.federation.deployment import prepare_site
from fedmammo.federation.identify import brightest_pixel_reference
from fedmammo.federation.messages import REFERENCE, Identify

SIZE, SEED = (32, 24), 0


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("ref") / "tiny_t"
    prepare_site(
        REPO / "centres" / "tiny.yaml", data_dir, image_size=SIZE, data_seed=SEED, role="test"
    )
    return data_dir


def _centre(data_dir: Path):
    from fedmammo.config import load_profile
    from fedmammo.data.prepare import materialise_centre

    profile = load_profile(data_dir / "centre.yaml")
    return materialise_centre(
        profile, data_dir.parent, image_size=SIZE, data_seed=SEED, test_only=True, data_dir=data_dir
    )


def test_the_reference_is_the_auroc_of_each_test_images_brightest_pixel(site):
    data = _centre(site)
    rows = data.rows("test")
    brightest = [data.cache.images([r])[0].max() for r in rows]  # one image at a time, by hand
    expected = roc_auc_score(data.labels(rows), brightest)

    ref = brightest_pixel_reference(data)

    assert ref["brightest_pixel_auc"] == pytest.approx(expected, abs=1e-12)
    assert 0.0 < expected < 1.0
    # tiny has 4 cancer patients in its test split: too few for a CI (value alone)
    assert math.isnan(ref["ci_low"]) and math.isnan(ref["ci_high"])


def test_a_centre_without_test_images_has_no_reference(site):
    data = _centre(site)
    data.manifest["split"] = "train"
    assert all(math.isnan(v) for v in brightest_pixel_reference(data).values())


def test_identify_replies_with_the_reference(site):
    from fedmammo.apps import client_app

    node = {"centre": "tiny", "data-dir": str(site), "role": "test"}
    ctx = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
    content = Identify(image_size=SIZE, data_seed=SEED).content()
    reply = client_app(make_incoming(content, Identify.KIND), ctx)
    assert not reply.has_error(), reply.error.reason
    sent = dict(reply.content[REFERENCE])
    assert sent["brightest_pixel_auc"] == pytest.approx(
        brightest_pixel_reference(_centre(site))["brightest_pixel_auc"]
    )


def test_results_md_gets_one_reference_row_in_the_centres_order():
    meta = {
        "centre_order": ["s4", "s1"],
        "centres": {
            "s1": {"brightest_pixel": {"brightest_pixel_auc": 0.9, "ci_low": 0.8, "ci_high": 1.0}},
            "s2": {"brightest_pixel": {"brightest_pixel_auc": float("nan")}},
            "s3": {"brightest_pixel": None},
            "s4": {"brightest_pixel": {"brightest_pixel_auc": 0.958, "ci_low": np.nan}},
        },
    }
    table = reference_table(meta)
    assert table.to_dict("records") == [{"s4": "0.958", "s1": "0.900 [0.800, 1.000]"}]
    assert reference_table({"centres": {"s3": {}}}).empty
    assert REFERENCE_TITLE.startswith("## Reference: the brightest pixel")


def test_the_note_quotes_readme_not_this_run():
    # no fixed claim about the run at hand: the figures are README's, named as such
    assert "it is 0.96-1.00" not in REFERENCE_NOTE
    section = 'README, "What the phantom\'s malignancy task measures", measured 0.96-0.97'
    assert section in REFERENCE_NOTE and "full settings (128x96 images" in REFERENCE_NOTE
    assert "This run's own values are the row below." in REFERENCE_NOTE
    readme = (REPO / "README.md").read_text()
    text = readme[readme.index("### What the phantom's malignancy task measures") :]
    text = text[: text.index("\n### ", 5)]
    assert "0.958 [0.918, 0.989]" in text and "0.967 at s3" in text  # 0.96-0.97


def test_a_patch_level_methods_row_says_the_reference_is_not_comparable():
    ref = {"brightest_pixel_auc": 0.607, "ci_low": 0.552, "ci_high": 0.666}
    centres = {"A": {"brightest_pixel": ref}}
    patches = reference_table({"kind": "share_gans", "centre_order": ["A"], "centres": centres})
    images = reference_table({"kind": "fedavg", "centre_order": ["A"], "centres": centres})
    caveat = "image-level: not comparable with this run's lesion-patch AUROCs"
    assert list(patches.index) == [f"brightest pixel ({caveat})"]
    assert patches.loc[patches.index[0], "A"] == "0.607 [0.552, 0.666]"
    assert list(images.index) == ["brightest pixel"]
    assert reference_caveat("share_gans") == caveat and reference_caveat(None) == ""


def test_a_centre_that_shares_no_metrics_sends_no_reference(tmp_path):
    from fedmammo.apps import client_app
    from fedmammo.config import load_profile

    profile = load_profile(REPO / "centres" / "tiny.yaml", {"sharing.metrics": False})
    data_dir = tmp_path / "quiet"
    prepare_site(profile, data_dir, image_size=SIZE, data_seed=SEED, role="test")
    node = {"centre": "tiny", "data-dir": str(data_dir), "role": "test"}
    ctx = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
    content = Identify(image_size=SIZE, data_seed=SEED).content()
    reply = client_app(make_incoming(content, Identify.KIND), ctx)
    assert not reply.has_error(), reply.error.reason
    assert REFERENCE not in reply.content and "counts" in reply.content
