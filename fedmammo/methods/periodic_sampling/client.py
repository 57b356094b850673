"""Handlers of the periodic-sampling paper's sampling methods: train.periodic, evaluate.periodic,
query.periodic_plots.

``train.periodic`` trains the received classifier on this centre's training images of the
segments the server names (``segments``; others are filtered out), one optimiser step per
batch of one of two batch sources:

- ``quota`` and ``offsets`` (JSON ``{segment: n}``): exactly ``quota[s]`` samples of each
  segment ``s`` with alternating labels, continuing the segment's stream after ``offsets[s]``
  earlier draws (:class:`~fedmammo.data.sampling.QuotaBatchSampler`): federated periodic
  sampling, whose server side is :class:`~fedmammo.methods.periodic_sampling.server.PeriodicFedAvg`;
- ``sampler`` (a registered name), ``steps`` and ``stream-epoch``: ``steps`` batches of that
  sampler, continuing its endless stream at epoch ``stream-epoch`` (pooled arms, baselines and
  FedAvg arms with a local sampler).

Streams are seeded by ``stream-seed`` (fixed for an arm), augmentation by ``seed`` (per round).

Under DP (``privacy`` in the centre profile) neither batch source is used: fixed batches are
not covered by the accountant's Poisson bound. The round runs the honest periodic form
instead (:mod:`fedmammo.methods.periodic_sampling.privacy`, :mod:`fedmammo.privacy.periodic`):
every step Poisson-samples the one segment the step pattern names, at that segment's rate,
and is accounted to that segment only; the reply's ``privacy`` record reports the maximum
over segments, on the message's ledger
(``privacy-ledger``: one per arm and seed, composed over rounds in the centre's ledger file):

- ``sampler``: the step pattern is Algorithm 1 over the segments' rarest-label counts
  (``periodic``) or a round-robin (``balanced_segments``), continued across rounds at step
  ``stream-epoch * steps``; ``balanced_labels`` and ``random`` Poisson-sample all the images
  (one segment ``all``). Rates ``min(1, batch_size / n_s)``, except ``balanced_labels``: one
  rate per label that expects each label equally often, accounted at the largest
  (:mod:`fedmammo.privacy.label_sampling`); the noise is planned once for
  ``dp-planned-rounds`` rounds of ``steps`` steps.
- ``quota``: segment ``s`` takes ``k_s = ceil(q_s / batch_size)`` steps at rate
  ``q_s / (k_s n_s)`` (the quota in expectation), interleaved by Algorithm 1 over the ``k_s``;
  the noise is planned once from ``dp-planned-quota``, the quotas of this and every later
  planned round (sent by :class:`~fedmammo.methods.periodic_sampling.server.PeriodicFedAvg`).

A round that would exceed the target epsilon or the plan is refused before any step
(:class:`~fedmammo.federation.privacy.ledger.BudgetRefusal`).

``evaluate.periodic`` scores ``arrays`` on one split (optionally filtered by ``segments``) and
replies with metric records globally and per segment. With ``baseline-<j>`` records and
``baselines`` (JSON list of ``{"name", "segments"}``), it also compares, inside the centre,
the method with baseline ``j`` on each of its segments: ``baseline_auc`` (with CI),
``delta_auc`` (paired bootstrap CI) and ``p_value`` (paired permutation test) per segment. Per-image
scores never leave: the reply holds scalars only. Under FedBN (``batchnorm: local``) every
model is scored with this centre's own BatchNorm state of its arm as it was after the round
it was tested from (``model-round``, a baseline's ``round``; the best validation round need
not be the last), as the plots below are.

``query.periodic_plots`` draws, inside the centre, the ROC curves (global and per segment,
with operating points; periodic-sampling paper Figure 4) and the prediction histograms per
segment and label (Figure 1, right) of the models ``arrays-<k>`` (labels in ``arms``). In
simulation it writes ``<stem>_roc.png`` and ``<stem>_hist.png`` into the ``plot-dir`` the
server passes (the run directory's ``plots/``); in deployment it ignores server paths and
writes to its own ``<output-dir>/plots`` (node config ``output-dir``, default
``<data-dir>/outputs``). Its reply carries counts only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from flwr.app import Context, Message
from torch.utils.data import Sampler

from fedmammo.config.recipe import LocalTrainingParams
from fedmammo.data.sampling import QuotaBatchSampler, build_sampler
from fedmammo.errors import DataError
from fedmammo.evaluation.metrics import metrics_by_segment
from fedmammo.evaluation.tables import comparison_records
from fedmammo.federation.centre_models import (
    keep_optimizer_state,
    kept_optimizer_state,
    load_model,
    model_from,
    save_local_bn,
)
from fedmammo.federation.centre_runtime import (
    Rows,
    centre_data,
    device,
    identity_of,
    select_rows,
)
from fedmammo.federation.codec import state_to_arrays
from fedmammo.federation.handlers import check_injected_fault, handler, reply
from fedmammo.federation.messages import (
    ARRAYS,
    INFO,
    METRICS,
    PRIVACY,
    EvaluationMetrics,
    PlotInfo,
    model_record,
)
from fedmammo.federation.privacy.ledger import finish_dp, privacy_budget
from fedmammo.federation.site import plot_dir
from fedmammo.methods.periodic_sampling.messages import (
    EvaluatePeriodic,
    PeriodicPlots,
    TrainPeriodic,
    TrainPeriodicMetrics,
    baseline_record,
)
from fedmammo.methods.periodic_sampling.privacy import dp_plan, dp_session
from fedmammo.methods.periodic_sampling.report import draw_centre_plots
from fedmammo.training.classifier import predict_scores, train_classifier

__all__ = ["HANDLERS", "evaluate", "plots", "train"]


def _size(rows: Rows) -> int:
    return int(sum(map(len, rows))) if isinstance(rows, list) else len(rows)


def _images(data: Any, segments: Sequence[str] | None) -> int:
    """The training images in ``segments`` (None: all), labelled or not (``images``)."""
    rows = data.rows("train", label=None)
    parts, rows = (data.parts, rows) if isinstance(rows, list) else ([data], [rows])
    if not segments:
        return _size(rows)
    keep = [str(s) for s in segments]
    return int(sum(np.isin(d.segments(r), keep).sum() for d, r in zip(parts, rows, strict=True)))


class _ContinuedStream(Sampler[list[int]]):
    """A segment sampler pinned to epoch ``start + e``: rounds continue one endless stream."""

    def __init__(self, inner: Any, start: int) -> None:
        super().__init__()
        self.inner, self.start = inner, int(start)
        inner.set_epoch(self.start)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(self.start + int(epoch))

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.inner)


def _round_sampler(
    m: TrainPeriodic, segments: np.ndarray, labels: np.ndarray, batch_size: int
) -> Sampler:
    if m.quota is not None:
        quota = {str(k): int(v) for k, v in m.quota.items()}
        offsets = {str(k): int(v) for k, v in (m.offsets or {}).items()}
        return QuotaBatchSampler(
            segments, labels, quota, batch_size, seed=m.stream_seed, offsets=offsets
        )
    inner = build_sampler(
        str(m.sampler),
        segments=segments,
        labels=labels,
        batch_size=batch_size,
        num_batches=int(m.steps),
        seed=m.stream_seed,
    )
    return _ContinuedStream(inner, m.stream_epoch)


@handler(TrainPeriodic.KIND, dp=True, consent="models", averaged=True)
def train(msg: Message, context: Context) -> Message:
    """Train on the round's quota (or sampler steps) of the named segments; return weights."""
    start = time.perf_counter()
    m = TrainPeriodic.of(msg)
    check_injected_fault(m)
    local_bn = m.batchnorm == "local"
    model = model_from(m, msg.content[ARRAYS], context, keep_local_bn=local_bn)
    ident = identity_of(context)
    data = centre_data(ident, m)
    rows = select_rows(data, "train", m.segments)
    if _size(rows) == 0:
        raise DataError(
            f"{m.KIND}: no labelled training images in segments {m.segments} at this centre"
        )
    params = LocalTrainingParams(**m.train).model_copy(update={"epochs": 1})
    keep = params.keep_optimizer_state
    labels, segments = data.labels(rows), data.segments(rows)
    privacy = None
    n_train = _size(data.rows("train"))  # the centre's protected set (delta, budget)
    if privacy_budget(ident, n_train) is not None:  # DP: Poisson within one segment per step
        plan = dp_plan(m, np.asarray(segments).astype(str), labels, params.batch_size)
        privacy = dp_session(context, ident, m, n_train, plan)
        sampler: Sampler = plan[0]
    else:
        sampler = _round_sampler(m, segments, labels, params.batch_size)
    quota = int(sum(m.quota.values())) if m.quota is not None else -1
    if len(sampler) == 0:  # nothing to do this round: weights unchanged
        steps, seen, loss = 0, 0, 0.0
    else:
        result = train_classifier(
            model,
            data.dataset(rows),
            labels,
            segments,
            params=params,
            seed=int(m.seed),
            device=device(),
            batch_sampler=sampler,
            privacy=privacy,
            optimizer_state=kept_optimizer_state(context, m, keep),
        )
        steps, seen, loss = result.steps, result.num_examples, result.loss
        keep_optimizer_state(context, m, result.optimizer_state, keep)
    if local_bn:
        save_local_bn(model, context, m)
    metrics = TrainPeriodicMetrics(
        num_examples=seen,
        train_loss=loss,
        steps=steps,
        quota=quota,
        num_images=_images(data, m.segments),
        num_labelled=_size(rows),
        compute_seconds=time.perf_counter() - start,
    )
    records = {ARRAYS: state_to_arrays(model.state_dict()), METRICS: metrics.to_metrics()}
    if privacy is not None:
        records[PRIVACY] = finish_dp(context, privacy, m, steps)
    return reply(msg, context, records, model)


