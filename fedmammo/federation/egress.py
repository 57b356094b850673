"""The egress guard: the one place that decides what may leave a centre.

Every reply of the ClientApp passes :func:`egress_mod`, error replies included. It checks the
reply's *content*, not what it claims:

- arrays: the bytes behind every Array are parsed (``.npy`` header) and must hold exactly
  ``dtype x shape``; keys and shapes must match a model state the centre's code declared
  (:func:`declare_egress`), or, without a declaration, the arrays the server sent; arrays that
  look like images (2-D/3-D, two sides of :data:`MIN_IMAGE_SIDE` or more; 4-D stacks) are
  refused unless they are a declared model tensor;
- caps on records, keys and total bytes per reply (derived from the declared model, lowered or
  raised per centre with the node-config keys ``egress-max-records``, ``egress-max-keys``,
  ``egress-max-bytes``);
- strings: file paths refused, quoted values scrubbed; bytes only in a record the centre's
  code declared opaque (the secure-aggregation keys and shares);
- errors: :func:`egress_error_mod` (the outermost mod) turns any exception, a refusal
  included, into an error reply ``"<code>: <Exception>: <scrubbed message>"``
  (:func:`error_reply`) and counts refusals in the node's state; replies after a refusal carry
  the count (record ``egress``, metric ``egress-refusals``). ClientApp mods:
  ``[egress_error_mod, egress_mod, <other mods>]``.
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)

from fedmammo.errors import FedmammoError

__all__ = [
    "REFUSALS_METRIC",
    "EgressError",
    "EgressLimits",
    "check_outgoing",
    "declare_egress",
    "egress_error_mod",
    "egress_mod",
    "error_reply",
    "refusal_count",
    "scrub",
]

log = logging.getLogger(__name__)

MAX_STRING = 512
MAX_LIST = 16
MIN_IMAGE_SIDE = 16
DEFAULT_COPIES = 64  # model copies per reply unless the handler declares fewer (GAN snapshots)
OVERHEAD_BYTES = 1 << 20  # metrics, config strings, opaque protocol bytes
MAX_SCALAR_KEYS = 4096
ERROR_CODE = 2  # Flower's ErrorCode.CLIENT_APP_RAISED_EXCEPTION
REFUSALS_METRIC = "egress-refusals"
REFUSALS_RECORD = "egress"
_REFERENCE_KEY = "egress.reference"
_DECLARED_KEY = "egress.declared"
_COUNTER_KEY = "egress.refusals"
_PATH_RE = re.compile(
    r"(^[/~\\])|(^[A-Za-z]:[\\/])|(\.(dcm|dicom|png|jpe?g|npy|npz|csv|pt|pth|xml|xlsx|json|yaml)$)|"
    r"(/[^/\s]+/)",
    re.IGNORECASE,
)
_EXT = r"(?:dcm|dicom|png|jpe?g|tiff?|npy|npz|csv|pt|pth|xml|xlsx|json|ya?ml|txt|log|db|pkl)"
_SCRUB_PATH = re.compile(
    r"(?:[A-Za-z]:[\\/]|[~.]{0,2}[/\\])[^\s'\",;:()\[\]<>]+"  # absolute, home or ./ paths
    r"|[^\s'\",;:()\[\]<>/\\]+(?:[/\\][^\s'\",;:()\[\]<>/\\]+)+"  # a/b/c
    rf"|[^\s'\",;:()\[\]<>]+\.{_EXT}\b",  # file names
    re.IGNORECASE,
)
#: fedmammo's own documentation pages (``docs/<page>.md``), named in fixes ("fix: ...
#: (docs/datasets.md)"): kept in a scrubbed message, any other path is not
DOCS_PAGES = (
    "architecture",
    "contrastive_dg",
    "datasets",
    "deployment",
    "first_hour",
    "mtl_finetune",
    "privacy_budget",
    "report",
    "reproduction",
    "reuse",
    "threat_model",
)
_DOCS_PAGE = re.compile(rf"docs/(?:{'|'.join(DOCS_PAGES)})\.md")
_SCRUB_QUOTED = re.compile(r"'[^'\n]{0,400}'|\"[^\"\n]{0,400}\"")
_CODES = {  # exception class name (anywhere in its MRO) -> short code
    "EgressError": "egress",
    "BudgetRefusal": "privacy",
    "BudgetExceeded": "privacy",
    "DPUnsupportedError": "privacy",
    "PrivacyUsageError": "privacy",
    "InjectedFault": "fault",
    "ConfigError": "config",
    "DataError": "data",
    "ConsentRefusal": "consent",
}


class EgressError(FedmammoError):
    """A centre tried to send something other than weights, scalars and short strings."""


@dataclass(frozen=True)
class EgressLimits:
    """Caps per reply; None derives the cap from the declared model (see module doc)."""

    max_records: int | None = None
    max_keys: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True)
class _Spec:
    itemsize: int
    shape: tuple[int, ...]


def scrub(text: str, *, limit: int = 300, keep: tuple[str, ...] = ()) -> str:
    """``text`` without file paths and quoted values, on one line, at most ``limit`` chars;
    quoted values in ``keep`` (names the receiver knows, such as the centre's) stay."""

    def value(match: re.Match[str]) -> str:
        return match.group(0) if match.group(0)[1:-1] in keep else "'<value>'"

    out = _SCRUB_QUOTED.sub(value, str(text))
    out = _SCRUB_PATH.sub(lambda m: m[0] if _DOCS_PAGE.fullmatch(m[0]) else "<path>", out)
    out = " ".join(out.split())
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _code(exc: BaseException) -> str:
    for cls in type(exc).__mro__:
        if cls.__name__ in _CODES:
            return _CODES[cls.__name__]
    return "error"


def error_reply(
    msg: Message, exc: BaseException, *, centre: str | None = None, deployed: bool = False
) -> Message:
    """The error reply for ``exc``: Flower error code 2, reason ``"<code>: <scrubbed>"``.

    ``centre``: the name the server knows the centre by (kept when quoted); at a real site
    (``deployed``) the reason then says that the whole message is in that site's log. The
    server's own words stay too: the message type, and in a MessageError (a message of the
    wrong form) the keys of its config records. Other errors keep no key: a key equal to one
    of the centre's values would otherwise confirm a guess.
    """
    keep = (centre,) if centre else ()
    keep += (msg.metadata.message_type,)
    if any(cls.__name__ == "MessageError" for cls in type(exc).__mro__):
        keep += _config_keys(msg)
    whole = scrub(str(exc), keep=keep, limit=10**9)
    shown = scrub(str(exc), keep=keep)
    reason = f"{_code(exc)}: {type(exc).__name__}: {shown}"
    hidden = whole != " ".join(str(exc).split())  # something scrubbed, not only cut short
    if cause := _likely_cause(exc):
        reason = f"{reason.rstrip()} {cause}"
    if deployed and centre and (hidden or shown != whole):
        what = "paths and quoted values hidden" if hidden else "cut short"
        reason += f" ({what}: the whole message is in {centre}'s log)"
    return Message(Error(code=ERROR_CODE, reason=reason), reply_to=msg)


#: What PyTorch and oneDNN say when memory runs out (a process's address-space limit, say).
_OUT_OF_MEMORY = ("could not create a primitive", "DefaultCPUAllocator: can't allocate")
#: What torch.save says when its file cannot be written (a full disk: no errno of its own).
_WRITE_FAILED = ("basic_ios::clear", "PytorchStreamWriter failed writing", "file write failed")


def _likely_cause(exc: BaseException) -> str:
    """``(out of memory?)`` or ``(a file could not be written: ...)`` for errors whose own
    words do not say so; "" for the rest."""
    text = str(exc)
    if isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and any(t in text for t in _OUT_OF_MEMORY)
    ):
        return "(out of memory?)"
    if isinstance(exc, RuntimeError) and any(t in text for t in _WRITE_FAILED):
        return "(a file could not be written: is the disk full, or the folder read-only?)"
    return ""


