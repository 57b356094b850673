"""Typed messages: every kind round-trips through Flower's wire format; bad configs are named."""

from __future__ import annotations

import dataclasses
import math

import pytest
from flwr.app import ConfigRecord, MetricRecord
from flwr.common import serde

from fedmammo.federation.messages import (
    AuditMetrics,
    CentreInfo,
    Config,
    EvaluateAudit,
    EvaluationMetrics,
    Identify,
    MessageError,
    Metrics,
    PlotInfo,
    TrainMetrics,
    decode_attacks,
    encode_attacks,
)
from fedmammo.federation.privacy.ledger import LEDGER_KEY, PLANNED_ROUNDS_KEY, PRIOR_KEY
from fedmammo.methods.fedavg.messages import EvaluateClassifier, TrainClassifier
from fedmammo.methods.mtl_finetune.messages import (
    EvaluateMtl,
    EvaluateMtlAudit,
    QueryLatent,
    TrainMtl,
    TrainMtlMetrics,
)
from fedmammo.methods.periodic_sampling.messages import (
    EvaluatePeriodic,
    PeriodicPlots,
    TrainPeriodic,
    TrainPeriodicMetrics,
)
from fedmammo.methods.share_gans.messages import (
    GeneratorInfo,
    GeneratorMetrics,
    PatchClassifierMetrics,
    TrainGenerator,
    TrainPatchClassifier,
)

CENTRE = dict(image_size=(48, 32), data_seed=3)
ARM = dict(CENTRE, arm="federated", seed=17, run_seed=4)
MODEL = dict(ARM, model={"name": "mammo_cnn", "options": {"width": 4, "norm": "group"}})
TRAIN = {"epochs": 1, "batch_size": 4, "lr": 0.01}
DP = dict(ledger="federated|0", prior='{"history": []}', planned_rounds=3)
ROUND = dict(server_round=2, inject_fault=True)
RECORDS = [
    {"segment": None, "metric": "auc", "value": 0.75, "ci_low": 0.6, "ci_high": 0.9},
    {"segment": "S1-Ma", "metric": "auc", "value": None, "ci_low": None, "ci_high": None},
]

#: One example of every kind's config, with every optional field set.
CONFIGS: list[Config] = [
    Identify(**CENTRE),
    EvaluateAudit(
        **MODEL,
        ledger="federated|0",
        prior="{}",
        batchnorm="average",
        model_round=3,
        segments=["S1-Ma", "S1-Mb"],
        lira_shadows=2,
        lira_train=TRAIN,
    ),
    TrainClassifier(**MODEL, **DP, **ROUND, train=TRAIN, batchnorm="average"),
    EvaluateClassifier(**MODEL, split="val", n_boot=20, batchnorm="local"),
    TrainPeriodic(
        **MODEL,
        **DP,
        **ROUND,
        train=TRAIN,
        segments=["S1-Ma"],
        sampler="periodic",
        steps=2,
        stream_seed=5,
        stream_epoch=1,
        quota={"S1-Ma": 7},
        offsets={"S1-Ma": 3},
        planned_quota={"S1-Ma": {"7": 2}},
    ),
    EvaluatePeriodic(
        **MODEL,
        split="test",
        n_boot=200,
        segments=["S3-Ma"],
        baselines=[{"name": "b", "round": 2}],
        model_round=3,
    ),
    PeriodicPlots(
        **CENTRE,
        arms=["Bal. labels", "P. sampling"],
        model=MODEL["model"],
        split="val",
        stem="val_e1",
        title="e1",
        plot_dir="/runs/x/plots",
        segments=["S1-Ma"],
        fedbn=[{"arm": "baseline-S1-Ma", "round": 2}, {"arm": "periodic", "round": 3}],
    ),
    TrainMtl(
        **MODEL,
        **DP,
        **ROUND,
        parent_ledger="mtl|0",
        later_phases={"finetune": {"rounds": 1, "train": TRAIN, "centres": ["b"]}},
        drop_fraction=0.25,
        drop_all=True,
        drop_seed=9,
        train=TRAIN,
        phase="finetune",
        recon_weight=0.5,
        u1=0.5,
        u_other=0.4,
        class_weight_high=10.0,
        augmentation={"p": 0.5, "zoom": [0.8, 1.2], "translate": 0.1, "vertical_flip": True},
    ),
    EvaluateMtl(
        **MODEL,
        split="test",
        n_boot=10,
        reference_arm="single_task",
        reference_model=MODEL["model"],
    ),
    EvaluateMtlAudit(
        **MODEL,
        ledger="ft|0",
        prior="{}",
        parent_ledger="mtl|0",
        drop_fraction=0.5,
        drop_all=False,
        drop_seed=3,
    ),
    QueryLatent(
        **CENTRE,
        arms=["single_task", "mtl"],
        models={"mtl": MODEL["model"]},
        seed=2,
        method="pca",
        plot_dir="",
    ),
    TrainGenerator(
        **CENTRE,
        **DP,
        seed=4,
        gan="dcgan",
        subset="masses",
        patch={"size": 16},
        gan_params={"epochs": 2},
        frechet_samples=16,
        grid_columns=6,
        plot_dir="/p",
        audit=True,
    ),
    TrainPatchClassifier(
        **ARM,
        subset="all",
        fraction=0.5,
        patch={"size": 16},
        classifier={"epochs": 2},
        cyclegan={"epochs": 1},
        harmonise=True,
        draw=True,
        n_synthetic=8,
        real_from="B",
        grid_columns=6,
        plot_dir="/p",
        n_boot=100,
        generators=[{"description": {"kind": "dcgan"}, "records": ["g0-gen-e00002"]}],
    ),
    CentreInfo(centre="A", role="train", profile="0123456789abcdef", torch_threads=2),
    GeneratorInfo(
        kind="dcgan",
        centre="B",
        subset="all",
        lesion_types=["mass", "calcification"],
        d_norm="batch",
        feature_net="random_cnn_v1",
    ),
]

