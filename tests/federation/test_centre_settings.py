"""The centre owns its data settings: image size and data seed come from what the site
prepared (``<data-dir>/prepared.yaml``, written by deployment ``prepare``) or its node config;
a server request that disagrees is refused with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from flwr.app import Context, RecordDict
from helpers.flower_messages import make_incoming
from helpers.run_helpers import REPO

from fedmammo.federation.deployment import PREPARED_FILE, prepare_site
from fedmammo.federation.messages import INFO, Identify

SIZE, SEED = (32, 24), 3


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("site") / "tiny_a"
    prepare_site(
        REPO / "centres" / "tiny.yaml", data_dir, image_size=SIZE, data_seed=SEED, name="tiny_a"
    )
    return data_dir


def _ask(data_dir: Path, image_size, data_seed, **node):
    from fedmammo.apps import client_app

    node = {"centre": "tiny_a", "data-dir": str(data_dir), "role": "train", **node}
    ctx = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
    content = Identify(image_size=tuple(image_size), data_seed=data_seed).content()
    return client_app(make_incoming(content, Identify.KIND), ctx)


def test_prepare_records_the_sites_data_settings(site):
    saved = yaml.safe_load((site / PREPARED_FILE).read_text())
    assert saved == {"centre": "tiny_a", "image_size": list(SIZE), "data_seed": SEED}


def test_the_centre_answers_at_its_own_settings(site):
    reply = _ask(site, SIZE, SEED)
    assert not reply.has_error(), reply.error.reason
    assert INFO in reply.content


@pytest.mark.parametrize(
    ("size", "seed", "asked"),
    [
        ((64, 48), SEED, "image size 64x48 and data seed 3"),
        (SIZE, 9, "image size 32x24 and data seed 9"),
    ],
    ids=["image-size", "data-seed"],
)
def test_a_server_request_for_other_data_settings_is_refused_in_one_line(site, size, seed, asked):
    reply = _ask(site, size, seed)
    assert reply.has_error()
    reason = reply.error.reason
    assert "DataSettingsRefusal" in reason and "\n" not in reason
    assert f"the server asked for {asked}" in reason
    assert "this centre serves 32x24, data seed 3 (its own settings)" in reason


def test_the_node_config_sets_a_sites_data_settings(site):
    # node config wins over prepared.yaml (a site operator's explicit choice)
    reply = _ask(site, SIZE, 5, **{"data-seed": 5})
    assert not reply.has_error(), reply.error.reason
    reply = _ask(site, SIZE, SEED, **{"image-size": "64x48"})
    assert reply.has_error() and "this centre serves 64x48" in reply.error.reason


def test_a_server_cannot_choose_the_sites_dataset_or_splits(site):
    # Prepare: an identify message carrying data settings the centre owns (its profile's)
    from fedmammo.apps import client_app

    node = {"centre": "tiny_a", "data-dir": str(site), "role": "train"}
    ctx = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
    content = Identify(image_size=SIZE, data_seed=SEED).content()
    content["config"]["split"] = '{"train": 1.0}'
    content["config"]["data-dir"] = "/elsewhere"
    # Execute
    reply = client_app(make_incoming(content, Identify.KIND), ctx)
    # Assert: refused in one line (quoted key names scrubbed by the egress guard); nothing is
    # read from the server's values
    assert reply.has_error()
    assert "MessageError: message '<value>': unknown key(s) ['<value>', '<value>']" in (
        reply.error.reason
    )
    assert "\n" not in reply.error.reason.strip()
