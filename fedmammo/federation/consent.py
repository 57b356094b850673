"""Consent at the centre: every reply kind is checked against the profile's ``sharing`` block.

Each handler declares the consent its reply needs (``@handler(..., consent="models")``); the
client mod :func:`consent_mod` refuses the message before any work is done when the centre's
own profile (read from its disk, not from the server) does not allow it, and refuses a reply
that carries weights its handler did not declare. The table of reply kinds is
:data:`REPLY_KINDS` (docs/threat_model.md lists it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from flwr.app import Context, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from fedmammo.errors import FedmammoError
from fedmammo.federation.centre_runtime import identity_of

if TYPE_CHECKING:
    from fedmammo.config.profile import SharingSpec

__all__ = ["CONSENT_KEYS", "REPLY_KINDS", "ConsentRefusal", "consent_mod"]

#: The ``sharing`` keys a handler may name, and what each covers.
REPLY_KINDS = {
    "models": "trained model weights",
    "generators": "trained generator weights",
    "metrics": "evaluation metrics and counts",
    "audits": "membership-inference audit results",
}
CONSENT_KEYS = tuple(REPLY_KINDS)
WEIGHT_KINDS = ("models", "generators")


class ConsentRefusal(FedmammoError):
    """The centre's profile does not allow the reply the server asked for."""


def check_consent(centre: str, sharing: object, message_type: str, needed: str | None) -> None:
    """Raise ConsentRefusal when ``sharing`` (a profile's block) forbids ``needed``."""
    if needed is None:
        return
    if needed not in REPLY_KINDS:
        raise ValueError(f"{message_type}: unknown consent {needed!r}; valid: {CONSENT_KEYS}")
    if not getattr(sharing, needed):
        raise ConsentRefusal(
            f"consent refused: centre {centre!r} does not share {REPLY_KINDS[needed]} "
            f"(sharing.{needed}: false in its profile), so {message_type!r} is refused"
        )


def check_masked(
    centre: str, sharing: SharingSpec, message_type: str, needed: str | None, msg: Message
) -> None:
    """Raise ConsentRefusal when ``sharing.require_secure_aggregation`` is set and a message
    whose reply carries model weights is not a stage of a secure-aggregation round, or is an
    unmask stage that names dropped nodes.

    Dropouts are refused because a server telling different centres different dropouts can
    collect both secrets of one centre's partners: with five or more centres it unmasks one
    update (audit 9, recheck 2). Without dropouts only sums of two or more centres unmask.
    """
    if needed != "models" or not sharing.require_secure_aggregation:
        return
    if not (msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records):
        raise ConsentRefusal(
            f"consent refused: centre {centre!r} sends model weights only masked, in a "
            "secure-aggregation round of two or more centres (sharing.require_secure_"
            f"aggregation: true in its profile), and {message_type!r} asks for them in the clear; "
            "fix: run the arm with strategy.params.secure_aggregation: true and two or more "
            "centres, or drop it (`simulate SCENARIO --check` lists such arms)"
        )
    stage = msg.content.config_records[RECORD_KEY_CONFIGS]
    if stage.get(Key.STAGE) == Stage.UNMASK and stage.get(Key.DEAD_NODE_ID_LIST):
        raise ConsentRefusal(
            f"consent refused: centre {centre!r} requires secure aggregation, so it answers no "
            "unmask request that names dropped nodes (different dropouts told to different "
            "centres could unmask one centre's update); the round fails rather than go on "
            "without them"
        )


def consent_mod(
    declared: Mapping[str, str | None],
) -> Callable[[Message, Context, Callable], Message]:
    """Client mod: enforce the consent ``declared`` (message type -> sharing key) per message."""
    table = dict(declared)

    def mod(msg: Message, context: Context, call_next) -> Message:
        kind = msg.metadata.message_type
        needed = table.get(kind)
        ident = identity_of(context)
        if ident.profile is not None:  # the pooled what-if node is simulation-only
            check_consent(ident.name, ident.profile.sharing, kind, needed)
            check_masked(ident.name, ident.profile.sharing, kind, needed, msg)
        reply = call_next(msg, context)
        if not reply.has_error() and reply.content.array_records and needed not in WEIGHT_KINDS:
            raise ConsentRefusal(
                f"consent refused: {kind!r} declares no weight sharing (consent {needed!r}) "
                "but its reply carries arrays"
            )
        return reply

    return mod