def _config_keys(msg: Message) -> tuple[str, ...]:
    """The keys of ``msg``'s config records (the server's words, safe to echo back)."""
    try:
        return tuple(k for rec in msg.content.config_records.values() for k in rec)
    except Exception:  # noqa: BLE001 - an error reply must not fail on a malformed message
        return ()


def _centre_name(context: Context) -> str | None:
    """The centre a node serves: its node config at a real site, the run spec's node order
    in simulation; None if neither says (the name is then scrubbed like any value)."""
    node = context.node_config
    if "centre" in node:
        return str(node["centre"])
    try:
        from fedmammo.federation.runspec import load_runspec

        return load_runspec(context.run_config).node_order[int(node["partition-id"])]
    except Exception:  # noqa: BLE001 - a name for an error message, never a second failure
        return None


def _spec_of(value) -> _Spec:
    if isinstance(value, _Spec):
        return value
    if isinstance(value, tuple | list):
        return _Spec(8, tuple(int(s) for s in value))
    itemsize = getattr(getattr(value, "dtype", None), "itemsize", 8)
    return _Spec(int(itemsize), tuple(int(s) for s in value.shape))


def _payload(where: str, arr: Array) -> tuple[np.dtype, int]:
    """The dtype and real payload length of ``arr`` after checking its header against it."""
    if arr.stype != "numpy.ndarray":
        raise EgressError(f"{where}: serialisation {arr.stype!r} cannot be checked; refused")
    buf = io.BytesIO(arr.data)
    try:
        version = np.lib.format.read_magic(buf)
        reader = {(1, 0): np.lib.format.read_array_header_1_0}.get(
            version, np.lib.format.read_array_header_2_0
        )
        shape, _fortran, dtype = reader(buf)
    except Exception as exc:  # noqa: BLE001 - any malformed header is a refusal
        raise EgressError(f"{where}: unreadable array bytes ({exc}); refused") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise EgressError(f"{where}: dtype {dtype} is not numeric; refused")
    if tuple(shape) != tuple(arr.shape) or np.dtype(arr.dtype) != dtype:
        raise EgressError(
            f"{where}: declares {arr.dtype}{tuple(arr.shape)} but its bytes hold "
            f"{dtype}{tuple(shape)}; refused"
        )
    expected = dtype.itemsize * math.prod(shape)
    actual = len(arr.data) - buf.tell()
    if actual != expected:
        raise EgressError(
            f"{where}: {actual} bytes for {dtype}{tuple(shape)} (expected {expected}); refused"
        )
    return dtype, actual


