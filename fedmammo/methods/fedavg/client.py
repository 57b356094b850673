"""FedAvg centre side: train.classifier and evaluate.classifier."""

from __future__ import annotations

import time

from flwr.app import Context, Message

from fedmammo.config.recipe import LocalTrainingParams
from fedmammo.evaluation.metrics import metrics_by_segment
from fedmammo.evaluation.tables import comparison_records
from fedmammo.federation.centre_models import (
    baseline_model,
    keep_optimizer_state,
    kept_optimizer_state,
    model_from,
    save_local_bn,
)
from fedmammo.federation.centre_runtime import centre_data, device, identity_of
from fedmammo.federation.codec import state_to_arrays
from fedmammo.federation.handlers import check_injected_fault, handler, reply
from fedmammo.federation.messages import ARRAYS, METRICS, PRIVACY, EvaluationMetrics, TrainMetrics
from fedmammo.federation.privacy.ledger import dp_session_for, finish_dp
from fedmammo.methods.fedavg.messages import EvaluateClassifier, TrainClassifier
from fedmammo.training.classifier import predict_scores, train_classifier

__all__ = ["HANDLERS", "evaluate", "train"]


def _n(rows) -> int:
    return int(sum(map(len, rows)) if isinstance(rows, list) else len(rows))


@handler(TrainClassifier.KIND, dp=True, consent="models", averaged=True)
def train(msg: Message, context: Context) -> Message:
    """Train the received classifier on this centre's training split; return weights."""
    start = time.perf_counter()
    m = TrainClassifier.of(msg)
    check_injected_fault(m)
    local_bn = m.batchnorm == "local"
    model = model_from(m, msg.content[ARRAYS], context, keep_local_bn=local_bn)
    ident = identity_of(context)
    data = centre_data(ident, m)
    rows = data.rows("train")
    params = LocalTrainingParams(**m.train)
    keep = params.keep_optimizer_state  # Adam's state from this centre's previous round
    # DP (privacy in the centre profile): refuses (BudgetRefusal) before any step if the
    # round would overrun the budget or the planned rounds; the error reply is the refusal.
    labels = data.labels(rows)
    privacy = dp_session_for(context, ident, m, params, labels=labels, phase="classifier")
    result = train_classifier(
        model,
        data.dataset(rows),
        labels,
        data.segments(rows),
        params=params,
        seed=int(m.seed),
        device=device(),
        privacy=privacy,
        optimizer_state=kept_optimizer_state(context, m, keep),
    )
    keep_optimizer_state(context, m, result.optimizer_state, keep)
    if local_bn:
        save_local_bn(model, context, m)
    metrics = TrainMetrics(
        num_examples=result.num_examples,
        train_loss=result.loss,
        steps=result.steps,
        compute_seconds=time.perf_counter() - start,
        num_images=_n(data.rows("train", label=None)),  # the weighting counts (its own)
        num_labelled=_n(rows),
    )
    records = {ARRAYS: state_to_arrays(model.state_dict()), METRICS: metrics.to_metrics()}
    if privacy is not None:
        records[PRIVACY] = finish_dp(context, privacy, m, result.steps)
    return reply(msg, context, records, model)


@handler(EvaluateClassifier.KIND, consent="metrics")
def evaluate(msg: Message, context: Context) -> Message:
    """Metrics of the received classifier on one split of this centre, global and per segment;
    with a baseline arm, its paired difference to it."""
    start = time.perf_counter()
    m = EvaluateClassifier.of(msg)
    model = model_from(m, msg.content[ARRAYS], context, keep_local_bn=m.batchnorm == "local")
    data = centre_data(identity_of(context), m)
    rows = data.rows(m.split)
    n = _n(rows)
    records = []
    if n:
        dataset, y, segments = data.dataset(rows), data.labels(rows), data.segments(rows)
        boot = dict(n_boot=m.n_boot, seed=int(m.seed))
        patients = data.patients(rows)
        scores = predict_scores(model, dataset, device=device())
        if m.baseline:
            base = predict_scores(baseline_model(msg.content, m), dataset, device=device())
            compare = [None, *sorted(set(map(str, segments)))]
            records = comparison_records(
                y, base, scores, segments, compare, patients=patients, **boot
            )
        else:
            records = metrics_by_segment(y, scores, segments, groups=patients, with_ci=m.n_boot > 0)
    metrics = EvaluationMetrics(
        records=records, num_examples=n, compute_seconds=time.perf_counter() - start
    )
    return reply(msg, context, {METRICS: metrics.to_metrics()})


HANDLERS = (train, evaluate)