@handler(EvaluatePeriodic.KIND, consent="metrics")
def evaluate(msg: Message, context: Context) -> Message:
    """Metrics of ``arrays`` on one split, globally and per segment; deltas vs baselines."""
    start = time.perf_counter()
    m = EvaluatePeriodic.of(msg)
    fedbn = m.batchnorm == "local"  # each model with this centre's BatchNorm of its round
    model = load_model(
        m.model,
        msg.content[ARRAYS],
        context,
        local_bn=(m.arm, m.run_seed) if fedbn else None,
        after_round=m.model_round,
    )
    data = centre_data(identity_of(context), m)
    rows = select_rows(data, m.split, m.segments)
    n, n_boot, seed = _size(rows), m.n_boot, int(m.seed)
    records: list[dict] = []
    if n:
        y, segments, patients = data.labels(rows), data.segments(rows), data.patients(rows)
        dataset = data.dataset(rows)
        scores = predict_scores(model, dataset, device=device())
        records = metrics_by_segment(y, scores, segments, groups=patients, with_ci=n_boot > 0)
        for j, base in enumerate(m.baselines or []):
            base_model = load_model(
                m.model,
                msg.content[baseline_record(j)],
                context,
                local_bn=(base["name"], m.run_seed) if fedbn else None,
                after_round=base.get("round"),
            )
            baseline = predict_scores(base_model, dataset, device=device())
            records += comparison_records(
                y,
                baseline,
                scores,
                segments,
                base["segments"],
                n_boot=n_boot,
                seed=seed,
                patients=patients,
            )
    metrics = EvaluationMetrics(
        records=records, num_examples=n, compute_seconds=time.perf_counter() - start
    )
    return reply(msg, context, {METRICS: metrics.to_metrics()})