def _image_like(shape: tuple[int, ...]) -> bool:
    if len(shape) in (2, 3):
        return sorted(shape)[-2] >= MIN_IMAGE_SIDE
    if len(shape) == 4:
        return min(shape[-2:]) >= MIN_IMAGE_SIDE
    return False


def _check_string(where: str, value: str) -> None:
    if len(value) > MAX_STRING:
        raise EgressError(f"{where}: string of {len(value)} characters (limit {MAX_STRING})")
    if _PATH_RE.search(value):
        raise EgressError(f"{where}: looks like a file path ({value[:60]!r}); paths never leave")


def _caps(
    reference: Mapping[str, _Spec], copies: int, limits: EgressLimits | None
) -> tuple[int, int, int]:
    limits = limits or EgressLimits()
    model_bytes = sum(s.itemsize * math.prod(s.shape) for s in reference.values())
    max_records = limits.max_records or copies + 16
    max_keys = limits.max_keys or len(reference) * copies + MAX_SCALAR_KEYS
    max_bytes = limits.max_bytes or model_bytes * copies + OVERHEAD_BYTES
    return max_records, max_keys, max_bytes


def check_outgoing(
    content: RecordDict,
    model_state: Mapping[str, object] | None,
    *,
    copies: int | None = None,
    opaque: Mapping[str, int] | None = None,
    limits: EgressLimits | None = None,
    declared: bool = True,
) -> RecordDict:
    """Raise EgressError unless ``content`` holds only declared weights, scalars, short strings.

    ``model_state`` maps each allowed array key to a tensor/array (or a shape tuple); every
    array must match one key and its shape, hold exactly dtype x shape bytes and be no wider
    than the declared dtype. None allows no arrays. ``copies``: ArrayRecords the reply may hold
    (default :data:`DEFAULT_COPIES`); ``opaque``: ConfigRecord name -> bytes allowed in it;
    ``declared=False`` (a reference taken from the server's message) refuses image-like arrays
    even with a matching shape. Returns the content with quoted values of strings scrubbed.
    """
    reference = {k: _spec_of(v) for k, v in (model_state or {}).items()}
    copies = DEFAULT_COPIES if copies is None else int(copies)
    opaque = dict(opaque or {})
    max_records, max_keys, max_bytes = _caps(reference, copies, limits)
    if len(content) > max_records:
        raise EgressError(f"{len(content)} records in one reply (limit {max_records}); refused")
    n_keys = sum(len(record) for record in content.values())
    if n_keys > max_keys:
        raise EgressError(f"{n_keys} keys in one reply (limit {max_keys}); refused")
    n_array_records = sum(isinstance(r, ArrayRecord) for r in content.values())
    if reference and n_array_records > copies:
        raise EgressError(
            f"{n_array_records} array records in one reply (declared {copies}); refused"
        )
    total, out = 0, RecordDict()
    for rec_name, record in content.items():
        _check_string(f"record name {rec_name[:60]!r}", rec_name)
        if isinstance(record, ArrayRecord):
            if not reference:
                raise EgressError(f"record {rec_name!r}: arrays with no declared model; refused")
            for key, arr in record.items():
                where = f"record {rec_name!r}: array {key!r}"
                if key not in reference:
                    raise EgressError(f"{where} is not a parameter of the declared model; refused")
                dtype, nbytes = _payload(where, arr)
                shape, spec = tuple(int(s) for s in arr.shape), reference[key]
                if shape != spec.shape:
                    kind = " (image-like)" if _image_like(shape) else ""
                    raise EgressError(
                        f"{where} has shape {shape}{kind}, the model's is {spec.shape}; refused"
                    )
                if not declared and _image_like(shape):
                    raise EgressError(
                        f"{where}: image-like {shape} and not a tensor of a model the centre "
                        "declared; refused"
                    )
                if dtype.itemsize > spec.itemsize:
                    raise EgressError(
                        f"{where}: dtype {dtype} is wider than the model's "
                        f"({spec.itemsize} bytes); refused"
                    )
                total += nbytes
            out[rec_name] = record
        elif isinstance(record, MetricRecord):
            for key, value in record.items():
                _check_string(f"metric key {key[:60]!r}", key)
                if isinstance(value, list) and len(value) > MAX_LIST:
                    raise EgressError(
                        f"record {rec_name!r}: metric {key!r} is a list of {len(value)} values "
                        f"(per-image records never leave; limit {MAX_LIST})"
                    )
                total += len(key) + 8 * (len(value) if isinstance(value, list) else 1)
            out[rec_name] = record
        elif isinstance(record, ConfigRecord):
            out[rec_name], used = _check_config(rec_name, record, opaque.get(rec_name))
            total += used
        else:  # pragma: no cover - RecordDict only holds the three kinds
            raise EgressError(f"record {rec_name!r} of type {type(record).__name__}; refused")
        if total > max_bytes:
            raise EgressError(f"reply exceeds {max_bytes} bytes (at record {rec_name!r}); refused")
    return out


