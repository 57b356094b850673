"""Flower's telemetry and update check off unless the user asks: nothing calls home by default.

Flower sends usage events to telemetry.flower.ai unless ``FLWR_TELEMETRY_ENABLED=0`` and asks
PyPI for a newer release unless ``FLWR_DISABLE_UPDATE_CHECK=1``. :func:`quiet_flower` sets
both, in ``os.environ`` (inherited by every Flower process fedmammo starts: Ray workers,
SuperLink, SuperNodes, ClientApp and ServerApp processes) or in an ``env`` dict meant for a
subprocess. ``FEDMAMMO_TELEMETRY=1`` leaves Flower's own settings alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

__all__ = ["SWITCH", "quiet_flower"]

SWITCH = "FEDMAMMO_TELEMETRY"
_SETTINGS = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def quiet_flower(env: MutableMapping[str, str] | None = None) -> bool:
    """Turn Flower's telemetry and update check off unless ``FEDMAMMO_TELEMETRY=1``.

    ``env``: a subprocess environment to edit (default ``os.environ``, which also switches off
    telemetry in this process if Flower is already imported). Returns True when telemetry
    was left on at the user's request.
    """
    target = os.environ if env is None else env
    if target.get(SWITCH, os.environ.get(SWITCH)) == "1":
        return True
    target.update(_SETTINGS)
    loaded = sys.modules.get("flwr.supercore.telemetry")
    if env is None and loaded is not None:  # Flower reads the variable once, at import
        loaded.FLWR_TELEMETRY_ENABLED = "0"
    return False
