"""``flower-supernode`` that waits less, for the deployment tests. Flower 1.41 has an option
for neither wait:

- An idle SuperNode asks the SuperLink for a message every 3 s (a literal ``time.sleep(3)``
  in ``flwr.supernode.start_client_internal``), so each message waited 1.5 s on average
  before its node pulled it. Here it asks every :data:`IDLE_POLL` seconds.
- With ``--quick-heartbeat`` (the first argument) the node declares a 10 s heartbeat,
  Flower's shortest, instead of its fixed 30 s, so a killed node is marked offline within
  20 s, not 60 s (the SuperLink allows ``HEARTBEAT_PATIENCE`` x the declared interval). The
  interval is a module constant read where the node sends its heartbeats.

Run as ``python tests/helpers/quick_supernode.py [--quick-heartbeat] <flower-supernode
arguments>``. If Flower changes either place, the wrapper exits naming itself."""

from __future__ import annotations

import inspect
import sys
import time

import flwr.supercore.heartbeat as heartbeat
import flwr.supernode.fleet_http_connection as connection
import flwr.supernode.start_client_internal as client_loop
from flwr.common.constant import HEARTBEAT_MIN_INTERVAL
from flwr.supernode.cli import flower_supernode

IDLE_WAIT = 3  # Flower's wait between pulls when no message came
IDLE_POLL = 0.2  # this wrapper's


class _QuickIdlePolls:
    """``time`` as ``start_client_internal`` sees it: its idle wait is :data:`IDLE_POLL`."""

    def __getattr__(self, name: str):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(IDLE_POLL if seconds == IDLE_WAIT else seconds)


if __name__ == "__main__":
    if f"time.sleep({IDLE_WAIT})" not in inspect.getsource(client_loop):  # Flower changed it
        sys.exit(f"{client_loop.__name__} has no time.sleep({IDLE_WAIT}); update {__file__}")
    client_loop.time = _QuickIdlePolls()
    if sys.argv[1:2] == ["--quick-heartbeat"]:
        del sys.argv[1]
        for module in (heartbeat, connection):
            if not hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):  # Flower moved it: say so
                sys.exit(f"{module.__name__} has no HEARTBEAT_DEFAULT_INTERVAL; update {__file__}")
            module.HEARTBEAT_DEFAULT_INTERVAL = HEARTBEAT_MIN_INTERVAL
    sys.exit(flower_supernode())
