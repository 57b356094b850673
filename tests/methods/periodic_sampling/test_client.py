"""train.periodic / evaluate.periodic / query.periodic_plots on a tiny phantom centre, no Ray."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict
from helpers.flower_messages import make_incoming

from fedmammo.config import CentreProfile
from fedmammo.data.prepare import materialise_centre
from fedmammo.data.sampling import PeriodicBatchSampler, QuotaBatchSampler
from fedmammo.errors import DataError
from fedmammo.evaluation.metrics import bootstrap_auc, delta_auc, metrics_by_segment
from fedmammo.federation.centre_models import bn_keys
from fedmammo.federation.codec import decode_metric_records, put_json, state_to_arrays
from fedmammo.federation.egress import egress_mod
from fedmammo.methods.periodic_sampling import client as handlers
from fedmammo.methods.periodic_sampling.messages import (
    EvaluatePeriodic,
    PeriodicPlots,
    TrainPeriodic,
)
from fedmammo.models import build_model
from fedmammo.training.classifier import predict_scores

SIZE = (48, 32)
MODEL = {"name": "mammo_cnn", "options": {"width": 4, "depth": 2, "norm": "group"}}
TRAIN = {"batch_size": 4, "lr": 0.01, "augment": False}
KINDS = {k.KIND: k for k in (TrainPeriodic, EvaluatePeriodic, PeriodicPlots)}
COMMON = {"arm": "a", "seed": 3, "model": MODEL, "train": TRAIN}


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
                        {"manufacturer": "Ma", "patients": 24, "prevalence": 0.5},
                        {"manufacturer": "Mb", "patients": 24, "prevalence": 0.5},
                    ],
                }
            },
            # 6 cancer and 6 other patients per segment in test: a CI each
            # (metrics.MIN_UNITS_PER_CLASS)
            "split": {"train": 0.3, "val": 0.2, "test": 0.5},
        }
    )
    data_dir = tmp_path_factory.mktemp("centres") / "tiny"
    data = materialise_centre(profile, data_dir.parent, image_size=SIZE, data_dir=data_dir)
    return data, data_dir


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model(MODEL["name"], **MODEL["options"])


def _send(fn, message_type, data_dir, records, **fields):
    kind = KINDS[message_type]
    names = {f.name for f in dataclasses.fields(kind)}
    common = {k: v for k, v in COMMON.items() if k in names and k not in fields}
    content = kind(image_size=SIZE, data_seed=0, **common, **fields).content(records)
    node = {"centre": "tiny", "data-dir": str(data_dir), "role": "train"}
    context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
    out = egress_mod(make_incoming(content, message_type), context, fn)  # the real path
    assert not out.has_error(), out.error.reason if out.has_error() else ""
    return out.content


def test_train_on_a_quota_takes_exactly_the_quota_in_batches(centre):
    # Prepare
    data, data_dir = centre
    model = _model()
    quota = {"T-Ma": 7, "T-Mb": 2}
    # Execute
    out = _send(
        handlers.train,
        "train.periodic",
        data_dir,
        {"arrays": state_to_arrays(model.state_dict())},
        quota=quota,
        offsets={"T-Ma": 5, "T-Mb": 1},
        stream_seed=11,
    )
    # Assert: 9 samples in batches of 4 -> 3 optimiser steps; weights changed and returned
    metrics = out["metrics"]
    assert metrics["num-examples"] == 9 and metrics["steps"] == 3 and metrics["quota"] == 9
    assert metrics["num-images"] == len(data.rows("train"))
    arrays = out["arrays"].to_torch_state_dict()
    assert set(arrays) == set(model.state_dict())
    assert any(not torch.equal(v, arrays[k]) for k, v in model.state_dict().items())


def test_quota_sampler_continues_the_centralised_stream(centre):
    # Prepare: what train.periodic builds vs the centralised sampler with the same stream seed
    data, _ = centre
    rows = data.rows("train")
    labels, segments = data.labels(rows), data.segments(rows)
    central = PeriodicBatchSampler(segments, labels, batch_size=6, num_batches=2, seed=11)
    flat = [i for batch in central for i in batch]
    drawn = {s: [i for i in flat if segments[i] == s] for s in ("T-Ma", "T-Mb")}
    # Execute: the second half of the stream, as a quota with offsets of the first half
    first = {s: sum(segments[i] == s for i in flat[:6]) for s in drawn}
    quota = {s: len(drawn[s]) - first[s] for s in drawn}
    sampler = QuotaBatchSampler(segments, labels, quota, 6, seed=11, offsets=first)
    # Assert: the very same images per segment
    got = [i for batch in sampler for i in batch]
    for s in drawn:
        assert sorted(i for i in got if segments[i] == s) == sorted(drawn[s][first[s] :])


def test_train_with_a_sampler_filters_segments_and_takes_the_steps(centre):
    # Prepare
    data, data_dir = centre
    model = _model()
    rows = data.rows("train")
    n_ma = int(np.sum(data.segments(rows) == "T-Ma"))
    # Execute
    out = _send(
        handlers.train,
        "train.periodic",
        data_dir,
        {"arrays": state_to_arrays(model.state_dict())},
        segments=["T-Ma"],
        sampler="balanced_labels",
        steps=3,
        stream_seed=2,
        stream_epoch=4,
    )
    # Assert
    metrics = out["metrics"]
    assert metrics["num-images"] == n_ma < len(rows)
    assert metrics["steps"] == 3 and metrics["num-examples"] == 12 and metrics["quota"] == -1


def test_train_refuses_segments_the_centre_does_not_hold(centre):
    # Prepare
    _, data_dir = centre
    cfg = ConfigRecord(
        {
            "image-size": list(SIZE),
            "data-seed": 0,
            "arm": "a",
            "seed": 3,
            "segments": ["S9-Mz"],
            "sampler": "periodic",
            "steps": 1,
            "stream-seed": 1,
        }
    )
    put_json(cfg, "model", MODEL)
    put_json(cfg, "train", TRAIN)
    content = RecordDict({"config": cfg, "arrays": state_to_arrays(_model().state_dict())})
    node = {"centre": "tiny", "data-dir": str(data_dir), "role": "train"}
    context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
    # Execute / Assert
    with pytest.raises(DataError, match=r"no labelled training images in segments \['S9-Mz'\]"):
        handlers.train(make_incoming(content, "train.periodic"), context)


def test_evaluate_compares_with_the_baseline_inside_the_centre(centre):
    # Prepare
    data, data_dir = centre
    method, baseline = _model(1), _model(2)
    rows = data.rows("test")
    y, segments, patients = data.labels(rows), data.segments(rows), data.patients(rows)
    s_method = predict_scores(method, data.dataset(rows))
    s_base = predict_scores(baseline, data.dataset(rows))
    # Execute
    out = _send(
        handlers.evaluate,
        "evaluate.periodic",
        data_dir,
        {
            "arrays": state_to_arrays(method.state_dict()),
            "baseline-0": state_to_arrays(baseline.state_dict()),
        },
        split="test",
        baselines=[{"name": "b", "segments": ["T-Ma", "T-Mb"]}],
        n_boot=200,
    )
    # Assert: no arrays leave; delta, CI and p equal metrics.delta_auc on the same scores
    assert set(out.keys()) == {"metrics"}
    records = {(r["metric"], r["segment"]): r for r in decode_metric_records(out["metrics"])}
    compared = 0
    for s in ("T-Ma", "T-Mb"):
        mask = segments == s
        # the CIs resample whole patients (their CC and MLO images together)
        boot = {"n_boot": 200, "seed": 3, "groups": patients[mask]}
        expected = delta_auc(y[mask], s_base[mask], s_method[mask], **boot)
        got = records[("delta_auc", s)]
        if math.isnan(expected[0]):
            assert got["value"] is None
            continue
        compared += 1
        assert got["value"] == pytest.approx(expected[0], abs=1e-6)
        assert (got["ci_low"], got["ci_high"]) == pytest.approx(expected[1:3], abs=1e-6)
        assert records[("p_value", s)]["value"] == pytest.approx(expected[3], abs=1e-6)
        base = bootstrap_auc(y[mask], s_base[mask], **boot)
        assert records[("baseline_auc", s)]["value"] == pytest.approx(base[0], abs=1e-6)
        assert records[("auc", s)]["value"] == pytest.approx(
            bootstrap_auc(y[mask], s_method[mask], n_boot=0)[0], abs=1e-6
        )
    assert compared == 2  # both segments, each with a CI
    assert records[("auc", None)]["value"] == pytest.approx(
        bootstrap_auc(y, s_method, n_boot=0)[0], abs=1e-6
    )


def test_evaluate_filters_segments_and_skips_comparison_without_baselines(centre):
    # Prepare
    data, data_dir = centre
    rows = data.rows("val")
    n_mb = int(np.sum(data.segments(rows) == "T-Mb"))
    # Execute
    out = _send(
        handlers.evaluate,
        "evaluate.periodic",
        data_dir,
        {"arrays": state_to_arrays(_model().state_dict())},
        split="val",
        segments=["T-Mb"],
    )
    # Assert
    records = decode_metric_records(out["metrics"])
    assert out["metrics"]["num-examples"] == n_mb
    assert {r["segment"] for r in records} <= {None, "T-Mb"}
    assert not any(r["metric"] in ("delta_auc", "baseline_auc") for r in records)


def test_plots_are_drawn_inside_the_centre_and_only_counts_leave(centre, tmp_path):
    # Prepare
    _, data_dir = centre
    models = {
        "arrays-0": state_to_arrays(_model(1).state_dict()),
        "arrays-1": state_to_arrays(_model(2).state_dict()),
    }
    # Execute: deployment node config, so the centre writes under its own output-dir
    out = _send(
        handlers.plots,
        "query.periodic_plots",
        data_dir,
        models,
        split="test",
        arms=["Bal. labels", "P. sampling"],
        stem="test_e1_pooled_tiny",
        plot_dir="/nowhere",
    )
    # Assert
    assert set(out.keys()) == {"info"} and out["info"]["plotted"] == 2
    plots = data_dir / "outputs" / "plots"
    assert sorted(p.name for p in plots.iterdir()) == [
        "test_e1_pooled_tiny_hist.png",
        "test_e1_pooled_tiny_roc.png",
    ]


def test_fedbn_scores_a_model_with_the_batchnorm_state_of_its_tested_round(centre, monkeypatch):
    # Prepare: three FedBN rounds of arm "fbn" (the centre keeps each round's BatchNorm state)
    data, data_dir = centre
    spec = {**MODEL, "options": {**MODEL["options"], "norm": "batch"}}
    torch.manual_seed(0)
    start = build_model(spec["name"], **spec["options"]).state_dict()
    after, arrays = {}, state_to_arrays(start)
    for rnd in (1, 2, 3):
        out = _send(
            handlers.train,
            "train.periodic",
            data_dir,
            {"arrays": arrays},
            arm="fbn",
            model=spec,
            batchnorm="local",
            server_round=rnd,
            sampler="balanced_labels",
            steps=2,
            stream_seed=rnd,
        )
        arrays = out["arrays"]
        after[rnd] = arrays.to_torch_state_dict()
    # what the server sends back: round 2's weights with the BatchNorm state of its average
    # (here: the initial one), which FedBN replaces by the centre's own
    bn = set(bn_keys(build_model(spec["name"], **spec["options"])))
    sent = {k: start[k] if k in bn else v for k, v in after[2].items()}
    rows = data.rows("test")
    y, segments = data.labels(rows), data.segments(rows)

    def scores(state):
        model = build_model(spec["name"], **spec["options"])
        model.load_state_dict(state)
        return predict_scores(model, data.dataset(rows))

    def wll(model_round):
        out = _send(
            handlers.evaluate,
            "evaluate.periodic",
            data_dir,
            {"arrays": state_to_arrays(sent)},
            arm="fbn",
            model=spec,
            split="test",
            batchnorm="local",
            model_round=model_round,
        )
        records = decode_metric_records(out["metrics"])
        return next(r["value"] for r in records if r["metric"] == "wll" and r["segment"] is None)

    def expected(state):
        records = metrics_by_segment(y, scores(state), segments, with_ci=False)
        return next(r["value"] for r in records if r["metric"] == "wll" and r["segment"] is None)

    round2 = {**after[2]}  # round 2's weights with the centre's own round-2 BatchNorm state
    round3_bn = {k: after[3][k] if k in bn else v for k, v in after[2].items()}
    # Execute / Assert: model-round 2 -> round 2's state; none -> the latest (round 3's)
    assert wll(2) == pytest.approx(expected(round2), abs=1e-9)
    assert wll(None) == pytest.approx(expected(round3_bn), abs=1e-9)
    assert expected(round2) != pytest.approx(expected(round3_bn), abs=1e-6)  # they differ
    # the figures score the same models as the metrics
    drawn = {}
    monkeypatch.setattr(
        handlers, "draw_centre_plots", lambda y, s, *a, **k: drawn.update(s) or ["x.png"]
    )
    _send(
        handlers.plots,
        "query.periodic_plots",
        data_dir,
        {"arrays-0": state_to_arrays(sent), "arrays-1": state_to_arrays(sent)},
        split="test",
        arms=["round 2", "as sent"],
        model=spec,
        stem="fbn",
        fedbn=[{"arm": "fbn", "round": 2}, {}],
    )
    np.testing.assert_allclose(drawn["round 2"], scores(round2), atol=1e-6)
    np.testing.assert_allclose(drawn["as sent"], scores(sent), atol=1e-6)
