"""No real pixel leaves a sharing centre: every reply of B and C during a tiny share_gans run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from helpers.gan_runs import run_in_process, tiny_gan_scenario

from fedmammo.federation.egress import EgressError, check_outgoing
from fedmammo.federation.runspec import ENV_VAR
from fedmammo.models.gans import build_generator

ARMS = ["A", "A+real_B", "A+synth_B_dcgan", "A+synth_C_dcgan"]
PATCH, IMAGE = (16, 16), (64, 48)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gan_egress")
    scenario_file = tiny_gan_scenario(tmp, scenario={"seeds": [0]}, arms=ARMS, fractions=[1.0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_VAR, "")
        for attr in ("_run_id", "_node_id", "_task_id"):  # what a server-side Message() reads
            mp.setattr(TaskIdentity, attr, 1)
        yield run_in_process(scenario_file, tmp / "run", strict=True)


def test_sharing_centres_reply_only_generator_weights(run):
    # Prepare
    orc, grid = run
    reference = {
        k: tuple(v.shape)
        for k, v in build_generator(patch_size=16, latent_dim=100, width=4).state_dict().items()
    }
    # Execute
    shared = [(c, kind, content) for c, kind, content in grid.replies if c in ("B", "C")]
    arrays = [
        (c, kind, rec)
        for c, kind, content in shared
        for rec in content.values()
        if isinstance(rec, ArrayRecord)
    ]
    # Assert
    assert {kind for _, kind, _ in shared} == {"query.identify", "train.generator"}
    assert {c for c, _, _ in arrays} == {"B", "C"}
    for _, kind, record in arrays:
        assert kind == "train.generator"
        shapes = {k: tuple(a.shape) for k, a in record.items()}
        assert shapes == reference
        assert not any(s[-2:] in (PATCH, IMAGE) for s in shapes.values())


def test_receiver_replies_carry_no_arrays_and_only_the_real_arm_moves_pixels(run):
    # Prepare
    orc, grid = run
    frame = orc.recorder.frame()
    # Execute
    receiver = [content for c, _, content in grid.replies if c == "A"]
    moved = frame[(frame["metric"] == "real_pixels_moved") & (frame["value"] == 1)]
    # Assert
    assert receiver and not any(isinstance(r, ArrayRecord) for c in receiver for r in c.values())
    assert list(moved["arm"]) == ["A+real_B@all-100"]
    assert any(n.startswith("WARNING: arm A+real_B MOVES REAL PIXELS") for n in orc.recorder.notes)
    tables = (Path(orc.spec.run_dir) / "share_gans_tables.md").read_text()
    assert "| A+real_B | " in tables and "YES (simulation only)" in tables


def test_guard_refuses_a_patch_smuggled_into_a_generator_reply(run):
    # Prepare: a genuine reply of B plus one real-patch-shaped array
    orc, grid = run
    content = next(c for name, kind, c in grid.replies if kind == "train.generator")
    state = build_generator(patch_size=16, latent_dim=100, width=4).state_dict()
    leaked = RecordDict(dict(content.items()))
    leaked["patch"] = ArrayRecord({"net.0.weight": torch.zeros(1, 1, 16, 16)})
    # Execute / Assert
    check_outgoing(content, state)  # the genuine reply passes
    with pytest.raises(EgressError, match="net.0.weight"):
        check_outgoing(leaked, state)