def _check_config(name: str, record: ConfigRecord, opaque: int | None) -> tuple[ConfigRecord, int]:
    """A ConfigRecord with quoted values scrubbed, and its size; bytes only when ``opaque``."""
    clean, used, opaque_used = ConfigRecord(), 0, 0
    for key, value in record.items():
        _check_string(f"config key {key[:60]!r}", key)
        values = value if isinstance(value, list) else [value]
        if len(values) > MAX_LIST and opaque is None:
            raise EgressError(f"record {name!r}: config {key!r} has {len(values)} items")
        new = []
        for v in values:
            if isinstance(v, bytes):
                if opaque is None:
                    raise EgressError(f"record {name!r}: config {key!r} holds bytes; refused")
                opaque_used += len(v)
            elif isinstance(v, str):
                _check_string(f"record {name!r}: config {key!r}", v)
                v = _SCRUB_QUOTED.sub("'<value>'", v)
                used += len(v)
            else:
                used += 8
            new.append(v)
        clean[key] = new if isinstance(value, list) else new[0]
    if opaque is not None and opaque_used > opaque:
        raise EgressError(f"record {name!r}: {opaque_used} opaque bytes (limit {opaque}); refused")
    return clean, used + opaque_used


def declare_egress(
    context: Context,
    model_state: Mapping[str, object] | None = None,
    *,
    copies: int | None = None,
    opaque: Mapping[str, int] | None = None,
) -> None:
    """Declare what the current reply may carry: the weights of ``model_state`` (at most
    ``copies`` ArrayRecords of them) and ``opaque`` ConfigRecords of bytes (name -> max bytes).
    """
    specs = {k: _spec_of(v) for k, v in (model_state or {}).items()}
    context.state[_REFERENCE_KEY] = ConfigRecord(
        {k: [s.itemsize, *s.shape] for k, s in specs.items()}
    )
    declared = ConfigRecord({"copies": DEFAULT_COPIES if copies is None else int(copies)})
    for name, limit in (opaque or {}).items():
        declared[f"opaque:{name}"] = int(limit)
    context.state[_DECLARED_KEY] = declared


