"""Secure aggregation for fedmammo's train messages: Flower's SecAgg+ over the Message API.

Flower 1.41's ``SecAggPlusWorkflow`` needs a ``LegacyContext`` (a legacy ``Strategy`` with
``configure_fit``/``aggregate_fit`` and a ``ClientManager``) and sends plain ``train``
messages; its ``secaggplus_mod`` ignores every other message type (``train.classifier``
passes through *unmasked*) and reads the update from legacy ``FitRes`` records. Neither can
drive fedmammo's ``train.<action>`` rounds, so this module is the smallest adapter: the centre
runs Flower's own stage functions (``secaggplus_mod._setup/_share_keys/_collect_masked_vectors/
_unmask``: ECDH key agreement, Shamir shares, quantisation, masking) and the server reuses
Flower's primitives (``combine_shares``, ``pseudo_rand_gen``, ``dequantize``). What differs
from Flower, and why, is in docs/threat_model.md.

Server: :func:`secure_sum` runs the four stages (setup -> share keys -> collect masked vectors
-> unmask) for the train messages of one round and returns the weighted average.
Centre: :func:`secagg_mod`, inside ``egress_mod`` in the ClientApp's mods.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod.secure_aggregation.secaggplus_mod import (
    SecAggPlusState,
    _collect_masked_vectors,
    _setup,
    _share_keys,
    _unmask,
    check_configs,
    check_stage,
)
from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from fedmammo.config.recipe import WEIGHTINGS
from fedmammo.errors import ConfigError, FedmammoError
from fedmammo.federation.egress import declare_egress
from fedmammo.federation.messages import ARRAYS, CONFIG, ArmConfig, TrainMetrics
from fedmammo.federation.replies import reply_node

__all__ = [
    "MASKED_RECORD",
    "SecAggError",
    "SecAggParams",
    "SecureAggregate",
    "centre_weight",
    "secagg_mod",
    "secure_sum",
]

log = logging.getLogger(__name__)

MASKED_RECORD = "secagg-masked"
FACTOR_KEY = "secagg-factor"
MODE_KEY = "secagg-mode"  # "delta": updates relative to the sent arrays; "absolute"
WEIGHTING_KEY = "secagg-weighting"  # a WEIGHTINGS name: the centre's own count, or uniform
#: The reply field (:class:`TrainMetrics`) holding the centre's count for each weighting.
COUNT_FIELDS = {"images": "num_images", "labelled": "num_labelled", "quota": "quota"}
_OPAQUE_BYTES_PER_PEER = 4096


class SecAggError(FedmammoError):
    """Secure aggregation could not run or a centre refused a stage."""


@dataclass(frozen=True)
class SecAggParams:
    """SecAgg+ settings (Flower's names and defaults; ``weighting`` picks the centre weight).

    The reconstruction threshold is raised to more than half the shares when lower: then no
    server can collect both secrets of one centre (see docs/threat_model.md).
    """

    num_shares: int | float = 1.0
    reconstruction_threshold: int | float = 0.67
    max_weight: float = 1000.0
    clipping_range: float = 8.0
    quantization_range: int = 1 << 22
    modulus_range: int = 1 << 32
    weighting: str = "images"
    timeout: float | None = None
    seed: int | None = None  # neighbour assignment (None: system randomness)

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise SecAggError(
                f"weighting {self.weighting!r}: valid are {', '.join(WEIGHTINGS)} (each centre "
                "weighs its update by its own count or uniformly; weights the server chose "
                "would let it single out one centre's update)"
            )
        if self.modulus_range > 1 << 32 or bin(self.modulus_range).count("1") != 1:
            raise SecAggError("modulus_range must be a power of 2 of at most 2**32")
        if self.modulus_range <= self.quantization_range:
            raise SecAggError("modulus_range must exceed quantization_range")


@dataclass
class SecureAggregate:
    """What the server learns from one secure round: the weighted average, nothing per centre.

    ``replies``: node -> the reply without its masked record (metrics, privacy report);
    ``failures``: node -> reason; ``dropped``: nodes that shared keys then sent no vector.
    ``arrays`` is None when the round failed (``reason`` says why).
    """

    arrays: ArrayRecord | None
    total_weight: float = 0.0
    replies: dict[int, RecordDict] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)
    reason: str = ""


# ====================================================================== server side
def _counts(params: SecAggParams, n: int) -> tuple[int, int]:
    """(shares per secret, reconstruction threshold), as Flower's workflow, threshold > half."""
    if isinstance(params.num_shares, float):
        shares = round(params.num_shares * n)
        if shares < n and shares % 2 == 0:
            shares += 1
        if shares <= 2:
            shares = n
    else:
        shares = min(int(params.num_shares), n)
    if isinstance(params.reconstruction_threshold, float):
        threshold = round(params.reconstruction_threshold * shares)
    else:
        threshold = int(params.reconstruction_threshold)
    return shares, max(threshold, shares // 2 + 1, 2)


def _exchange(grid, types: Mapping[int, str], contents: Mapping[int, RecordDict], timeout):
    msgs = [
        Message(content, dst_node_id=node, message_type=types[node])
        for node, content in contents.items()
    ]
    ok: dict[int, RecordDict] = {}
    failed: dict[int, str] = {node: "no reply" for node in contents}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        node = reply_node(reply, msgs)
        if reply.has_error():
            failed[node] = reply.error.reason or "error"
        elif node in failed:
            ok[node] = reply.content
            del failed[node]
    return ok, failed


def _stage(stage: str, **values: Any) -> RecordDict:
    return RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: stage, **values})})


