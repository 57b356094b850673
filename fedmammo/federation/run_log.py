"""The run's log file and a quiet console: what fedmammo says, not what its libraries chatter.

- ``run.log`` holds fedmammo's records at INFO and above, and other libraries' only from
  WARNING up (alembic's plugin lines, matplotlib's font cache and Ray's start-up stay out).
- Flower's ``run_simulation`` DEPRECATED warning is filtered: it is the only programmatic
  entry to Flower 1.41's simulation engine, which ``python -m fedmammo.simulate`` needs to
  prepare data and pass the run spec first; ``flwr run .`` is the other, supported, way in.
- Opacus calls ``logging.basicConfig`` when imported, so every INFO record reaching the root
  logger (alembic's plugin lines among them) would print on stderr: root console handlers
  are kept at WARNING. Flower's "Manually terminating ClientAppActor" line at the end of a
  simulation (a normal shutdown) is filtered too.
- Ray's accelerator FutureWarning is answered by opting into the future behaviour
  (``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0``: Ray leaves CUDA_VISIBLE_DEVICES alone when a
  centre asks for no GPU), which is what fedmammo wants anyway.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["SHOWN", "OwnRecordsOnly", "add_run_log", "quiet_libraries", "run_log"]

#: ``extra=`` of a record whose line fedmammo's console prints itself (in colour): run.log
#: keeps it, a root console handler does not print it a second time.
SHOWN = {"shown_on_console": True}

RAY_ACCEL_ENV = "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"


class OwnRecordsOnly(logging.Filter):
    """Pass fedmammo's records, and other loggers' records from WARNING up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("fedmammo") or record.levelno >= logging.WARNING


class _KnownFlowerNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "DEPRECATED FEATURE" in text and "run_simulation" in text:
            return False
        return "Manually terminating ClientAppActor" not in text


class _NotShownTwice(logging.Filter):
    """On a root console handler: the records fedmammo's console printed already (``SHOWN``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "shown_on_console", False)


class _NotFlowers(logging.Filter):
    """On a root console handler: Flower's records, which Flower's own console handler has
    printed already (without this every Flower warning showed twice on stderr)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("flwr")


def add_run_log(run_dir: Path) -> logging.Handler:
    """Append the run's records to ``run_dir/run.log`` (see the module docstring)."""
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(OwnRecordsOnly())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[logging.Handler]:
    """:func:`add_run_log` for the length of the block (its handler: a record for run.log
    alone), then the root logger as it was (a process that runs several scenarios, in
    process, writes each run's records to its own run.log only)."""
    root = logging.getLogger()
    level = root.level
    handler = add_run_log(run_dir)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(level)


def quiet_libraries(*, flower_info: bool = True) -> None:
    """Filter the known library warnings of a default run (module docstring says why).

    ``flower_info=False`` also hides Flower's INFO lines (the simulation CLI prints its own);
    the apps keep them, so ``flwr log`` shows the ServerApp's progress in deployment.
    """
    os.environ.setdefault(RAY_ACCEL_ENV, "0")
    # Importing Opacus calls logging.basicConfig (a root stderr handler): make that handler
    # now, as Opacus would, so the loop below tames it and Opacus's later call (DP centres
    # import it on first use) finds one and adds nothing; no need to load Opacus here.
    logging.basicConfig(
        format="%(asctime)s:%(levelname)s:%(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        stream=sys.stderr,
    )

    flwr_logger = logging.getLogger("flwr")
    flower_prints = any(isinstance(h, logging.StreamHandler) for h in flwr_logger.handlers)
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:  # a console handler, not a file
            handler.setLevel(logging.WARNING)
            if not any(isinstance(f, _NotShownTwice) for f in handler.filters):
                handler.addFilter(_NotShownTwice())
            if flower_prints and not any(isinstance(f, _NotFlowers) for f in handler.filters):
                handler.addFilter(_NotFlowers())
    for handler in flwr_logger.handlers:  # colour codes only where a terminal shows them
        if hasattr(handler, "colored") and hasattr(handler, "stream"):
            handler.colored = bool(getattr(handler.stream, "isatty", lambda: False)())
    if not any(isinstance(f, _KnownFlowerNoise) for f in flwr_logger.filters):
        flwr_logger.addFilter(_KnownFlowerNoise())
        for handler in flwr_logger.handlers:
            handler.addFilter(_KnownFlowerNoise())
    if not flower_info:
        flwr_logger.setLevel(logging.WARNING)
