"""A centre's privacy ledgers, its DP sessions and refusals (centre side).

Every DP training message names a *ledger* (``privacy-ledger``, the server sends
``<arm>|<seed>``) and the number of rounds the server plans for it (``dp-planned-rounds``).
The centre keeps its :class:`~fedmammo.privacy.accounting.CentreAccountant` ledgers on its
own disk (:mod:`~fedmammo.federation.privacy.ledger_store`: keyed by its identity and data
fingerprint; at a real site one ledger for all work on the data whatever the server names
it, in simulation one per what-if arm and seed), so epsilon composes over every round and
phase, and survives a restart. A round's planned charge is written before its first step
and committed after training, before the reply leaves. The server's record (``dp-prior``,
from its privacy.json on resume) is only compared with the centre's own and a disagreement
logged: it is never loaded. The noise for a target epsilon is planned once for all the
planned steps. Work beyond the budget or the plan is refused before any step is taken: the
handler raises :class:`BudgetRefusal`, the reply is an error whose reason starts with
:data:`REFUSAL_MARK`, and the server records it and stops that arm.

The reply of a DP round carries a ConfigRecord ``privacy`` (:func:`encode_privacy`):
hyper-parameters only (noise multiplier, sample rate, steps, delta, clipping norm, epsilon).

Samplers under DP: the accountant assumes Poisson sampling, so a DP round replaces the
recipe's sampler with Poisson sampling over the centre's training set: ``random`` at rate
``1 / steps_per_epoch``, ``balanced_labels`` at one rate per label that expects every label
equally often, accounted at the largest (:mod:`fedmammo.privacy.label_sampling`).
``train.classifier`` refuses fixed periodic batches (sampler ``periodic``) with
:class:`DPUnsupportedError` rather than report a Poisson epsilon for them (``train.periodic``
runs their honest per-segment Poisson form, see :mod:`fedmammo.privacy.periodic`); every
``train.*`` message whose handler has no DP path is refused too (:func:`dp_guard_mod`). The
server side is :mod:`fedmammo.federation.privacy.server`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, Context, Message

from fedmammo.errors import ConfigError, FedmammoError
from fedmammo.federation.centre_runtime import CentreIdentity, identity_of
from fedmammo.federation.privacy.codec import encode_privacy
from fedmammo.federation.privacy.ledger_store import LedgerStore, store_of
from fedmammo.federation.site import state_dir
from fedmammo.privacy.accounting import (
    BudgetExceeded,
    CentreAccountant,
    PrivacyBudget,
    PrivacyUsageError,
)

if TYPE_CHECKING:  # the messages name their DP fields with this module's keys
    from fedmammo.federation.messages import DPTrainFields, LedgerFields
    from fedmammo.privacy.engine import DPSession  # loads Opacus: imported where DP starts

__all__ = [
    "LEDGER_KEY",
    "PLANNED_ROUNDS_KEY",
    "PRIOR_KEY",
    "REFUSAL_MARK",
    "BudgetRefusal",
    "DPUnsupportedError",
    "dp_guard_mod",
    "dp_session_for",
    "finish_dp",
    "has_ledger",
    "is_refusal",
    "ledger_epsilon",
    "ledger_name",
    "load_accountant",
    "open_dp_session",
    "privacy_budget",
    "reserve_round",
    "save_accountant",
    "steps_per_round",
]

logger = logging.getLogger(__name__)

REFUSAL_MARK = "privacy budget refusal"
LEDGER_KEY = "privacy-ledger"
PLANNED_ROUNDS_KEY = "dp-planned-rounds"
PRIOR_KEY = "dp-prior"
_FIXED_BATCH_SAMPLERS = ("periodic",)


class BudgetRefusal(FedmammoError):
    """A centre refuses a round that would exceed its privacy budget or its planned steps."""

    def __init__(self, centre: str, reason: str) -> None:
        self.centre = centre
        super().__init__(f"{REFUSAL_MARK}: {reason}")


class DPUnsupportedError(ConfigError):
    """DP was asked for work whose privacy cannot be accounted honestly."""


def is_refusal(reason: str | None) -> bool:
    """True when an error reply's reason is a privacy-budget refusal."""
    text = reason or ""
    return REFUSAL_MARK in text or "refuses the requested work" in text