def _float_keys(record: ArrayRecord) -> list[str]:
    return sorted(k for k, a in record.items() if np.dtype(a.dtype).kind == "f")


def _same_arrays(messages: list[Message]) -> ArrayRecord | None:
    first = messages[0].content.get(ARRAYS)
    for m in messages[1:]:
        other = m.content.get(ARRAYS)
        if (first is None) != (other is None):
            raise SecAggError("some train messages carry arrays and some do not")
        if first is not None and (
            list(first) != list(other) or any(first[k].data != other[k].data for k in first)
        ):
            raise SecAggError("secure aggregation needs the same arrays sent to every centre")
    return first if isinstance(first, ArrayRecord) else None


def secure_sum(
    grid, messages: Iterable[Message], *, params: SecAggParams | None = None
) -> SecureAggregate:
    """Run one SecAgg+ round over ``messages`` (one train message per node, as built for the
    plain round) through ``grid`` (anything with ``send_and_receive``); return the weighted
    average of the centres' models, never an individual one.
    """
    p = params or SecAggParams()
    messages = list(messages)
    types = {m.metadata.dst_node_id: m.metadata.message_type for m in messages}
    train = {m.metadata.dst_node_id: m.content for m in messages}
    if len(types) < 2:
        raise SecAggError(f"secure aggregation needs at least 2 centres, got {len(types)}")
    sent = _same_arrays(messages)
    mode = "delta" if sent is not None else "absolute"
    max_weight = 1.0 if p.weighting == "uniform" else float(p.max_weight)
    nodes = list(types)
    n_shares, threshold = _counts(p, len(nodes))
    (random.Random(p.seed) if p.seed is not None else random.SystemRandom()).shuffle(nodes)
    half = n_shares >> 1
    neighbours = {
        nid: {nodes[(i + o) % len(nodes)] for o in range(-half, half + 1)}
        for i, nid in enumerate(nodes)
    }
    result = SecureAggregate(arrays=None)

    def enough(active: set[int], stage: str) -> bool:
        short = [n for n in active if len(neighbours[n] & active) < threshold]
        if short or len(active) < threshold:
            result.reason = (
                f"{stage}: {len(active)} centres left, fewer than the threshold {threshold}"
            )
            log.warning("secure aggregation stopped: %s", result.reason)
            return False
        return True

    # Stage 0: setup -> public keys
    setup = {
        Key.SAMPLE_NUMBER: len(nodes),
        Key.SHARE_NUMBER: n_shares,
        Key.THRESHOLD: threshold,
        Key.CLIPPING_RANGE: float(p.clipping_range),
        Key.TARGET_RANGE: p.quantization_range,
        Key.MOD_RANGE: p.modulus_range,
        Key.MAX_WEIGHT: max_weight,
    }
    ok, failed = _exchange(grid, types, {n: _stage(Stage.SETUP, **setup) for n in nodes}, p.timeout)
    result.failures.update(failed)
    public = {
        n: [c[RECORD_KEY_CONFIGS][k] for k in (Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2)]
        for n, c in ok.items()
    }
    active = set(ok)
    if not enough(active, "setup"):
        return result
    # Stage 1: share keys -> encrypted shares, forwarded to their destinations
    contents = {
        n: _stage(Stage.SHARE_KEYS, **{str(m): public[m] for m in neighbours[n] & active})
        for n in active
    }
    ok, failed = _exchange(grid, types, contents, p.timeout)
    result.failures.update(failed)
    shared = set(ok)
    forward: dict[int, tuple[list[int], list[bytes]]] = {n: ([], []) for n in shared}
    for src, content in ok.items():
        cfg = content[RECORD_KEY_CONFIGS]
        for dst, ct in zip(cfg[Key.DESTINATION_LIST], cfg[Key.CIPHERTEXT_LIST], strict=True):
            if dst in forward:
                forward[dst][0].append(src)
                forward[dst][1].append(ct)
    if not enough(shared, "share keys"):
        return result
    # Stage 2: the train message itself; each centre trains and replies a masked vector
    contents = {}
    for n in shared:
        content = RecordDict(dict(train[n].items()))
        content[RECORD_KEY_CONFIGS] = ConfigRecord(
            {
                Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                Key.SOURCE_LIST: forward[n][0],
                Key.CIPHERTEXT_LIST: forward[n][1],
                MODE_KEY: mode,
                WEIGHTING_KEY: p.weighting,
            }
        )
        contents[n] = content
    ok, failed = _exchange(grid, types, contents, p.timeout)
    result.failures.update(failed)
    masked, order = None, None
    for n, content in ok.items():
        record = content.get(MASKED_RECORD)
        if not isinstance(record, ArrayRecord) or FACTOR_KEY not in record:
            result.failures[n] = "reply without a masked vector (is secagg_mod installed?)"
            continue
        names = [FACTOR_KEY] + sorted(k for k in record if k != FACTOR_KEY)  # the centre's order
        order = order or names
        if names != order:
            result.failures[n] = "masked vector with other keys than the other centres'"
            continue
        vec = [record[k].numpy().astype(np.int64) for k in order]
        masked = vec if masked is None else parameters_addition(masked, vec)
        result.replies[n] = RecordDict({k: v for k, v in content.items() if k != MASKED_RECORD})
    active = set(result.replies)
    result.dropped = sorted(shared - active)
    if masked is None or not enough(active, "collect masked vectors"):
        result.reason = result.reason or "no masked vector arrived"
        return result
    masked = parameters_mod(masked, p.modulus_range)
    # Stage 3: unmask -> seed shares of live centres, key shares of dropped ones
    contents = {
        n: _stage(
            Stage.UNMASK,
            **{
                Key.ACTIVE_NODE_ID_LIST: sorted(neighbours[n] & active),
                Key.DEAD_NODE_ID_LIST: sorted(neighbours[n] & set(result.dropped)),
            },
        )
        for n in active
    }
    ok, failed = _exchange(grid, types, contents, p.timeout)
    result.failures.update(failed)
    collected: dict[int, list[bytes]] = {n: [] for n in shared}
    for content in ok.values():
        cfg = content[RECORD_KEY_CONFIGS]
        for owner, share in zip(cfg[Key.NODE_ID_LIST], cfg[Key.SHARE_LIST], strict=True):
            if owner in collected:
                collected[owner].append(share)
    shapes = [a.shape for a in masked]
    for n, shares in collected.items():
        if len(shares) < threshold:
            result.reason = f"unmask: {len(shares)} shares of a centre's secret (need {threshold})"
            return result
        secret = combine_shares(shares)
        if n in active:  # remove its private mask
            masked = parameters_subtraction(
                masked, pseudo_rand_gen(secret, p.modulus_range, shapes)
            )
            continue
        sk1 = bytes_to_private_key(secret)  # dropped: cancel its pairwise masks with the living
        for other in sorted(neighbours[n] & active):
            key = generate_shared_key(sk1, bytes_to_public_key(public[other][0]))
            mask = pseudo_rand_gen(key, p.modulus_range, shapes)
            masked = (parameters_addition if n > other else parameters_subtraction)(masked, mask)
    q_total, vector = factor_extract(parameters_mod(masked, p.modulus_range))
    if q_total <= 0:
        result.reason = "unmask: total weight is zero"
        return result
    average = dequantize(vector, p.clipping_range, p.quantization_range)
    offset = -(len(active) - 1) * p.clipping_range
    average = [(v + offset) * (p.quantization_range / q_total) for v in average]
    result.total_weight = float(q_total) / p.quantization_range * max_weight
    result.arrays = _rebuild(order[1:], average, sent)
    return result


