"""FedAvg centre side: train.classifier and evaluate.classifier."""

from __future__ import annotations

import time

from flwr.app import Context, Message, MetricRecord

from fedmammo.config.recipe import LocalTrainingParams
from fedmammo.evaluation.metrics import metrics_by_segment
from fedmammo.federation.centre_models import model_from, save_local_bn
from fedmammo.federation.centre_runtime import centre_data, device, identity_of
from fedmammo.federation.codec import encode_metric_records, get_json, state_to_arrays
from fedmammo.federation.handlers import check_injected_fault, handler, reply
from fedmammo.federation.privacy.ledger import dp_session_for, finish_dp
from fedmammo.training.classifier import predict_scores, train_classifier

__all__ = ["HANDLERS", "evaluate", "train"]


def _n(rows) -> int:
    return int(sum(map(len, rows)) if isinstance(rows, list) else len(rows))


@handler("train.classifier", dp=True, consent="models")
def train(msg: Message, context: Context) -> Message:
    """Train the received classifier on this centre's training split; return weights."""
    start = time.perf_counter()
    check_injected_fault(msg)
    cfg = msg.content["config"]
    local_bn = cfg.get("batchnorm", "local") == "local"
    model = model_from(msg, context, keep_local_bn=local_bn)
    ident = identity_of(context)
    data = centre_data(ident, cfg)
    rows = data.rows("train")
    params = LocalTrainingParams(**get_json(cfg, "train"))
    # DP (privacy in the centre profile): refuses (BudgetRefusal) before any step if the
    # round would overrun the budget or the planned rounds; the error reply is the refusal.
    privacy = dp_session_for(context, ident, cfg, params, n_examples=_n(rows), phase="classifier")
    result = train_classifier(
        model,
        data.dataset(rows),
        data.labels(rows),
        data.segments(rows),
        params=params,
        seed=int(cfg["seed"]),
        device=device(),
        privacy=privacy,
    )
    if local_bn:
        save_local_bn(model, context, str(cfg["arm"]))
    metrics = MetricRecord(
        {
            "num-examples": result.num_examples,
            "train-loss": result.loss,
            "steps": result.steps,
            "compute-seconds": time.perf_counter() - start,
        }
    )
    records = {"arrays": state_to_arrays(model.state_dict()), "metrics": metrics}
    if privacy is not None:
        records["privacy"] = finish_dp(context, privacy, cfg, result.steps)
    return reply(msg, context, records, model)


@handler("evaluate.classifier", consent="metrics")
def evaluate(msg: Message, context: Context) -> Message:
    """Metrics of the received classifier on one split of this centre, global and per segment."""
    start = time.perf_counter()
    cfg = msg.content["config"]
    model = model_from(msg, context, keep_local_bn=cfg.get("batchnorm", "local") == "local")
    data = centre_data(identity_of(context), cfg)
    rows = data.rows(str(cfg["split"]))
    n = _n(rows)
    metrics = MetricRecord({})
    if n:
        scores = predict_scores(model, data.dataset(rows), device=device())
        records = metrics_by_segment(
            data.labels(rows),
            scores,
            data.segments(rows),
            n_boot=int(cfg.get("n-boot", 0)),
            seed=int(cfg["seed"]),
        )
        metrics = encode_metric_records(records)
    metrics["num-examples"] = n
    metrics["compute-seconds"] = time.perf_counter() - start
    return reply(msg, context, {"metrics": metrics})


HANDLERS = (train, evaluate)
