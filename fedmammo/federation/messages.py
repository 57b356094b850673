"""Typed messages between the server and the centres: one definition per message kind.

Each kind's config is a frozen dataclass (a :class:`Config` declared with :func:`message`)
whose fields name their wire key with :func:`wire`. The server builds one and sends
``m.content(...)`` (its ``to_config()`` under ``config``); the centre's handler reads it back
with ``Kind.of(msg)`` (``from_config``), which refuses a missing required key or an unknown
key, naming the message kind and the key. Replies whose values both sides read are
:class:`Metrics` (MetricRecord) or :class:`Config` (ConfigRecord) dataclasses the same way.
Nested values travel as JSON strings (:func:`~fedmammo.federation.codec.put_json`).

This module holds the machinery, the fields every kind shares (:class:`CentreConfig`,
:class:`ArmConfig`, :class:`ModelConfig`, :class:`RoundFields`, :class:`LedgerFields`,
:class:`DPTrainFields`), the record names of a message's content, and federation's own
kinds (``query.identify``, ``evaluate.audit``) and replies. A method's kinds live in its
``methods/<kind>/messages.py``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, ClassVar, Self

import pydantic
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedmammo.errors import FedmammoError
from fedmammo.federation.codec import RECORD_SEP, decode_metric_records, encode_metric_records
from fedmammo.federation.privacy.ledger import LEDGER_KEY, PLANNED_ROUNDS_KEY, PRIOR_KEY
from fedmammo.federation.privacy.phases import LATER_PHASES_KEY, PARENT_LEDGER_KEY

__all__ = [
    "ARRAYS",
    "AUDIT",
    "BASELINE",
    "CONFIG",
    "COUNTS",
    "REFERENCE",
    "INFO",
    "METRICS",
    "PRIVACY",
    "ArmConfig",
    "AuditMetrics",
    "BaselineFields",
    "CentreConfig",
    "CentreInfo",
    "Config",
    "DPTrainFields",
    "EvaluateAudit",
    "EvaluationMetrics",
    "Identify",
    "LedgerFields",
    "MessageError",
    "Metrics",
    "ModelConfig",
    "PhaseFields",
    "PlotInfo",
    "RoundFields",
    "TestedRoundFields",
    "TrainConfig",
    "TrainMetrics",
    "decode_attacks",
    "encode_attacks",
    "fields_of",
    "message",
    "model_record",
    "wire",
]

# Record names of a message's content (RecordDict keys).
CONFIG = "config"
ARRAYS = "arrays"
BASELINE = "baseline"  # a second model's weights, to compare the carried one with
METRICS = "metrics"
PRIVACY = "privacy"
INFO = "info"
COUNTS = "counts"
REFERENCE = "reference"  # identify: the brightest-pixel AUROC of the test images
AUDIT = "audit"


class MessageError(FedmammoError, ValueError):
    """A message's config or reply does not match its kind's definition."""


def wire(
    key: str, default: Any = dataclasses.MISSING, *, as_json: bool = False, omit_default=False
) -> Any:
    """A message field sent under ``key``; no ``default``: required.

    ``as_json``: a nested value sent as a JSON string. ``omit_default``: not sent while equal
    to ``default`` (the receiver reads the default). ``None`` is never sent. A ``key`` ending
    in ``*`` is a prefix: the field is a dict sent as one entry ``<prefix><name>`` per item.
    """
    meta = {"key": key, "json": as_json, "omit_default": omit_default}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def message(kind: str, *, reply: type[Metrics] | None = None) -> Callable[[type], type]:
    """Declare a dataclass of message fields as the config (or reply) of ``kind``."""

    def deco(cls: type) -> type:
        cls.KIND = kind
        cls.REPLY = reply
        return dataclasses.dataclass(kw_only=True, frozen=True)(cls)

    return deco


fields_of = dataclasses.dataclass(kw_only=True, frozen=True)  # a group of shared fields


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@cache
def _adapter(tp: Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(tp)


def _coerce(tp: Any, value: Any) -> Any:
    """``value`` as the field type ``tp``, validated by pydantic (lax mode: a list for a tuple,
    3.0 for an int, ``"false"`` for False; 3.7 for an int or ``"maybe"`` for a bool is an
    error). A lone scalar for a list field is a list of one."""
    origin = typing.get_origin(tp)
    inner = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (types.UnionType, typing.Union) and len(inner) == 1:
        origin = typing.get_origin(inner[0])
    if origin in (list, tuple) and isinstance(value, str | int | float | bool):
        value = [value]
    try:
        return _adapter(tp).validate_python(value)
    except pydantic.ValidationError as err:
        raise ValueError(f"{value!r}: {err.errors()[0]['msg']}") from None


@fields_of
class _Fields:
    """Fields with wire keys: encode to and decode from a record's flat mapping."""

    KIND: ClassVar[str] = "?"
    REPLY: ClassVar[type[Metrics] | None] = None

    def _encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta["key"] is None:  # encoded by the kind itself
                continue
            if value is None or (meta["omit_default"] and value == f.default):
                continue
            key = meta["key"]
            if key.endswith("*"):
                out.update({f"{key[:-1]}{k}": v for k, v in value.items()})
            elif meta["json"]:
                out[key] = json.dumps(value, separators=(",", ":"))
            else:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def _decode(cls, record: Mapping[str, Any], *, strict: bool = True) -> Self:
        fields = [f for f in dataclasses.fields(cls) if f.metadata["key"] is not None]
        exact = {f.metadata["key"] for f in fields if not f.metadata["key"].endswith("*")}
        hints, kwargs, used, missing = _hints(cls), {}, set(), []
        for f in fields:
            key, tp = f.metadata["key"], hints[f.name]
            try:
                if key.endswith("*"):
                    found = {k: v for k, v in record.items() if k.startswith(key[:-1])}
                    found = {k: v for k, v in found.items() if k not in exact}
                    used |= set(found)
                    value_tp = typing.get_args(tp)[1] if typing.get_args(tp) else Any
                    kwargs[f.name] = {
                        k.removeprefix(key[:-1]): _coerce(value_tp, v) for k, v in found.items()
                    }
                elif key in record:
                    used.add(key)
                    raw = record[key]
                    kwargs[f.name] = json.loads(raw) if f.metadata["json"] else _coerce(tp, raw)
                elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    missing.append(key)
            except (TypeError, ValueError) as err:
                raise MessageError(f"message {cls.KIND!r}: key {key!r} unreadable: {err}") from err
        if missing:
            raise MessageError(f"message {cls.KIND!r}: required key(s) {missing} missing")
        unknown = sorted(set(record) - used)
        if strict and unknown:
            raise MessageError(
                f"message {cls.KIND!r}: unknown key(s) {unknown}; its keys are {sorted(exact)}"
            )
        obj = cls(**kwargs)
        obj.check()
        return obj

    def check(self) -> None:
        """Raise MessageError when fields contradict each other (kinds override it)."""

    @classmethod
    def key(cls, name: str) -> str:
        """The wire key of field ``name`` (to read an aggregate of replies, say)."""
        return next(f.metadata["key"] for f in dataclasses.fields(cls) if f.name == name)