def _rebuild(keys: list[str], average: list[np.ndarray], sent: ArrayRecord | None) -> ArrayRecord:
    """The averaged model: sent + average update (delta mode; integer buffers kept as sent)."""
    values = dict(zip(keys, average, strict=True))
    if sent is None:
        return ArrayRecord({k: Array(v.astype(np.float32)) for k, v in values.items()})
    out = {}
    for k, arr in sent.items():
        base = arr.numpy()
        out[k] = Array((base + values[k]).astype(base.dtype) if k in values else base)
    return ArrayRecord(out)


# ====================================================================== centre side
def centre_weight(metrics: Mapping[str, Any], weighting: str, *, centre: str = "?") -> float:
    """A train reply's weight under ``weighting``: 1 for ``uniform``, else the centre's own
    count (:data:`COUNT_FIELDS`) from its reply ``metrics``; ConfigError when it sent none."""
    if weighting == "uniform":
        return 1.0
    if weighting not in COUNT_FIELDS:
        raise ConfigError(f"weighting {weighting!r}: valid are {', '.join(WEIGHTINGS)}")
    key = TrainMetrics.key(COUNT_FIELDS[weighting])
    value = metrics.get(key)
    if value is None or float(value) < 0:
        raise ConfigError(
            f"weighting: {weighting}: centre {centre!r}'s train reply has no {key!r} count "
            f"(got {value!r}); this method's round cannot be weighted by {weighting}"
        )
    return float(value)


