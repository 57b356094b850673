"""The centre owns its data settings: image size and data seed come from what the site
prepared (``<data-dir>/prepared.yaml``, written by deployment ``prepare``) or its node config;
a server request that disagrees is refused with one clear line."""

from __future__ import annotations

import time
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
    assert saved == {
        "centre": "tiny_a",
        "role": "train",
        "image_size": list(SIZE),
        "data_seed": SEED,
    }


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
    # Assert: refused in one line that names the message and the refused keys (the server's
    # own words, so the egress guard keeps them); nothing is read from the server's values
    assert reply.has_error()
    assert (
        "MessageError: message 'query.identify': unknown key(s) ['data-dir', 'split']; "
        "its keys are ['data-seed', 'image-size']"
    ) in reply.error.reason
    assert "/elsewhere" not in reply.error.reason
    assert "\n" not in reply.error.reason.strip()


def test_a_run_asking_for_other_settings_stops_waiting_and_names_the_fix(site, monkeypatch):
    # Prepare: the only node is tiny_a, which answers the run's identify (64x48; it prepared
    # 32x24) with its real refusal; the run would otherwise wait 120 s for it
    from types import SimpleNamespace

    from fedmammo.federation import server_app
    from fedmammo.federation.connect import ConnectError, wait_for_centres

    class Orc:
        grid = SimpleNamespace(get_node_ids=lambda: [7])
        nodes, roles, counts = {}, {}, {}
        params = SimpleNamespace(min_centres=None)

        def timeout_for(self, kind):
            return 30.0

        def identify_nodes(self, ids, *, timeout):
            return {n: _ask(site, (64, 48), SEED).error.reason for n in ids}

    # Execute / Assert: the wait ends once the missing centre has refused, not at the timeout
    t0 = time.monotonic()
    conn = wait_for_centres(Orc(), ["tiny_a"], timeout=120, simulated=False, poll=0.1)
    assert time.monotonic() - t0 < 30
    assert conn.missing == conn.refusing == ["tiny_a"]
    # and the run stops with the fix for settings, not "start their SuperNodes"
    recorded = []
    orc = Orc()
    orc.spec = None
    orc.scenario = SimpleNamespace(recipe=SimpleNamespace(connect_timeout=120))
    orc.recorder = SimpleNamespace(
        meta={}, failure=lambda **kw: recorded.append(kw), note=lambda line: recorded.append(line)
    )
    monkeypatch.setattr(server_app, "expected_nodes", lambda *a, **k: ["tiny_a"])
    monkeypatch.setattr(server_app, "wait_for_centres", lambda *a, **k: conn)
    with pytest.raises(ConnectError) as error:
        server_app._connect(orc, simulated=False, prepare=False)
    message = str(error.value)
    assert "this centre serves 32x24, data seed 3" in message
    assert "fix: run a scenario with the image size and data seed tiny_a prepared" in message
    assert "start their SuperNodes" not in message
    assert message.startswith("every missing centre refused the run's data settings: tiny_a")
    assert "connect_timeout" not in message  # it did not wait for it
    assert recorded[0]["centre"] == "tiny_a" and recorded[0]["phase"] == "connect"


def test_a_site_running_another_profile_than_the_scenarios_is_named(site):
    # Prepare: the site prepared centres/tiny.yaml as is; the coordinator's scenario resolves
    # the same profile, once as is, once with an override a site does not take from a server
    from types import SimpleNamespace

    from fedmammo.config import load_profile
    from fedmammo.federation.connect import other_profiles
    from fedmammo.federation.messages import CentreInfo

    info = CentreInfo.from_config(_ask(site, SIZE, SEED).content[INFO])
    same = load_profile(REPO / "centres" / "tiny.yaml", {"name": "tiny_a"})
    moved = load_profile(
        REPO / "centres" / "tiny.yaml",
        {"name": "tiny_a", "compute.num_cpus": 4, "description": "elsewhere"},
    )
    overridden = load_profile(
        REPO / "centres" / "tiny.yaml", {"name": "tiny_a", "sharing.models": False}
    )

    def lines(planned):
        orc = SimpleNamespace(
            profiles={"tiny_a": info.profile},
            scenario=SimpleNamespace(name="s", resolved_profiles={"tiny_a": planned}),
        )
        return other_profiles(orc, ["tiny_a"])

    # Execute / Assert: the identify reply carries the digest of the site's own profile; where
    # the data lives, the machine and the description do not count; an override does
    assert info.profile == same.digest() == moved.digest()
    assert lines(same) == lines(moved) == []
    (line,) = lines(overridden)
    assert line.startswith("centre tiny_a runs its own profile, not the one scenario 's'")
    assert "fix: prepare the site with the scenario's profile and overrides" in line


def test_a_site_running_a_test_centre_as_a_training_centre_is_refused():
    # Prepare: fedavg_quick tests on s4 alone; a site started without --role runs as train
    from fedmammo.federation.connect import role_problem
    from fedmammo.methods import load_scenario

    scenario = load_scenario(REPO / "scenarios" / "fedavg_quick.yaml")
    # Execute / Assert: test-ness must match (it decides the split); the scenario's other
    # roles and centres it does not name are not this check's business
    assert role_problem(scenario, "s4", "test") is None
    assert role_problem(scenario, "s1", "train") is None
    assert role_problem(scenario, "s1", "receiver") is None
    assert role_problem(scenario, "elsewhere", "test") is None
    wrong = role_problem(scenario, "s4", "train")
    assert wrong.startswith(
        "centre s4's site runs it as role 'train' (its node config), but scenario "
        "'fedavg_quick' gives it role 'test' (every image in the test split)"
    )
    assert wrong.endswith("restart its SuperNode with `node-config ... --role test`")
    assert "its images split train/val/test" in role_problem(scenario, "s1", "test")