@handler(PeriodicPlots.KIND, consent="metrics")
def plots(msg: Message, context: Context) -> Message:
    """Draw ROC curves and prediction histograms of ``arrays-<k>`` here; reply with counts."""
    m = PeriodicPlots.of(msg)
    ident = identity_of(context)
    data = centre_data(ident, m)
    rows = select_rows(data, m.split, m.segments)
    info = PlotInfo(n_images=_size(rows), plotted=0)
    y = data.labels(rows) if _size(rows) else np.zeros(0, dtype=np.int64)
    if _size(rows) < 2 or y.min() == y.max():
        return reply(msg, context, {INFO: info.to_metrics()})
    dataset = data.dataset(rows)
    scores = {}
    for k, arm in enumerate(m.arms):
        fedbn = m.fedbn[k] if m.fedbn else {}
        model = load_model(
            m.model,
            msg.content[model_record(k)],
            context,
            local_bn=(fedbn["arm"], fedbn.get("seed")) if fedbn else None,
            after_round=fedbn.get("round"),
        )
        scores[arm] = predict_scores(model, dataset, device=device())
    out = draw_centre_plots(
        y,
        scores,
        data.segments(rows),
        plot_dir(context, ident, m.plot_dir, needed_by=m.KIND),
        m.stem,
        title=m.title,
    )
    info = PlotInfo(n_images=_size(rows), plotted=len(out))
    return reply(msg, context, {INFO: info.to_metrics()})


HANDLERS = (train, evaluate, plots)