class Config(_Fields):
    """The config of a message kind (or a reply's ConfigRecord)."""

    def to_config(self) -> ConfigRecord:
        """The ConfigRecord the sender puts in the message."""
        return ConfigRecord(self._encode())

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """The receiver's view of ``config``: MessageError names a missing or unknown key."""
        return cls._decode(config)

    @classmethod
    def of(cls, msg: Message) -> Self:
        """The config of an incoming message."""
        return cls.from_config(msg.content[CONFIG])

    def content(self, records: Mapping[str, Any] | None = None) -> RecordDict:
        """The message content: this config plus ``records`` (weights, by record name)."""
        return RecordDict({CONFIG: self.to_config(), **(records or {})})


class Metrics(_Fields):
    """A reply's MetricRecord whose keys both sides read."""

    def to_metrics(self) -> MetricRecord:
        """The MetricRecord the centre replies."""
        return MetricRecord(self._encode())

    @classmethod
    def from_metrics(cls, record: Mapping[str, Any], *, strict: bool = True) -> Self:
        """The server's view of a reply (``strict=False``: other keys are ignored)."""
        return cls._decode(record, strict=strict)


def model_record(k: int) -> str:
    """Record name of the ``k``-th model a message carries (``arrays-<k>``)."""
    return f"{ARRAYS}-{k}"


