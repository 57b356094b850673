"""The egress guard: the one place that decides what may leave a centre.

Every reply of the ClientApp passes :func:`egress_mod`, which calls :func:`check_outgoing`.
Allowed: arrays whose keys and shapes match a declared model state (model or generator
weights), scalar metrics, and short configuration strings that are not file paths.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedmammo.errors import FedmammoError

__all__ = ["EgressError", "check_outgoing", "declare_egress", "egress_mod"]

MAX_STRING = 512
_REFERENCE_KEY = "egress.reference"
_PATH_RE = re.compile(
    r"(^[/~\\])|(^[A-Za-z]:[\\/])|(\.(dcm|dicom|png|jpe?g|npy|npz|csv|pt|pth|xml|xlsx|json|yaml)$)|"
    r"(/[^/\s]+/)",
    re.IGNORECASE,
)


class EgressError(FedmammoError):
    """A centre tried to send something other than weights, scalars and short strings."""


def _shape_of(value) -> tuple[int, ...]:
    return tuple(int(s) for s in value.shape)


def _check_string(where: str, value: str) -> None:
    if len(value) > MAX_STRING:
        raise EgressError(f"{where}: string of {len(value)} characters (limit {MAX_STRING})")
    if _PATH_RE.search(value):
        raise EgressError(f"{where}: looks like a file path ({value[:60]!r}); paths never leave")


def check_outgoing(content: RecordDict, model_state: Mapping[str, object] | None) -> None:
    """Raise EgressError unless ``content`` holds only declared weights, scalars, short strings.

    ``model_state`` maps each allowed array key to a tensor/array (or a shape tuple); every
    array of every ArrayRecord must match one key and its shape. None allows no arrays.
    """
    reference = {}
    for key, value in (model_state or {}).items():
        reference[key] = tuple(value) if isinstance(value, tuple | list) else _shape_of(value)
    for rec_name, record in content.items():
        if isinstance(record, ArrayRecord):
            if not reference:
                raise EgressError(f"record {rec_name!r}: arrays with no declared model; refused")
            for key, arr in record.items():
                if key not in reference:
                    raise EgressError(
                        f"record {rec_name!r}: array {key!r} is not a parameter of the declared "
                        "model; refused"
                    )
                if tuple(arr.shape) != reference[key]:
                    raise EgressError(
                        f"record {rec_name!r}: array {key!r} has shape {tuple(arr.shape)}, the "
                        f"model's is {reference[key]}; refused"
                    )
        elif isinstance(record, MetricRecord):
            for key, value in record.items():
                _check_string(f"metric key {key!r}", key)
                if isinstance(value, list) and len(value) > 16:
                    raise EgressError(
                        f"record {rec_name!r}: metric {key!r} is a list of {len(value)} values "
                        "(per-image records never leave; limit 16)"
                    )
        elif isinstance(record, ConfigRecord):
            for key, value in record.items():
                _check_string(f"config key {key!r}", key)
                values = value if isinstance(value, list) else [value]
                if len(values) > 16:
                    raise EgressError(
                        f"record {rec_name!r}: config {key!r} has {len(values)} items"
                    )
                for v in values:
                    if isinstance(v, bytes):
                        raise EgressError(
                            f"record {rec_name!r}: config {key!r} holds bytes; refused"
                        )
                    if isinstance(v, str):
                        _check_string(f"record {rec_name!r}: config {key!r}", v)
        else:  # pragma: no cover - RecordDict only holds the three kinds
            raise EgressError(f"record {rec_name!r} of type {type(record).__name__}; refused")


def declare_egress(context: Context, model_state: Mapping[str, object]) -> None:
    """Declare the keys and shapes of the weights the current reply may carry."""
    context.state[_REFERENCE_KEY] = ConfigRecord(
        {k: list(_shape_of(v)) or [0] for k, v in model_state.items()}
    )


def _declared(context: Context) -> dict[str, tuple[int, ...]] | None:
    if _REFERENCE_KEY not in context.state:
        return None
    record = context.state[_REFERENCE_KEY]
    del context.state[_REFERENCE_KEY]
    return {k: tuple(v) if v != [0] else () for k, v in record.items()}


def egress_mod(msg: Message, context: Context, call_next) -> Message:
    """Client mod running :func:`check_outgoing` on every reply before it leaves."""
    if _REFERENCE_KEY in context.state:
        del context.state[_REFERENCE_KEY]
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    reference = _declared(context)
    if reference is None and msg.has_content():
        incoming = {}
        for record in msg.content.array_records.values():
            incoming.update({k: tuple(a.shape) for k, a in record.items()})
        reference = incoming or None
    check_outgoing(reply.content, reference)
    return reply
