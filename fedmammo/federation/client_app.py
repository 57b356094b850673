"""The centre: a Flower ClientApp whose handlers unpack a message, call training code, reply.

Every reply passes the egress guard (:func:`fedmammo.federation.egress.egress_mod`).
"""

from __future__ import annotations

import logging
import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedmammo.evaluation.metrics import metrics_by_segment
from fedmammo.federation.centre_runtime import centre_data, device, identity_of
from fedmammo.federation.codec import (
    arrays_to_state,
    encode_metric_records,
    get_json,
    state_to_arrays,
)
from fedmammo.federation.egress import declare_egress, egress_mod
from fedmammo.models import build_model
from fedmammo.recipes.common import LocalTrainingParams
from fedmammo.training.classifier import predict_scores, train_classifier

__all__ = ["app"]

log = logging.getLogger(__name__)
app = ClientApp(mods=[egress_mod])


def _bn_keys(model: nn.Module) -> list[str]:
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            keys += [f"{name}.{k}" for k in module.state_dict()]
    return keys


def _model_from(msg: Message, context: Context, *, keep_local_bn: bool) -> nn.Module:
    cfg = msg.content["config"]
    spec = get_json(cfg, "model")
    model = build_model(spec["name"], **spec.get("options", {}))
    like = model.state_dict()
    state = arrays_to_state(msg.content["arrays"], like=like)
    local_key = f"bn.{cfg['arm']}"
    if keep_local_bn and local_key in context.state:
        state.update(arrays_to_state(context.state[local_key], like=like))
    model.load_state_dict(state)
    return model


def _reply(msg: Message, context: Context, records: dict, model: nn.Module | None) -> Message:
    if model is not None:
        declare_egress(context, model.state_dict())
    return Message(content=RecordDict(records), reply_to=msg)


@app.query("identify")
def identify(msg: Message, context: Context) -> Message:
    """Name, role and label counts per split and segment (counts only)."""
    ident = identity_of(context)
    data = centre_data(ident, msg.content["config"])
    counts = data.counts() if hasattr(data, "counts") else {}
    info = ConfigRecord({"centre": ident.name, "role": ident.role})
    return _reply(msg, context, {"info": info, "counts": MetricRecord(counts)}, None)


@app.train("classifier")
def train(msg: Message, context: Context) -> Message:
    """Train the received classifier on this centre's training split; return weights."""
    start = time.perf_counter()
    cfg = msg.content["config"]
    local_bn = cfg.get("batchnorm", "local") == "local"
    model = _model_from(msg, context, keep_local_bn=local_bn)
    data = centre_data(identity_of(context), cfg)
    rows = data.rows("train")
    params = LocalTrainingParams(**get_json(cfg, "train"))
    result = train_classifier(
        model, data.dataset(rows), data.labels(rows), data.segments(rows),
        params=params, seed=int(cfg["seed"]), device=device(),
    )
    if local_bn:
        state = model.state_dict()
        context.state[f"bn.{cfg['arm']}"] = ArrayRecord(
            {k: state[k].detach().cpu() for k in _bn_keys(model)}
        )
    metrics = MetricRecord({
        "num-examples": result.num_examples, "train-loss": result.loss, "steps": result.steps,
        "compute-seconds": time.perf_counter() - start,
    })
    return _reply(msg, context, {"arrays": state_to_arrays(model.state_dict()),
                                 "metrics": metrics}, model)


@app.evaluate("classifier")
def evaluate(msg: Message, context: Context) -> Message:
    """Metrics of the received classifier on one split of this centre, global and per segment."""
    start = time.perf_counter()
    cfg = msg.content["config"]
    model = _model_from(msg, context, keep_local_bn=cfg.get("batchnorm", "local") == "local")
    data = centre_data(identity_of(context), cfg)
    rows = data.rows(str(cfg["split"]))
    out = {"num-examples": int(len(rows) if not isinstance(rows, list) else sum(map(len, rows)))}
    metrics = MetricRecord(out)
    if out["num-examples"]:
        scores = predict_scores(model, data.dataset(rows), device=device())
        records = metrics_by_segment(
            data.labels(rows), scores, data.segments(rows),
            n_boot=int(cfg.get("n-boot", 0)), seed=int(cfg["seed"]),
        )
        metrics = encode_metric_records(records)
        metrics["num-examples"] = out["num-examples"]
    metrics["compute-seconds"] = time.perf_counter() - start
    return _reply(msg, context, {"metrics": metrics}, None)