# --------------------------------------------------------------------------- shared fields
@fields_of
class CentreConfig(Config):
    """Every message: the image size and data seed the centre prepares its data at."""

    image_size: tuple[int, ...] = wire("image-size")
    data_seed: int = wire("data-seed", 0)


@fields_of
class ArmConfig(CentreConfig):
    """A message about one arm: its name, the message's seed and the run's seed it is derived
    from (``run_seed``: what a centre keeps per-seed state under, FedBN's BatchNorm and the
    optimiser's; None from a server that does not send it)."""

    arm: str = wire("arm")
    seed: int = wire("seed")
    run_seed: int | None = wire("run-seed", None, omit_default=True)


@fields_of
class ModelConfig(ArmConfig):
    """A message carrying one model: its spec ``{"name", "options"}`` (weights in ``arrays``)."""

    model: dict = wire("model", as_json=True)


@fields_of
class RoundFields(Config):
    """A round of training: its number and a fault the scenario injects (``faults:``)."""

    server_round: int | None = wire("server-round", None)
    inject_fault: bool = wire("inject-fault", False, omit_default=True)


@fields_of
class BaselineFields(Config):
    """A second model to compare the carried one with, on the same images inside the centre:
    the name of its arm (its weights in the :data:`BASELINE` record, with their own BatchNorm
    state). The reply then holds only the comparison: ``baseline_auc``, ``delta_auc``
    (carried - baseline, paired bootstrap CI) and ``p_value``."""

    baseline: str = wire("baseline", "", omit_default=True)


@fields_of
class TestedRoundFields(Config):
    """The round whose weights the carried model is: under FedBN (``batchnorm: local``) the
    centre uses its own BatchNorm state as it was after that round (None: its latest)."""

    model_round: int | None = wire("model-round", None)


@fields_of
class LedgerFields(Config):
    """The DP ledger a message charges and the server's record of it (resume)."""

    ledger: str | None = wire(LEDGER_KEY, None)
    prior: str | None = wire(PRIOR_KEY, None)


@fields_of
class DPTrainFields(LedgerFields):
    """A DP training message: its ledger and the rounds the server plans for it."""

    planned_rounds: int | None = wire(PLANNED_ROUNDS_KEY, None)


@fields_of
class PhaseFields(DPTrainFields):
    """A DP phase of a method with several (pre-training then fine-tuning, say).

    ``parent_ledger``: the ledger of the phase this one's model continues (its epsilon is
    added). ``later_phases``: the DP phases that will follow at some centres,
    ``{phase: {"rounds": int, "train": LocalTrainingParams, "centres": [name, ...]}}``, so
    the noise is planned once for all of them.
    """

    parent_ledger: str | None = wire(PARENT_LEDGER_KEY, None)
    later_phases: dict | None = wire(LATER_PHASES_KEY, None, as_json=True)


@fields_of
class TrainConfig(ModelConfig, RoundFields, DPTrainFields):
    """A round of training one model at a centre (what :class:`CentreFedAvg` sends)."""


# --------------------------------------------------------------------------- replies
@message("train reply")
class TrainMetrics(Metrics):
    """A training reply: examples seen, loss, steps, compute time, and the centre's own counts
    an averaging round weighs it by (``weighting``): ``num_images`` (its training images),
    ``num_labelled`` (those labelled for the task trained), ``quota`` (the periodic quota it
    trained on; -1: sampler steps)."""

    num_examples: int = wire("num-examples")
    train_loss: float = wire("train-loss")
    steps: int = wire("steps", 0)
    compute_seconds: float | None = wire("compute-seconds", None)
    num_images: int | None = wire("num-images", None)
    num_labelled: int | None = wire("num-labelled", None)
    quota: int | None = wire("quota", None)