# --------------------------------------------------------------------------- ledgers
def ledger_name(m: LedgerFields) -> str:
    """The ledger a message charges: its ledger (``privacy-ledger``), else its arm."""
    return str(m.ledger or getattr(m, "arm", None) or "run")


def _steps(state: dict) -> int:
    shared = sum(int(e[2]) for e in state.get("history", []))
    return shared + sum(int(e[2]) for v in state.get("segment_history", {}).values() for e in v)


def _compare_prior(store: LedgerStore, key: str, own: CentreAccountant | None, prior: str) -> None:
    """Log when the server's record of a ledger disagrees with the centre's own (never load it)."""
    try:
        theirs = _steps(json.loads(prior))
    except (ValueError, TypeError, AttributeError):
        logger.warning(
            "centre %s ledger %s: the server's record is unreadable", store.ident.name, key
        )
        return
    mine = 0 if own is None else _steps(own.to_state())
    if theirs > mine or (store.scope == "arm" and theirs != mine):
        logger.warning(
            "centre %s ledger %s: the server's record (%d DP steps) disagrees with the centre's "
            "own (%d steps, %s); the centre's own ledger is used",
            store.ident.name,
            key,
            theirs,
            mine,
            store.path.name,
        )


def load_accountant(
    context: Context,
    ident: CentreIdentity,
    ledger: str,
    *,
    mechanism: str,
    prior: str | None = None,
) -> CentreAccountant:
    """The ledger's accountant from the centre's own file (new when it has none).

    ``prior`` (the server's record, ``dp-prior``) is only compared, see :func:`_compare_prior`.
    """
    store = store_of(context, ident)
    key = store.key(ledger)
    own = store.accountant(key)
    if prior:
        _compare_prior(store, key, own, prior)
    return own if own is not None else CentreAccountant(mechanism, centre=ident.name)  # type: ignore[arg-type]


def save_accountant(
    context: Context, ident: CentreIdentity, ledger: str, accountant: CentreAccountant
) -> None:
    """Store the ledger's accountant in the centre's file (a plan, a fork, a finished round)."""
    store = store_of(context, ident)
    store.commit(store.key(ledger), accountant)


def has_ledger(context: Context, ident: CentreIdentity, ledger: str) -> bool:
    """True when the centre's own file holds the ledger."""
    store = store_of(context, ident)
    return store.has(store.key(ledger))


def reserve_round(context: Context, ident: CentreIdentity, ledger: str, session: DPSession) -> None:
    """Write-ahead: the round's planned charge (``session.charges``) goes to the centre's file
    when the model is private, before the first step (``session.before_steps``)."""
    store = store_of(context, ident)
    key = store.key(ledger)

    def write(s: DPSession) -> None:
        store.reserve(key, s.accountant, s.phase, s.charges)

    session.before_steps = write


def privacy_budget(ident: CentreIdentity, n_examples: int) -> PrivacyBudget | None:
    """The centre profile's DP budget, or None without DP (and for the pooled what-if)."""
    if ident.profile is None or not ident.profile.privacy.enabled:
        return None
    return PrivacyBudget.from_spec(ident.profile.privacy, n_examples)


def steps_per_round(params: Any, n_examples: int) -> tuple[int, int]:
    """(steps per epoch, steps per round) of ``train_classifier`` on ``n_examples``."""
    per_epoch = params.steps_per_epoch or math.ceil(n_examples / params.batch_size)
    return int(per_epoch), int(per_epoch * params.epochs)


