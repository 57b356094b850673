"""train.mtl / evaluate.mtl / query.latent on a tiny phantom centre, called without Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from helpers.flower_messages import make_incoming

from fedmammo.config import CentreProfile
from fedmammo.data.labels import MISSING, finetune_targets, manifest_targets
from fedmammo.data.prepare import materialise_centre
from fedmammo.federation.codec import decode_metric_records, put_json, state_to_arrays
from fedmammo.federation.egress import egress_mod
from fedmammo.methods.mtl_finetune import client as handlers
from fedmammo.models import build_model

SIZE = (64, 48)
MODEL = {
    "name": "multitask",
    "options": {"widths": [4, 4, 8, 8, 8], "dropout": 0.0, "stem_stride": 1},
}
SINGLE = {
    "name": "multitask",
    "options": {
        "widths": [4, 4, 8, 8, 8],
        "dropout": 0.0,
        "tasks": {"malignancy": 2},
        "decoder": False,
        "fusion": False,
    },
}
TRAIN = {"epochs": 1, "batch_size": 8, "steps_per_epoch": 2, "lr": 0.001}


@pytest.fixture(scope="module")
def centre(tmp_path_factory):
    profile = CentreProfile.model_validate(
        {
            "name": "tiny",
            "source": "T",
            "data": {
                "synthetic": {
                    "image_height": 64,
                    "segments": [
                        {"manufacturer": "Ma", "patients": 20, "prevalence": 0.5},
                        {"manufacturer": "Mb", "patients": 20, "prevalence": 0.5},
                    ],
                }
            },
            "labels": {
                "missing": {"malignancy": 0.3, "density": 0.1},
                "uncertainty": {"density": 0.2},
            },
            # about 10 cancer patients in test: CIs and p (metrics.MIN_UNITS_PER_CLASS)
            "split": {"train": 0.3, "val": 0.2, "test": 0.5},
        }
    )
    data_dir = tmp_path_factory.mktemp("centres") / "tiny"
    data = materialise_centre(profile, data_dir.parent, image_size=SIZE, data_dir=data_dir)
    return data, data_dir


def _context(data_dir) -> Context:
    node = {"centre": "tiny", "data-dir": str(data_dir), "role": "train"}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})


def _model(spec=MODEL, seed=0):
    torch.manual_seed(seed)
    return build_model(spec["name"], **spec["options"])


def _send(fn, message_type, data_dir, model=None, spec=MODEL, context=None, **config):
    cfg = ConfigRecord({"image-size": list(SIZE), "data-seed": 0, "arm": "mtl", "seed": 3})
    put_json(cfg, "model", spec)
    if message_type.startswith("train."):  # an evaluation carries no training recipe
        put_json(cfg, "train", TRAIN)
    for key, value in config.items():
        cfg[key] = value
    content = RecordDict({"config": cfg})
    if model is not None:
        content["arrays"] = state_to_arrays(model.state_dict())
    context = context or _context(data_dir)
    # the real path: every reply passes the egress guard
    out = egress_mod(make_incoming(content, message_type), context, fn)
    assert not out.has_error()
    return out.content


@pytest.mark.parametrize("spec", [MODEL, SINGLE], ids=["mtl", "single_task"])
def test_train_replies_exactly_the_model_weights_and_loss_parts(centre, spec):
    # Prepare
    data, data_dir = centre
    model = _model(spec)
    train_rows = data.rows("train", label=None)
    # Execute
    out = _send(handlers.train, "train.mtl", data_dir, model, spec=spec)
    # Assert
    arrays = out["arrays"].to_torch_state_dict()
    assert set(arrays) == set(model.state_dict())
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, arrays[k])]
    assert changed, "local training left every weight unchanged"
    metrics = out["metrics"]
    assert metrics["num-examples"] == len(train_rows)  # unlabelled images train too
    assert metrics["steps"] == 2 and metrics["examples-seen"] == 16
    labelled = int(
        (manifest_targets(data.manifest.iloc[train_rows])[0]["malignancy"] != MISSING).sum()
    )
    assert metrics["labelled-malignancy"] == labelled < len(train_rows)
    assert np.isfinite(metrics["train-loss"]) and metrics["train-loss"] > 0
    has_decoder = spec["options"].get("decoder", True)
    assert (metrics["loss-reconstruction"] > 0) == has_decoder


def test_dropped_labels_are_the_same_every_round_and_drop_all_removes_images(centre):
    # Prepare
    data, data_dir = centre
    model = _model()
    # Execute
    full = _send(handlers.train, "train.mtl", data_dir, model)["metrics"]
    half = [
        _send(
            handlers.train,
            "train.mtl",
            data_dir,
            model,
            seed=s,
            **{"drop-fraction": 0.5, "drop-seed": 11},
        )["metrics"]
        for s in (1, 2)
    ]
    fewer = _send(
        handlers.train,
        "train.mtl",
        data_dir,
        model,
        **{"drop-fraction": 0.5, "drop-seed": 11, "drop-all": True},
    )["metrics"]
    # Assert: half of the malignancy labels, the same ones whatever the round seed
    n = full["labelled-malignancy"]
    assert half[0]["labelled-malignancy"] == n - round(0.5 * n)
    assert half[0]["labelled-malignancy"] == half[1]["labelled-malignancy"]
    assert half[0]["num-examples"] == full["num-examples"]
    assert half[0]["labelled-acr"] == full["labelled-acr"]
    # drop-all removes images: the same malignancy labels go, and other tasks' labels with them
    assert fewer["labelled-malignancy"] == half[0]["labelled-malignancy"]
    assert fewer["num-examples"] < full["num-examples"]
    assert fewer["labelled-acr"] < full["labelled-acr"]


def test_finetune_phase_trains_on_acr_derived_malignancy_labels(centre):
    # Prepare
    data, data_dir = centre
    rows = data.rows("train", label=None)
    expected, _ = finetune_targets(data.manifest.iloc[rows], u1=0.5)
    # Execute
    out = _send(
        handlers.train,
        "train.mtl",
        data_dir,
        _model(),
        phase="finetune",
        u1=0.5,
        **{"u-other": 0.5, "class-weight-high": 20.0},
    )
    # Assert
    metrics = out["metrics"]
    assert metrics["labelled-malignancy"] == int((expected["malignancy"] != MISSING).sum())
    assert metrics["labelled-malignancy"] > 0


def test_evaluate_records_decode_with_strata_and_segments(centre):
    # Prepare
    data, data_dir = centre
    model = _model()
    rows = data.rows("test", label=None)
    targets, _ = manifest_targets(data.manifest.iloc[rows])
    # Execute
    out = _send(handlers.evaluate, "evaluate.mtl", data_dir, model, split="test", **{"n-boot": 50})
    # Assert
    assert set(out) == {"metrics"}  # no arrays leave after an evaluation
    records = decode_metric_records(out["metrics"])
    by_key = {(r["segment"], r["metric"]): r for r in records}
    segments = {r["segment"] for r in records}
    density = {f"density={'ABCD'[k]}" for k in set(targets["density"].tolist()) if k >= 0}
    views = {f"view={v}" for v, k in (("CC", 0), ("MLO", 1)) if (targets["view"] == k).any()}
    assert density | views | set(data.segments(rows)) | {None} == segments
    overall = by_key[(None, "auc")]
    assert overall["value"] is not None and 0.0 <= overall["value"] <= 1.0
    assert overall["ci_low"] <= overall["value"] <= overall["ci_high"]
    assert by_key[(None, "n")]["value"] == len(rows)
    for metric in ("acr_balanced_accuracy", "density_balanced_accuracy", "view_auc"):
        assert 0.0 <= by_key[(None, metric)]["value"] <= 1.0
    strata_n = sum(by_key[(f"view={v}", "n")]["value"] for v in ("CC", "MLO"))
    assert strata_n == len(rows)


def test_latent_query_writes_the_figure_locally_and_replies_counts_only(centre):
    # Prepare
    data, data_dir = centre
    models = {"single_task": (SINGLE, _model(SINGLE)), "mtl": (MODEL, _model())}
    cfg = ConfigRecord(
        {
            "image-size": list(SIZE),
            "data-seed": 0,
            "seed": 0,
            "split": "test",
            "arms": list(models),
            "plot-dir": "/nowhere/plots",
        }
    )
    put_json(cfg, "models", {a: s for a, (s, _) in models.items()})
    content = RecordDict({"config": cfg})
    for k, (_, m) in enumerate(models.values()):
        content[f"arrays-{k}"] = ArrayRecord(m.state_dict())
    # Execute
    out = egress_mod(make_incoming(content, "query.latent"), _context(data_dir), handlers.latent)
    # Assert: deployment-style node, so the centre ignores the server path and keeps the plot
    assert not out.has_error()
    assert set(out.content) == {"info"} and isinstance(out.content["info"], MetricRecord)
    assert out.content["info"]["plotted"] == 1
    assert out.content["info"]["n-images"] == len(data.rows("test", label=None))
    png = data_dir / "outputs" / "plots" / "latent_tiny_seed0.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_with_a_reference_model_adds_paired_p_values(centre):
    # Prepare: the reference arm (single-task) travels as arrays-0 with its spec
    data, data_dir = centre
    model, reference = _model(), _model(SINGLE, seed=1)
    cfg = ConfigRecord(
        {"image-size": list(SIZE), "data-seed": 0, "arm": "mtl", "seed": 3, "split": "test"}
    )
    cfg["n-boot"] = 50  # the p-values' permutations (none: no p, as no CI)
    put_json(cfg, "model", MODEL)
    put_json(cfg, "reference-model", SINGLE)
    cfg["reference-arm"] = "single_task"
    content = RecordDict({"config": cfg, "arrays": state_to_arrays(model.state_dict())})
    content["arrays-0"] = state_to_arrays(reference.state_dict())
    # Execute
    out = egress_mod(make_incoming(content, "evaluate.mtl"), _context(data_dir), handlers.evaluate)
    same = _send(handlers.evaluate, "evaluate.mtl", data_dir, model, split="test")
    # Assert: p-values and breast-wise AUC are numbers; without a reference there is no p
    assert not out.has_error() and set(out.content) == {"metrics"}
    by_key = {
        (r["segment"], r["metric"]): r["value"]
        for r in decode_metric_records(out.content["metrics"])
    }
    rows = data.rows("test", label=None)
    breasts = handlers.breast_keys(data.manifest.iloc[rows])
    assert by_key[(None, "n_breasts")] <= len(set(breasts)) < len(rows)
    for metric in ("auc_p", "breast_auc_p", "reference_auc", "breast_auc", "mcc", "specificity"):
        value = by_key[(None, metric)]
        assert value is not None and np.isfinite(value), metric
    assert 0.0 <= by_key[(None, "auc_p")] <= 1.0
    plain = {(r["segment"], r["metric"]) for r in decode_metric_records(same["metrics"])}
    assert (None, "auc_p") not in plain and (None, "breast_auc") in plain


def test_train_applies_the_recipes_augmentation(centre, monkeypatch):
    # Prepare: record the augmentation the training loader builds
    data, data_dir = centre
    built = []
    real = handlers.mtl_augmentation

    def spy(**options):
        built.append(options)
        return real(**options)

    monkeypatch.setattr(handlers, "mtl_augmentation", spy)
    options = {"p": 0.5, "zoom": [0.9, 1.3], "translate": 0.05, "vertical_flip": True}
    # Execute
    _send(handlers.train, "train.mtl", data_dir, _model(), augmentation=json.dumps(options))
    _send(handlers.evaluate, "evaluate.mtl", data_dir, _model(), split="test")
    # Assert: built once, by the training round, with the recipe's options
    assert built == [options]


def test_a_centre_carries_its_adam_state_from_round_to_round(centre, tmp_path):
    # Prepare: a centre keeping its optimiser state in its own state folder
    data, data_dir = centre
    node = {"centre": "tiny", "data-dir": str(data_dir), "role": "train"}

    def context(state_dir):
        config = {**node, "state-dir": str(state_dir)}
        return Context(run_id=1, node_id=7, node_config=config, state=RecordDict(), run_config={})

    keep, fresh = context(tmp_path / "keep"), context(tmp_path / "fresh")
    recipe = json.dumps({**TRAIN, "keep_optimizer_state": True})

    def send(model, rnd, ctx, train):
        out = _send(handlers.train, "train.mtl", data_dir, model, context=ctx, train=train,
                    **{"server-round": rnd})  # fmt: skip
        after = _model()
        after.load_state_dict(out["arrays"].to_torch_state_dict())
        return after

    # Execute: rounds 1 and 2 carrying Adam's state; round 2 again with a fresh Adam
    first = send(_model(), 1, keep, recipe)
    second = send(first, 2, keep, recipe)
    restarted = send(first, 2, fresh, json.dumps(TRAIN))
    # Assert: one Adam run of 2 + 2 steps, kept per round in the centre's state folder
    saved = sorted((tmp_path / "keep").glob("optimizer/*/round*.pt"))
    assert [p.name for p in saved] == ["round1.pt", "round2.pt"]
    steps = {int(s["step"]) for s in torch.load(saved[-1])["state"].values()}
    assert steps == {4}
    assert not list((tmp_path / "fresh").glob("optimizer/*/*"))  # off: nothing kept
    # the moments were used: round 2 from the same weights differs from a fresh Adam's
    a, b = second.state_dict(), restarted.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