def _take_declaration(context: Context) -> tuple[dict[str, _Spec] | None, int | None, dict]:
    if _REFERENCE_KEY not in context.state:
        return None, None, {}
    record = context.state[_REFERENCE_KEY]
    declared = context.state.get(_DECLARED_KEY, ConfigRecord({"copies": DEFAULT_COPIES}))
    _forget_declaration(context)
    reference = {k: _Spec(int(v[0]), tuple(int(s) for s in v[1:])) for k, v in record.items()}
    opaque = {k[7:]: int(v) for k, v in declared.items() if k.startswith("opaque:")}
    return reference, int(declared["copies"]), opaque


def _forget_declaration(context: Context) -> None:
    for key in (_REFERENCE_KEY, _DECLARED_KEY):
        if key in context.state:
            del context.state[key]


def refusal_count(context: Context) -> int:
    """How many replies this centre's egress guard has refused so far."""
    if _COUNTER_KEY not in context.state:
        return 0
    return int(context.state[_COUNTER_KEY][REFUSALS_METRIC])


def _node_limits(context: Context) -> EgressLimits:
    cfg = context.node_config
    return EgressLimits(
        max_records=int(cfg["egress-max-records"]) if "egress-max-records" in cfg else None,
        max_keys=int(cfg["egress-max-keys"]) if "egress-max-keys" in cfg else None,
        max_bytes=int(cfg["egress-max-bytes"]) if "egress-max-bytes" in cfg else None,
    )


def _incoming_reference(msg: Message) -> dict[str, _Spec] | None:
    if not msg.has_content():
        return None
    incoming = {}
    for record in msg.content.array_records.values():
        for k, a in record.items():
            incoming[k] = _Spec(np.dtype(a.dtype).itemsize, tuple(int(s) for s in a.shape))
    return incoming or None


def egress_mod(msg: Message, context: Context, call_next) -> Message:
    """Client mod: every successful reply passes :func:`check_outgoing` (EgressError if not);
    error replies of inner mods leave with a scrubbed reason.

    Run it inside :func:`egress_error_mod`, which turns every exception, a refusal included,
    into a scrubbed error reply and counts refusals.
    """
    _forget_declaration(context)
    try:
        reply = call_next(msg, context)
    finally:
        reference, copies, opaque = _take_declaration(context)
    if reply.has_error():
        reason = scrub(reply.error.reason or "error")
        return Message(Error(code=reply.error.code, reason=reason), reply_to=msg)
    declared = reference is not None
    if reference is None:
        reference = _incoming_reference(msg)
        copies = len(msg.content.array_records) if reference else 0
    content = check_outgoing(
        reply.content,
        reference,
        copies=copies,
        opaque=opaque,
        limits=_node_limits(context),
        declared=declared,
    )
    if refusal_count(context):
        content[REFUSALS_RECORD] = MetricRecord({REFUSALS_METRIC: refusal_count(context)})
    return Message(content, reply_to=msg)


def egress_error_mod(msg: Message, context: Context, call_next) -> Message:
    """Client mod, first (outermost) in the ClientApp: any exception of the mods and handler
    inside it leaves as :func:`error_reply` (code + scrubbed message); egress refusals are
    counted in the node's state (reported by :func:`egress_mod` in later replies).
    """
    try:
        return call_next(msg, context)
    except Exception as exc:  # noqa: BLE001 - every failure leaves as a scrubbed error reply
        if isinstance(exc, EgressError):
            count = refusal_count(context) + 1
            context.state[_COUNTER_KEY] = MetricRecord({REFUSALS_METRIC: count})
            log.warning("egress refused a %s reply: %s", msg.metadata.message_type, exc)
        elif isinstance(exc, FedmammoError):  # a refusal or bad input its message names
            log.warning("%s failed: %s", msg.metadata.message_type, exc)
        else:
            log.warning("%s failed: %s", msg.metadata.message_type, exc, exc_info=True)
        deployed = "centre" in context.node_config
        return error_reply(msg, exc, centre=_centre_name(context), deployed=deployed)