# --------------------------------------------------------------------------- sessions
def open_dp_session(
    context: Context,
    ident: CentreIdentity,
    m: DPTrainFields,
    *,
    n_examples: int,
    steps_per_epoch: int,
    epochs: int,
    phase: str,
    sample_rate: float | None = None,
) -> DPSession | None:
    """The DP session of one training message, checked against the budget (None without DP).

    The message plans ``epochs * steps_per_epoch`` Poisson steps at ``sample_rate`` (default
    ``1 / steps_per_epoch``); the ledger (``privacy-ledger``) plans ``dp-planned-rounds`` such
    messages. Raises :class:`BudgetRefusal` when the message would exceed the target epsilon
    or the planned steps.
    """
    budget = privacy_budget(ident, n_examples)
    if budget is None:
        return None
    per_round = int(steps_per_epoch) * int(epochs)
    planned_rounds = int(m.planned_rounds or 0)
    if planned_rounds < 1 and budget.noise_multiplier is None:
        raise DPUnsupportedError(
            f"centre {ident.name!r}: privacy.target_epsilon needs the planned number of rounds "
            f"(config {PLANNED_ROUNDS_KEY!r}) to choose the noise once for the whole run; this "
            "strategy does not send it: set privacy.noise_multiplier instead"
        )
    from fedmammo.privacy.engine import DPSession

    ledger = ledger_name(m)
    accountant = load_accountant(context, ident, ledger, mechanism=budget.accountant, prior=m.prior)
    session = DPSession(
        budget,
        accountant,
        planned_steps=max(planned_rounds, 1) * per_round,
        phase=phase,
        centre=ident.name,
        seed=int(m.seed),
    )
    try:
        projected = session.check_budget(
            per_round, sample_rate=sample_rate or 1.0 / steps_per_epoch
        )
    except (BudgetExceeded, PrivacyUsageError) as err:
        raise BudgetRefusal(ident.name, str(err)) from err
    reserve_round(context, ident, ledger, session)
    logger.info(
        "centre %s ledger %s phase %s: DP round of %d steps, epsilon after it %.3f",
        ident.name,
        ledger,
        phase,
        per_round,
        projected,
    )
    return session


def dp_session_for(
    context: Context,
    ident: CentreIdentity,
    m: DPTrainFields,
    params: Any,
    *,
    labels: Any,
    phase: str,
) -> DPSession | None:
    """:func:`open_dp_session` for ``train_classifier``'s ``params`` on examples ``labels``.

    Sampler ``balanced_labels`` is planned at the largest of its per-label rates, as
    ``train_classifier`` will sample (:mod:`fedmammo.privacy.label_sampling`). Raises
    :class:`DPUnsupportedError` for fixed-batch samplers (their epsilon would not be the
    Poisson one the accountant reports).
    """
    n_examples = len(labels)
    if privacy_budget(ident, n_examples) is None:
        return None
    if params.sampler in _FIXED_BATCH_SAMPLERS:
        raise DPUnsupportedError(
            f"centre {ident.name!r}: DP training with sampler {params.sampler!r} (fixed periodic "
            "batches) is refused: the accountant's Poisson epsilon would not hold for it. Use "
            "sampler 'balanced_labels' or 'random' (Poisson-sampled under DP), or remove "
            "privacy.target_epsilon / privacy.noise_multiplier from the centre profile"
        )
    per_epoch, _ = steps_per_round(params, n_examples)
    rate = None
    if params.sampler == "balanced_labels":
        from fedmammo.privacy.label_sampling import epoch_label_rates

        rate = float(epoch_label_rates(labels, per_epoch).max())
    return open_dp_session(
        context,
        ident,
        m,
        n_examples=n_examples,
        steps_per_epoch=per_epoch,
        epochs=params.epochs,
        phase=phase,
        sample_rate=rate,
    )


def finish_dp(context: Context, session: DPSession, m: LedgerFields, steps: int) -> ConfigRecord:
    """Commit the ledger after training (before the reply leaves); the reply's ``privacy``."""
    save_accountant(context, identity_of(context), ledger_name(m), session.accountant)
    return encode_privacy(session, ledger=ledger_name(m), round_steps=steps)


def ledger_epsilon(
    context: Context, ident: CentreIdentity, ledger: str, prior: str | None, n_examples: int
) -> tuple[float, float] | None:
    """(epsilon, delta) spent so far on ``ledger``, or None without DP.

    None too when the centre's own file has no such ledger (the server's ``prior`` is only
    compared with it).
    """
    budget = privacy_budget(ident, n_examples)
    if budget is None or not has_ledger(context, ident, ledger):
        return None
    acc = load_accountant(context, ident, ledger, mechanism=budget.accountant, prior=prior)
    return acc.epsilon(budget.delta), budget.delta