#: One example of every reply's MetricRecord.
METRICS: list[Metrics] = [
    TrainMetrics(num_examples=12, train_loss=0.5, steps=3, compute_seconds=1.5),
    TrainPeriodicMetrics(num_examples=9, train_loss=0.4, steps=3, quota=9, num_images=14),
    TrainMtlMetrics(
        num_examples=20,
        train_loss=1.25,
        steps=4,
        examples_seen=32,
        losses={"recon": 0.5, "malignancy": 0.75},
        labelled={"malignancy": 15, "acr": 20},
    ),
    EvaluationMetrics(records=RECORDS, num_examples=30, compute_seconds=0.5),
    PatchClassifierMetrics(
        records=RECORDS[:1],
        best_epoch=2,
        val_auprc=0.7,
        epochs_run=3,
        n_own_lesion=5,
        n_added_lesion=8,
        n_healthy=13,
        healthy_shortfall=0,
        real_pixels_moved=1,
    ),
    AuditMetrics(
        auc=0.6,
        tpr_at_1pct_fpr=0.02,
        n_members=30,
        n_nonmembers=20,
        epsilon=4.0,
        delta=1e-3,
        tpr_bound_at_1pct_fpr=0.5,
        lira_auc=0.55,
        lira_tpr_at_1pct_fpr=0.01,
    ),
    PlotInfo(n_images=12, plotted=2),
    GeneratorMetrics(
        patch_size=16,
        latent_dim=32,
        width=4,
        n_training_patches=40,
        epochs=2,
        n_snapshots=2,
        generator_steps=10,
        critic_steps=20,
        frechet_distance=12.5,
        frechet_real_floor=math.inf,
        frechet_samples=16,
    ),
]


def _ids(examples) -> list[str]:
    return [type(e).__name__ for e in examples]


def _message_classes() -> list[type]:
    seen, todo = set(), [Config, Metrics]
    while todo:
        cls = todo.pop()
        todo += [c for c in cls.__subclasses__() if c not in seen]
        seen.add(cls)
    return sorted((c for c in seen if "KIND" in vars(c)), key=lambda c: c.__name__)  # @message


@pytest.mark.parametrize("example", CONFIGS, ids=_ids(CONFIGS))
def test_every_config_round_trips_through_the_wire(example):
    # Prepare / Execute: sender -> Flower's protobuf -> receiver
    config = example.to_config()
    wire = serde.config_record_from_proto(serde.config_record_to_proto(config))
    received = type(example).from_config(wire)
    # Assert: the very same message (types included), every optional field on the wire
    assert received == example
    assert all(
        type(getattr(received, f.name)) is type(getattr(example, f.name))
        for f in dataclasses.fields(example)
    )
    assert all(v is not None for v in dataclasses.asdict(example).values())


@pytest.mark.parametrize("example", METRICS, ids=_ids(METRICS))
def test_every_reply_round_trips_through_the_wire(example):
    # Prepare / Execute
    record = example.to_metrics()
    wire = serde.metric_record_from_proto(serde.metric_record_to_proto(record))
    received = type(example).from_metrics(wire)
    # Assert
    assert received == example


def test_every_handled_message_type_has_one_typed_definition():
    # Prepare
    from fedmammo.apps import HANDLERS

    kinds = [cls.KIND for cls in _message_classes() if issubclass(cls, Config)]
    # Execute / Assert: one definition per kind, and every kind a handler answers has one
    assert len(kinds) == len(set(kinds))
    assert set(HANDLERS) <= set(kinds)


@pytest.mark.parametrize("cls", _message_classes(), ids=lambda c: c.__name__)
def test_wire_keys_are_unique_within_a_kind(cls):
    keys = [f.metadata["key"] for f in dataclasses.fields(cls) if f.metadata["key"]]
    assert len(keys) == len(set(keys))


