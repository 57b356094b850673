"""Packing and unpacking of message payloads: weights, configs and metric records."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

__all__ = [
    "RECORD_SEP",
    "arrays_to_state",
    "decode_metric_records",
    "encode_metric_records",
    "get_json",
    "put_json",
    "state_to_arrays",
]

RECORD_SEP = "|"  # metric|segment[|lo|hi] keys of metric records


def state_to_arrays(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """A torch state dict as an ArrayRecord (tensors detached and moved to CPU)."""
    return ArrayRecord({k: v.detach().cpu() for k, v in state.items()})


def arrays_to_state(record: ArrayRecord, like: Mapping[str, torch.Tensor] | None = None) -> dict:
    """An ArrayRecord as a torch state dict, cast to the dtypes of ``like`` when given.

    FedAvg averages integer buffers (BatchNorm ``num_batches_tracked``) into floats; casting
    back to the model's dtypes restores them.
    """
    state = record.to_torch_state_dict()
    if like is not None:
        state = {k: v.to(like[k].dtype) if k in like else v for k, v in state.items()}
    return state


def put_json(config: ConfigRecord, key: str, value: Any) -> None:
    """Store a JSON-serialisable value in a ConfigRecord (server -> centre only)."""
    config[key] = json.dumps(value, separators=(",", ":"))


def get_json(config: ConfigRecord, key: str, default: Any = None) -> Any:
    """Read a value stored with put_json."""
    return json.loads(config[key]) if key in config else default


def encode_metric_records(records: list[dict]) -> MetricRecord:
    """Metric records ``{segment, metric, value, ci_low, ci_high}`` as a flat MetricRecord."""
    out: dict[str, float] = {}
    for r in records:
        base = f"{r['metric']}{RECORD_SEP}{r.get('segment') or ''}"
        value = r["value"]
        out[base] = float("nan") if value is None else float(value)
        for bound, tag in (("ci_low", "lo"), ("ci_high", "hi")):
            if r.get(bound) is not None:
                out[f"{base}{RECORD_SEP}{tag}"] = float(r[bound])
    return MetricRecord(out)


def decode_metric_records(record: MetricRecord) -> list[dict]:
    """Inverse of encode_metric_records (keys without the separator are skipped)."""
    rows: dict[tuple[str, str], dict] = {}
    for key, value in record.items():
        parts = key.split(RECORD_SEP)
        if len(parts) < 2:
            continue
        metric, segment = parts[0], parts[1]
        row = rows.setdefault(
            (metric, segment),
            {
                "segment": segment or None,
                "metric": metric,
                "value": None,
                "ci_low": None,
                "ci_high": None,
            },
        )
        v = None if isinstance(value, float) and math.isnan(value) else float(value)
        if len(parts) == 2:
            row["value"] = v
        elif parts[2] == "lo":
            row["ci_low"] = v
        elif parts[2] == "hi":
            row["ci_high"] = v
    return list(rows.values())