def _weight(reply: RecordDict, weighting: str) -> float:
    if weighting not in COUNT_FIELDS:  # uniform (an unknown name was refused by SecAggParams)
        return 1.0
    key = TrainMetrics.key(COUNT_FIELDS[weighting])
    for record in reply.metric_records.values():
        if key in record:
            return centre_weight(record, weighting)
    raise SecAggError(f"the train reply has no {key!r} metric to weight the update")


def _rounding_seed(msg: Message) -> int | None:
    cfg, key = msg.content.get(CONFIG), ArmConfig.key("seed")
    if not isinstance(cfg, ConfigRecord) or key not in cfg:
        return None
    digest = hashlib.sha256(f"{cfg[key]}|secagg-rounding".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _masked_reply(
    state: SecAggPlusState, configs: ConfigRecord, msg: Message, reply: RecordDict
) -> tuple[RecordDict, dict]:
    """The handler's reply with its arrays replaced by the masked, weighted update."""
    records = [r for r in reply.values() if isinstance(r, ArrayRecord)]
    if len(records) != 1:
        raise SecAggError(
            f"secure aggregation needs one array record, the reply has {len(records)}"
        )
    local, mode = records[0], configs.pop(MODE_KEY)
    weighting = configs.pop(WEIGHTING_KEY)
    keys = _float_keys(local)
    update = [local[k].numpy().astype(np.float64) for k in keys]
    if mode == "delta":
        sent = msg.content.get(ARRAYS)
        if not isinstance(sent, ArrayRecord) or any(k not in sent for k in keys):
            raise SecAggError("delta mode without the model the update is relative to")
        update = [u - sent[k].numpy().astype(np.float64) for u, k in zip(update, keys, strict=True)]
    weight = _weight(reply, weighting)
    clipped = sum(
        int(np.sum(np.abs(u * weight / state.max_weight) > state.clipping_range)) for u in update
    )
    rng_state, seed = np.random.get_state(), _rounding_seed(msg)
    try:
        if seed is not None:  # reproducible stochastic rounding; masks stay os.urandom
            np.random.seed(seed)
        res = _collect_masked_vectors(state, configs, weight, ndarrays_to_parameters(update))
    finally:
        np.random.set_state(rng_state)
    vectors = [bytes_to_ndarray(b).astype(np.uint32) for b in res[Key.MASKED_PARAMETERS]]
    masked = {FACTOR_KEY: vectors[0].reshape(1)}
    masked.update(dict(zip(keys, vectors[1:], strict=True)))
    out = RecordDict({k: v for k, v in reply.items() if not isinstance(v, ArrayRecord)})
    out[MASKED_RECORD] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in masked.items()})
    out["secagg"] = MetricRecord({"clipped": clipped})
    return out, {k: v.shape for k, v in masked.items()}