@message("evaluate reply")
class EvaluationMetrics(Metrics):
    """An evaluation reply: metric records (global and per segment), examples, compute time.

    ``records`` (``{segment, metric, value, ci_low, ci_high}``) travel as
    :func:`~fedmammo.federation.codec.encode_metric_records` keys (``metric|segment[|lo|hi]``).
    """

    records: list[dict] = dataclasses.field(default_factory=list, metadata={"key": None})
    num_examples: int | None = wire("num-examples", None)
    compute_seconds: float = wire("compute-seconds", 0.0)

    def _encode(self) -> dict[str, Any]:
        return {**encode_metric_records(self.records), **super()._encode()}

    @classmethod
    def _decode(cls, record: Mapping[str, Any], *, strict: bool = True) -> Self:
        rest = {k: v for k, v in record.items() if RECORD_SEP not in k}
        obj = super()._decode(rest, strict=strict)
        return dataclasses.replace(obj, records=decode_metric_records(record))


@message("query reply")
class PlotInfo(Metrics):
    """A drawing query's reply: images seen and figures drawn (counts only)."""

    n_images: int = wire("n-images")
    plotted: int = wire("plotted", 0)


@message("query.identify reply")
class CentreInfo(Config):
    """Who answered ``query.identify``: the centre's name and role (``info``)."""

    centre: str = wire("centre")
    role: str = wire("role")
    profile: str | None = wire("profile", None)  # CentreProfile.digest() of the centre's own
    # torch's intra-op threads at the centre: float sums run in another order with another
    # count, so a run's numbers depend on it (recorded in results.json meta.centres)
    torch_threads: int | None = wire("torch-threads", None)


@message("evaluate.audit reply")
class AuditMetrics(Metrics):
    """A membership audit's scores and counts, the epsilon the attack proves at 95% and, under
    DP, the epsilon spent and its TPR bound (:class:`fedmammo.privacy.audit.AuditResult`)."""

    auc: float = wire("auc")
    tpr_at_1pct_fpr: float = wire("tpr-at-1pct-fpr")
    n_members: int = wire("n-members")
    n_nonmembers: int = wire("n-nonmembers")
    fpr_reached: float = wire("fpr-reached", 0.0)
    epsilon_lower_95: float = wire("epsilon-lower-95", 0.0)
    epsilon: float | None = wire("epsilon", None)
    delta: float | None = wire("delta", None)
    tpr_bound_at_1pct_fpr: float | None = wire("tpr-bound-at-1pct-fpr", None)
    lira_auc: float | None = wire("lira-auc", None)
    lira_tpr_at_1pct_fpr: float | None = wire("lira-tpr-at-1pct-fpr", None)
    lira_epsilon_lower_95: float | None = wire("lira-epsilon-lower-95", None)
    compute_seconds: float = wire("compute-seconds", 0.0)

    def scores(self) -> dict[str, float]:
        """Every value sent except the compute time, by field name, as floats."""
        return {
            f.name: float(v)
            for f in dataclasses.fields(self)
            if f.name != "compute_seconds" and (v := getattr(self, f.name)) is not None
        }


def encode_attacks(results: Mapping[str, Mapping[str, float]]) -> MetricRecord:
    """Attack results ``{attack: {field: value}}`` as an ``audit`` record (``attack.field``)."""
    return MetricRecord({f"{a}.{k}": float(v) for a, r in results.items() for k, v in r.items()})


def decode_attacks(record: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Inverse of :func:`encode_attacks`."""
    out: dict[str, dict[str, float]] = {}
    for key, value in record.items():
        attack, field = key.split(".", 1)
        out.setdefault(attack, {})[field] = float(value)
    return out


# --------------------------------------------------------------------------- federation's kinds
@message("query.identify")
class Identify(CentreConfig):
    """The first message: which centre are you, with what label counts (``info``, ``counts``)."""


@message("evaluate.audit", reply=AuditMetrics)
class EvaluateAudit(ModelConfig, LedgerFields, TestedRoundFields):
    """Loss-threshold (and optional offline LiRA) audit of a shared classifier at a centre.

    ``segments``: the arm trained on these only (periodic sampling). ``lira_shadows`` > 0:
    also offline LiRA with that many shadow models trained with ``lira_train``.
    """

    batchnorm: str = wire("batchnorm", "local")
    segments: list[str] | None = wire("segments", None)
    lira_shadows: int = wire("lira-shadows", 0, omit_default=True)
    lira_train: dict | None = wire("lira-train", None, as_json=True)
