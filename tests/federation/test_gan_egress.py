"""No real pixel leaves a sharing centre: every reply of B and C during a tiny share_gans run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from flower_messages import InProcessGrid
from flwr.app import ArrayRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmammo.config import load_scenario
from fedmammo.evaluation.results import RunRecorder
from fedmammo.federation.egress import EgressError, check_outgoing
from fedmammo.federation.orchestrator import Orchestrator
from fedmammo.federation.runspec import ENV_VAR, RunSpec
from fedmammo.federation.strategies.share_gans import run_share_gans
from fedmammo.models.gans import build_generator

ROOT = Path(__file__).resolve().parents[2]
ARMS = ["A", "A+real_B", "A+synth_B_dcgan", "A+synth_C_dcgan"]
PATCH, IMAGE = (16, 16), (64, 48)


def InterceptingGrid(names):  # noqa: N802
    return InProcessGrid(names, strict=True)


def _scenario(tmp: Path) -> Path:
    small = {"data.synthetic.image_height": 64}
    data = {
        "name": "gan_egress",
        "centres": [
            {
                "profile": str(ROOT / "centres" / "inbreast_gan.yaml"),
                "name": "A",
                "role": "receiver",
                "overrides": {
                    **small,
                    "data.synthetic.segments.0.patients": 20,
                    "split": {"train": 0.5, "val": 0.25, "test": 0.25},
                },
            },
            {
                "profile": str(ROOT / "centres" / "bcdr.yaml"),
                "name": "B",
                "role": "sharer",
                "overrides": {
                    **small,
                    "sharing.real_patches_in_simulation": True,
                    "data.synthetic.segments.0.patients": 8,
                    "data.synthetic.segments.1.patients": 8,
                },
            },
            {
                "profile": str(ROOT / "centres" / "optimam.yaml"),
                "name": "C",
                "role": "sharer",
                "overrides": {**small, "data.synthetic.segments.0.patients": 12},
            },
        ],
        "strategy": str(ROOT / "strategies" / "share_gans.yaml"),
        "strategy_overrides": {
            "params.arms": ARMS,
            "params.subsets": ["all"],
            "params.fractions": [1.0],
            "params.n_synthetic": 8,
            "params.patches.size": 16,
            "params.frechet_samples": 16,
            "params.gans.dcgan": {
                "epochs": 2,
                "width": 4,
                "batch_size": 4,
                "snapshot_every": 1,
                "warmup": 1,
            },
            "params.classifier.epochs": 2,
            "params.classifier.model.options": {"width": 4, "hidden": 8},
        },
        "seeds": [0],
        "image_size": list(IMAGE),
        "data_dir": str(tmp / "data"),
    }
    path = tmp / "gan_egress.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gan_egress")
    scenario_file = _scenario(tmp)
    scenario = load_scenario(scenario_file)
    names = scenario.centre_names()
    spec = RunSpec(scenario_file=str(scenario_file), run_dir=str(tmp / "run"), node_order=names)
    Path(spec.run_dir).mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_VAR, str(spec.save()))
        for attr in ("_run_id", "_node_id", "_task_id"):  # what a server-side Message() reads
            mp.setattr(TaskIdentity, attr, 1)
        grid = InterceptingGrid(names)
        orc = Orchestrator(
            grid=grid, spec=spec, scenario=scenario, recorder=RunRecorder(spec.run_dir)
        )
        orc.identify(len(names))
        run_share_gans(orc)
        yield orc, grid


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