def _check_unmask_lists(state: SecAggPlusState, configs: ConfigRecord) -> None:
    """Refuse an unmask request that would hand the server both secrets of one node.

    The centre gives a share of a node's self-mask seed if the server lists it active and of
    its pairwise key if listed dropped; both for one node unmask that node's update alone.
    Flower's ``_unmask`` takes the lists as sent, so a server listing every node in both got
    each update. The lists must be disjoint, name only neighbours whose shares this centre
    holds, each once, and never the centre itself as dropped.
    """
    active = [int(n) for n in configs[Key.ACTIVE_NODE_ID_LIST]]
    dead = [int(n) for n in configs[Key.DEAD_NODE_ID_LIST]]
    problems = []
    if both := sorted(set(active) & set(dead)):
        problems.append(f"nodes {both} listed both active and dropped")
    if state.nid in dead:
        problems.append("this centre listed as dropped")
    if unknown := sorted((set(active) | set(dead)) - set(state.rd_seed_share_dict)):
        problems.append(f"nodes {unknown} are not among its neighbours")
    if len(set(active)) != len(active) or len(set(dead)) != len(dead):
        problems.append("a node listed twice")
    if problems:
        raise SecAggError(
            "secure aggregation unmask refused: " + "; ".join(problems) + " (a server asking "
            "for both secrets of one node could unmask that node's update)"
        )


def secagg_mod(msg: Message, context: Context, call_next) -> Message:
    """Client mod: answer the SecAgg+ stages of a train message; only the collect stage reaches
    the handler, and its update leaves masked. Messages without SecAgg+ config pass through.
    """
    if not msg.has_content() or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    if RECORD_KEY_STATE not in context.state.config_records:
        context.state[RECORD_KEY_STATE] = ConfigRecord({})
    state = SecAggPlusState(**context.state.config_records[RECORD_KEY_STATE])
    configs = ConfigRecord(dict(msg.content.config_records[RECORD_KEY_CONFIGS]))
    try:
        check_stage(state.current_stage, configs)
        state.current_stage = str(configs.pop(Key.STAGE))
        extra = {k: configs.pop(k) for k in (MODE_KEY, WEIGHTING_KEY) if k in configs}
        check_configs(state.current_stage, configs)
    except (KeyError, TypeError, ValueError) as exc:
        raise SecAggError(f"secure aggregation stage refused: {exc}") from None
    peers = int(state.share_num or configs.get(Key.SHARE_NUMBER, 1))
    opaque = {RECORD_KEY_CONFIGS: _OPAQUE_BYTES_PER_PEER * max(peers, 1)}
    if state.current_stage == Stage.SETUP:
        shares, threshold = int(configs[Key.SHARE_NUMBER]), int(configs[Key.THRESHOLD])
        if not 2 * threshold > shares >= 2:
            raise SecAggError(
                f"secure aggregation setup refused: threshold {threshold} of "
                f"{shares} shares must exceed half the shares (and 2 shares at least)"
            )
        if shares > int(configs[Key.SAMPLE_NUMBER]):
            raise SecAggError(
                f"secure aggregation setup refused: {shares} shares for a round of "
                f"{configs[Key.SAMPLE_NUMBER]} centres"
            )
        state.nid = msg.metadata.dst_node_id
        content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(_setup(state, configs))})
        declare_egress(context, opaque={RECORD_KEY_CONFIGS: 2048})
    elif state.current_stage == Stage.SHARE_KEYS:
        content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(_share_keys(state, configs))})
        declare_egress(context, opaque=opaque)
    elif state.current_stage == Stage.COLLECT_MASKED_VECTORS:
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        configs.update(extra)
        content, shapes = _masked_reply(state, configs, msg, reply.content)
        declare_egress(context, shapes, copies=1)
    else:
        _check_unmask_lists(state, configs)
        content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(_unmask(state, configs))})
        declare_egress(context, opaque=opaque)
    context.state[RECORD_KEY_STATE] = ConfigRecord(state.to_dict())
    return Message(content, reply_to=msg)
