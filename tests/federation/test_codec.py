"""Payload codecs round-trip values exactly and restore integer buffers."""

from __future__ import annotations

import math

import torch

from fedmammo.federation.codec import (
    arrays_to_state,
    decode_metric_records,
    encode_metric_records,
    state_to_arrays,
)


def test_metric_records_round_trip():
    records = [
        {"segment": None, "metric": "auroc", "value": 0.81, "ci_low": 0.7, "ci_high": 0.9},
        {"segment": "S1-Ma", "metric": "auroc", "value": 0.75, "ci_low": None, "ci_high": None},
        {
            "segment": "S1-Ma",
            "metric": "wll",
            "value": float("nan"),
            "ci_low": None,
            "ci_high": None,
        },
    ]
    decoded = decode_metric_records(encode_metric_records(records))
    by_key = {(r["segment"], r["metric"]): r for r in decoded}
    assert by_key[(None, "auroc")] == records[0]
    assert by_key[("S1-Ma", "auroc")]["value"] == 0.75
    assert by_key[("S1-Ma", "auroc")]["ci_low"] is None
    assert by_key[("S1-Ma", "wll")]["value"] is None  # NaN travels as missing


def test_state_round_trip_restores_integer_buffers():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    like = model.state_dict()
    record = state_to_arrays(like)
    # FedAvg turns num_batches_tracked into a float; the codec casts it back.
    record["1.num_batches_tracked"] = state_to_arrays(
        {"x": torch.tensor(3.6, dtype=torch.float64)}
    )["x"]
    state = arrays_to_state(record, like=like)
    assert state["1.num_batches_tracked"].dtype == torch.int64
    assert int(state["1.num_batches_tracked"]) == 3
    assert torch.equal(state["0.weight"], like["0.weight"])
    assert not math.isnan(float(state["1.running_var"].sum()))