# --------------------------------------------------------------------------- guard
#: Metric keys of a training reply that are statistics of the training images computed without
#: noise (losses, a generator's Frechet distances to the real training patches), and prefixes.
TRAINING_STATISTICS = ("train-loss", "frechet-distance", "frechet-real-floor")
TRAINING_STATISTIC_PREFIXES = ("loss-",)


def dp_guard_mod(dp_capable: Iterable[str]) -> Callable[[Message, Context, Callable], Message]:
    """Client mod, at a DP centre: refuse ``train.*`` messages outside ``dp_capable`` and
    metrics on the training split; withhold (NaN) the training statistics of its training
    replies (:func:`withhold`); unless its profile releases training statistics."""
    capable = frozenset(dp_capable)

    def mod(msg: Message, context: Context, call_next) -> Message:
        kind = msg.metadata.message_type
        training = kind.startswith("train.")
        if not (training or _asks_for_training_split(msg)):
            return call_next(msg, context)
        ident = identity_of(context)
        privacy = ident.profile.privacy if ident.profile is not None else None
        if privacy is None or not privacy.enabled:
            return call_next(msg, context)
        if not training:  # metrics on the training split
            if not privacy.release_training_statistics:
                raise DPUnsupportedError(
                    f"centre {ident.name!r} trains with DP and sends no noise-free statistic "
                    f"of its training images (privacy.release_training_statistics: false), "
                    f"so {kind!r} on split 'train' is refused; evaluate on val or test"
                )
            return call_next(msg, context)
        if kind not in capable:
            raise DPUnsupportedError(
                f"centre {ident.name!r} trains with DP (privacy in its profile) but "
                f"{kind!r} has no DP path; its epsilon could not be honoured. DP-capable: "
                f"{sorted(capable)}. Remove the centre's privacy settings for this strategy"
            )
        reply = call_next(msg, context)
        if not reply.has_error() and not privacy.release_training_statistics:
            kept = withhold(reply, ident.name, kind)
            if kept:
                keep_withheld(context, ident, msg, kept)
        return reply

    return mod


def _asks_for_training_split(msg: Message) -> bool:
    """True if a message's config names the training split (metrics on the DP images)."""
    if not msg.has_content():
        return False
    return any(rec.get("split") == "train" for rec in msg.content.config_records.values())


WITHHELD_FILE = "withheld-statistics.csv"


def keep_withheld(
    context: Context, ident: CentreIdentity, msg: Message, kept: dict[str, float]
) -> None:
    """Append the withheld values to ``withheld-statistics.csv`` in the centre's own state
    folder (one line per value: message type, arm, seed, round, key, value)."""
    cfg = msg.content.config_records.get("config", {})
    where = [msg.metadata.message_type, *(cfg.get(k, "") for k in ("arm", "seed", "server-round"))]
    path = state_dir(context, ident) / WITHHELD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        out = csv.writer(f)
        if new:
            out.writerow(["message", "arm", "seed", "round", "key", "value"])
        for key, value in sorted(kept.items()):
            out.writerow([*where, key, repr(float(value))])


def withhold(reply: Message, centre: str, kind: str) -> dict[str, float]:
    """Set the :data:`TRAINING_STATISTICS` of ``reply``'s metric records to NaN and return the
    values (kept at the centre): epsilon covers the weights, not these noise-free numbers of
    the same images."""
    kept = {}
    for record in reply.content.metric_records.values():
        for key in list(record):
            if key in TRAINING_STATISTICS or key.startswith(TRAINING_STATISTIC_PREFIXES):
                kept[key] = record[key]
                record[key] = math.nan
    if kept:
        logger.info(
            "centre %s: %s reply: withheld %s (DP; privacy.release_training_statistics: false): %s",
            centre,
            kind,
            ", ".join(sorted(kept)),
            ", ".join(f"{k}={v:.6g}" for k, v in sorted(kept.items())),
        )
    return kept
