"""The threat model's stated limit, demonstrated: a hostile server that chooses the model, its
weights and a batch of one reads a training image out of a plain model update (the analytic
inversion of a fully connected layer), and the centre's own DP budget is what stops it.

The message is an ordinary ``train.classifier`` through the real ClientApp (consent, DP guard,
egress guard) at a deployed site; the centre's handler is honest. docs/threat_model.md,
"What the egress guard cannot see".
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import ConfigRecord, RecordDict
from helpers.centre_nodes import node_context, prepared_centre, use_privacy
from helpers.flower_messages import make_incoming

from fedmammo.federation.codec import arrays_to_state, put_json, state_to_arrays
from fedmammo.models import build_model

SIZE = (32, 24)
PATCH = 256  # patch_cnn's first dense layer sees a (PATCH / 16)^2 map: a 16x16 image
TRAP = {"name": "patch_cnn", "options": {"patch_size": PATCH, "width": 1, "hidden": 4}}
TRAP["options"].update(dropout=0.0, norm="none")
ONE_IMAGE_STEP = {"epochs": 1, "batch_size": 1, "steps_per_epoch": 1, "optimizer": "sgd"}
ONE_IMAGE_STEP.update(momentum=0.0, lr=1.0, sampler="random", augment=False)


def _trap() -> torch.nn.Module:
    """Convolutions that pass the pixels through on channel 0; a random first dense layer."""
    torch.manual_seed(0)
    model = build_model(TRAP["name"], **TRAP["options"])
    with torch.no_grad():
        for conv in (m for m in model.features if isinstance(m, torch.nn.Conv2d)):
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
        torch.nn.init.normal_(model.fc1.weight, std=0.01)
    return model


def _attack(data_dir, centre: str, **dp_keys) -> tuple[np.ndarray, dict]:
    """Send the trap; return channel 0 of the first dense layer's input, rebuilt from the
    reply as (delta weight row) / (delta bias), and the reply's content."""
    from fedmammo.apps import client_app

    model = _trap()
    sent = {k: v.clone() for k, v in model.state_dict().items()}
    config = ConfigRecord({"image-size": list(SIZE), "data-seed": 0, "arm": "federated"})
    config.update({"seed": 0, "batchnorm": "average", **dp_keys})
    put_json(config, "model", TRAP)
    put_json(config, "train", ONE_IMAGE_STEP)
    content = RecordDict({"config": config, "arrays": state_to_arrays(model.state_dict())})
    reply = client_app(make_incoming(content, "train.classifier"), node_context(centre, data_dir))
    assert not reply.has_error(), reply.error.reason
    got = arrays_to_state(reply.content["arrays"], like=sent)
    d_weight = (got["fc1.weight"] - sent["fc1.weight"]).double()
    d_bias = (got["fc1.bias"] - sent["fc1.bias"]).double()
    j = int(d_bias.abs().argmax())
    side = PATCH // 16
    return (d_weight[j] / d_bias[j]).reshape(-1, side, side)[0].numpy(), reply.content


def _seen_by_the_trap(data) -> list[np.ndarray]:
    """Each training image as channel 0 reaches the dense layer (the ground truth)."""
    ds = data.dataset(data.rows("train"))
    out = []
    for i in range(len(ds)):
        x = F.interpolate(ds[i][0][None].float(), size=(PATCH, PATCH), mode="area")
        out.append(F.max_pool2d(x.clamp(min=0), 16)[0, 0].numpy())
    return out


def _best_match(recovered: np.ndarray, images: list[np.ndarray]) -> tuple[float, float]:
    """(largest correlation, smallest max abs error) of ``recovered`` with any image."""
    corr = max(np.corrcoef(recovered.ravel(), im.ravel())[0, 1] for im in images)
    return float(corr), float(min(np.abs(recovered - im).max() for im in images))


@pytest.mark.usefixtures("one_torch_thread")
def test_a_plain_update_gives_a_hostile_server_a_training_image_and_dp_does_not(tmp_path):
    # Prepare: a deployed centre with default consent and no DP
    data, data_dir = prepared_centre(tmp_path, "site", SIZE)
    images = _seen_by_the_trap(data)

    # Execute: the trap against the centre as it is
    recovered, _ = _attack(data_dir, "site")
    # Assert: one of its training images, to float precision (the limit the docs state)
    corr, err = _best_match(recovered, images)
    assert corr > 0.9999 and err < 1e-5, (corr, err)

    # Prepare: the same centre with a DP budget in its own profile
    use_privacy(data_dir, noise_multiplier=1.0)
    # Execute: the same trap (the server may name any ledger; the centre adds the noise)
    dp = {"privacy-ledger": "federated|0", "dp-planned-rounds": 1, "server-round": 1}
    recovered, content = _attack(data_dir, "site", **dp)
    # Assert: the reply was trained with DP, and what the server rebuilds is none of the images
    assert "privacy" in content
    corr, err = _best_match(recovered, images)
    assert corr < 0.5 and err > 0.1, (corr, err)