def test_wire_keys_and_encodings_are_the_ones_both_sides_used_before():
    # Prepare: a DP round of train.classifier as the server sent it before the typed messages
    m = TrainClassifier(**MODEL, **DP, **ROUND, train=TRAIN, batchnorm="local")
    # Execute
    config = dict(m.to_config())
    # Assert: flat keys, nested values as compact JSON, privacy keys from the ledger module
    assert config == {
        "image-size": [48, 32],
        "data-seed": 3,
        "arm": "federated",
        "seed": 17,
        "run-seed": 4,  # new since the typed messages: the run's seed (per-seed centre state)
        "model": '{"name":"mammo_cnn","options":{"width":4,"norm":"group"}}',
        "server-round": 2,
        "inject-fault": True,
        LEDGER_KEY: "federated|0",
        PRIOR_KEY: '{"history": []}',
        PLANNED_ROUNDS_KEY: 3,
        "train": '{"epochs":1,"batch_size":4,"lr":0.01}',
        "batchnorm": "local",
    }


def test_unset_optional_fields_and_defaults_marked_so_stay_off_the_wire():
    # Prepare
    m = TrainClassifier(**MODEL, train=TRAIN)
    # Execute
    config = m.to_config()
    # Assert: None is never sent; inject-fault only when True; other defaults are sent
    assert "server-round" not in config and LEDGER_KEY not in config
    assert "inject-fault" not in config and config["batchnorm"] == "local"
    assert TrainClassifier.from_config(config) == m


def test_a_missing_required_key_names_the_kind_and_the_key():
    # Prepare
    config = ConfigRecord(dict(TrainClassifier(**MODEL, train=TRAIN).to_config()))
    del config["train"]
    del config["seed"]
    # Execute / Assert
    with pytest.raises(MessageError, match=r"'train.classifier'.*\['seed', 'train'\] missing"):
        TrainClassifier.from_config(config)


def test_an_unknown_key_is_reported_with_the_kinds_keys():
    # Prepare: a quota (a train.periodic key) sent with train.classifier
    config = TrainClassifier(**MODEL, train=TRAIN).to_config()
    config["quota"] = '{"S1-Ma": 4}'
    # Execute / Assert
    with pytest.raises(MessageError, match=r"'train.classifier': unknown key\(s\) \['quota'\]"):
        TrainClassifier.from_config(config)


def test_an_unreadable_value_names_the_kind_and_the_key():
    config = EvaluateClassifier(**MODEL, split="val").to_config()
    config["seed"] = "not a number"
    with pytest.raises(MessageError, match=r"'evaluate.classifier': key 'seed' unreadable"):
        EvaluateClassifier.from_config(config)


@pytest.mark.parametrize(
    ("kind", "key", "value", "reason"),
    [
        ("classifier", "seed", 3.7, "fractional part"),  # was cut to 3
        ("audit", "lira-shadows", "2x", "valid integer"),
        ("classifier", "inject-fault", "maybe", "valid boolean"),
    ],
)
def test_a_value_that_would_lose_meaning_as_its_type_is_refused(kind, key, value, reason):
    sent = {
        "classifier": TrainClassifier(**MODEL, train=TRAIN),
        "audit": EvaluateAudit(**MODEL),
    }[kind]
    config = sent.to_config()
    config[key] = value
    with pytest.raises(MessageError, match=rf"key '{key}' unreadable: .*{reason}"):
        type(sent).from_config(config)


def test_a_bool_sent_as_text_keeps_its_meaning():
    config = TrainClassifier(**MODEL, train=TRAIN).to_config()
    config["inject-fault"] = "false"  # bool("false") would be True
    assert TrainClassifier.from_config(config).inject_fault is False
    config["seed"] = 3.0
    assert TrainClassifier.from_config(config).seed == 3


def test_reply_reading_can_skip_keys_it_does_not_know():
    # Prepare: an average of replies (Flower's aggregate) has every key of the replies
    record = MetricRecord({**TrainMtlMetrics(num_examples=1, train_loss=0.5).to_metrics()})
    record["something-else"] = 1.0
    # Execute / Assert
    with pytest.raises(MessageError, match="unknown key"):
        TrainMetrics.from_metrics(record)
    assert TrainMetrics.from_metrics(record, strict=False).train_loss == 0.5


def test_contradictory_fields_are_refused():
    with pytest.raises(MessageError, match="without 'quota' it needs 'sampler' and 'steps'"):
        TrainPeriodic(**MODEL, train=TRAIN, stream_seed=1).check()
    config = TrainMtl(**MODEL, train=TRAIN).to_config()
    config["phase"] = "finetune"
    with pytest.raises(MessageError, match="finetune round needs 'u1'"):
        TrainMtl.from_config(config)


def test_scalar_lists_accept_one_value_and_tuples_travel_as_lists():
    config = EvaluateAudit(**MODEL, segments=["S1-Ma"]).to_config()
    assert config["image-size"] == [48, 32]
    config["segments"] = "S1-Ma"  # one name, as older servers could send
    assert EvaluateAudit.from_config(config).segments == ["S1-Ma"]


def test_attack_results_round_trip():
    results = {"gan_leaks": {"auc": 0.5, "n_members": 10.0}, "logan": {"auc": 0.7}}
    assert decode_attacks(encode_attacks(results)) == results
