"""A federated pre-training round at one centre is local pre-training: same seed, same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers.flower_messages import run_strategy_in_process

from fedmammo.config import load_scenario
from fedmammo.data.prepare import materialise_centre
from fedmammo.federation.codec import arrays_to_state
from fedmammo.federation.rounds import initial_arrays, train_rounds
from fedmammo.federation.runspec import RunSpec
from fedmammo.methods.contrastive_dg.messages import EvaluateEncoder, TrainEncoder
from fedmammo.methods.contrastive_dg.params import CycleGanParams, PretrainParams
from fedmammo.methods.contrastive_dg.styles import StyleStore, train_rows
from fedmammo.models import build_model
from fedmammo.seeds import derive_seed
from fedmammo.training.contrastive import pretrain_contrastive
from fedmammo.training.contrastive_styles import StyleBank

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[3]
SPEC = {"name": "contrastive_resnet_slim", "options": {"width": 4, "projection_dim": 8}}
PRETRAIN = PretrainParams(batch_size=4, steps_per_epoch=2)
SEED = 3


def _scenario(tmp: Path):
    path = tmp / "one_centre.yaml"
    data = {
        "name": "dg_one",
        "centres": [
            {
                "profile": str(ROOT / "centres" / "dg_vendor.yaml"),
                "name": "A",
                "overrides": {
                    "data.synthetic.image_height": 64,
                    "data.synthetic.segments.0.patients": 4,
                },
            }
        ],
        "strategy": str(ROOT / "strategies" / "contrastive_dg.yaml"),
        "strategy_overrides": {"params.rounds": 1},
        "image_size": [64, 48],
        "data_dir": str(tmp / "data"),
    }
    path.write_text(yaml.safe_dump(data))
    return path, load_scenario(path)


def _bank(data, store: StyleStore, key: str) -> np.ndarray:
    """A two-style bank: the images and their negatives (the store keeps float16)."""
    frame, images = train_rows(data)
    bank = StyleBank(images=np.stack([images, 1.0 - images], axis=1), styles=("A", "X"))
    store.save(key, bank, list(frame["image_id"].astype(str)), {}, CycleGanParams())
    return store.bank(key, list(frame["image_id"].astype(str))).images


@pytest.mark.parametrize("scheme", ["simclr", "msvcl"])
def test_one_round_at_one_centre_equals_pretraining_there_directly(tmp_path, scheme):
    # Prepare: one centre; its style bank in the store the messages name
    path, scenario = _scenario(tmp_path)
    data = materialise_centre(
        scenario.resolved_profiles["A"], scenario.data_dir, image_size=(64, 48), data_seed=0
    )
    store = tmp_path / "store"
    styles = _bank(data, StyleStore(store, "A"), "k")
    init = initial_arrays(SPEC, SEED)
    out = {}

    def runner(orc):
        out["final"] = train_rounds(
            orc,
            arm=scheme,
            seed=SEED,
            centres=["A"],
            arrays=init,
            weighting="num_examples",
            message=TrainEncoder,
            evaluate=EvaluateEncoder,
            model=SPEC,
            fields={
                "scheme": scheme,
                "pretrain": PRETRAIN.model_dump(),
                "styles": "k",
                "store_dir": str(store),
            },
            evaluate_fields={"scheme": scheme, "pretrain": PRETRAIN.model_dump()},
        )

    spec = RunSpec(scenario_file=str(path), run_dir=str(tmp_path / "run"))
    # Execute: the federated round (through the real ClientApp) ...
    run_strategy_in_process(spec, scenario, runner, strict=True)
    # ... and the same pre-training called directly with the round's seed
    encoder = build_model(SPEC["name"], **SPEC["options"])
    encoder.load_state_dict(arrays_to_state(init, like=encoder.state_dict()))
    frame, images = train_rows(data)
    pretrain_contrastive(
        encoder,
        styles if scheme == "msvcl" else images[:, None],
        frame,
        scheme=scheme,
        tau=PRETRAIN.tau,
        batch_size=PRETRAIN.batch_size,
        steps_per_epoch=PRETRAIN.steps_per_epoch,
        lr=PRETRAIN.lr,
        weight_decay=PRETRAIN.weight_decay,
        seed=derive_seed(SEED, "A", 1),
    )
    # Assert: identical weights, buffers included
    federated = arrays_to_state(out["final"], like=encoder.state_dict())
    direct = encoder.state_dict()
    assert federated.keys() == direct.keys()
    start = arrays_to_state(init, like=direct)
    changed = [k for k in direct if not torch.equal(direct[k], start[k])]
    assert changed, "pre-training changed nothing"
    for key, value in direct.items():
        assert torch.equal(federated[key], value), key
