"""contrastive_dg's recipe parameters, metric names and typed messages."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord
from pydantic import ValidationError

from fedmammo.federation.messages import MessageError
from fedmammo.methods.contrastive_dg.messages import (
    EmbeddingInfo,
    EvaluateDownstream,
    TileGeneratorInfo,
    TrainEncoder,
    TrainStyleBank,
)
from fedmammo.methods.contrastive_dg.params import (
    ContrastiveDgParams,
    EncoderParams,
    metric_name,
    parse_metric,
)

BASE = {"image_size": (64, 48), "data_seed": 0, "arm": "msvcl", "seed": 3}


def test_downstream_is_local_or_federated_with_at_least_one_round():
    # Execute / Assert
    assert ContrastiveDgParams(downstream="federated", downstream_rounds=3).downstream_rounds == 3
    with pytest.raises(ValidationError, match="'local' or 'federated'"):
        ContrastiveDgParams(downstream="central")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        ContrastiveDgParams(downstream_rounds=0)


def test_fractions_are_sorted_and_bounded_embedding_arms_must_be_arms():
    # Execute
    p = ContrastiveDgParams(fractions=[1.0, 0.05, 0.5])
    # Assert
    assert p.fractions == [0.05, 0.5, 1.0]
    with pytest.raises(ValidationError, match="fractions"):
        ContrastiveDgParams(fractions=[0.0, 1.0])
    with pytest.raises(ValidationError, match="embedding_arms"):
        ContrastiveDgParams(arms=["random", "msvcl"], embedding_arms=["simclr"])
    with pytest.raises(ValidationError, match="multiple of 32"):
        ContrastiveDgParams(finetune={"fpn_channels": 48})


def test_styles_are_needed_only_by_styled_arms_and_random_is_not_pretrained():
    # Execute
    plain = ContrastiveDgParams(arms=["random", "supervised", "simclr"])
    styled = ContrastiveDgParams(arms=["random", "mvcl"])
    # Assert
    assert not plain.needs_styles() and styled.needs_styles()
    assert plain.embedding_arms == ["random", "simclr"]  # the defaults that are arms
    assert plain.pretrained_arms() == ["supervised", "simclr"]


def test_encoder_spec_names_a_registered_model_and_a_supervised_head():
    # Execute
    slim = EncoderParams(arch="resnet_slim", width=4).spec()
    supervised = EncoderParams(arch="resnet18").spec(classes=2)
    # Assert
    assert slim == {
        "name": "contrastive_resnet_slim",
        "options": {"norm": "batch", "projection_dim": 128, "width": 4, "blocks": [1, 1, 1, 1]},
    }
    assert supervised["options"]["projection_dim"] == 2 and "width" not in supervised["options"]


@pytest.mark.parametrize(
    ("task", "fraction", "name"),
    [
        ("detection", 0.05, "detection_ap50@0.05"),
        ("detection", 1.0, "detection_ap50@1"),
        ("matching", 1.0, "matching_accuracy"),
        ("density", 1.0, "density_accuracy"),
    ],
)
def test_metric_names_round_trip(task, fraction, name):
    # Execute / Assert
    assert metric_name(task, fraction) == name
    assert parse_metric(name) == (task, fraction)


def test_other_metric_names_do_not_parse():
    assert parse_metric("val_loss") is None
    assert parse_metric("detection_accuracy") is None


def test_train_encoder_round_trips_through_its_config():
    # Prepare
    m = TrainEncoder(
        **BASE,
        model={"name": "contrastive_resnet_slim", "options": {"width": 4}},
        scheme="msvcl",
        pretrain={"tau": 0.2, "batch_size": 4},
        styles="abc",
        store_dir="/tmp/store",
        steps_scale=3,
    )
    # Execute
    back = TrainEncoder.from_config(m.to_config())
    # Assert
    assert back == m
    assert m.to_config()["scheme"] == "msvcl" and m.to_config()["steps-scale"] == 3


def test_defaults_are_not_sent_and_unknown_keys_are_refused():
    # Prepare
    m = TrainStyleBank(**BASE, tiles={}, cyclegan={})
    config = m.to_config()
    # Assert
    assert "store-dir" not in config and "styles" not in config
    config["stray-key"] = 1
    with pytest.raises(MessageError, match="stray-key"):
        TrainStyleBank.from_config(config)


def test_style_bank_message_carries_generator_infos_in_record_order():
    # Prepare
    info = TileGeneratorInfo(style="B", patch_size=8, latent_dim=4, width=2)
    m = TrainStyleBank(**BASE, generators=[dict(info.to_config())], tiles={}, cyclegan={})
    weights = ArrayRecord({"w": torch.zeros(2)})
    content = m.content({"arrays-0": weights})
    # Execute
    received = TrainStyleBank.from_config(content["config"]).received(content)
    # Assert
    assert received == [(info, weights)]


def test_evaluate_downstream_and_embedding_reply_round_trip():
    # Prepare
    m = EvaluateDownstream(
        **BASE, model={"name": "x"}, task="detection", fraction=0.5, finetune={}, sources=["A"]
    )
    info = EmbeddingInfo(n_images=4, plotted=1, silhouette={"random": 0.5, "msvcl": -0.1})
    # Execute / Assert
    assert EvaluateDownstream.from_config(m.to_config()) == m
    assert EmbeddingInfo.from_metrics(info.to_metrics()) == info
