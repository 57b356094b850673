"""The run's log file and a quiet console: what fedmammo says, not what its libraries chatter.

- ``run.log`` holds fedmammo's records at INFO and above, and other libraries' only from
  WARNING up (alembic's plugin lines, matplotlib's font cache and Ray's start-up stay out).
- Flower's ``run_simulation`` DEPRECATED warning is filtered: it is the only programmatic
  entry to Flower 1.41's simulation engine, which ``python -m fedmammo.simulate`` needs to
  prepare data and pass the run spec first; ``flwr run .`` is the other, supported, way in.
- Ray's accelerator FutureWarning is answered by opting into the future behaviour
  (``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0``: Ray leaves CUDA_VISIBLE_DEVICES alone when a
  centre asks for no GPU), which is what fedmammo wants anyway.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["OwnRecordsOnly", "add_run_log", "quiet_libraries"]

RAY_ACCEL_ENV = "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"


class OwnRecordsOnly(logging.Filter):
    """Pass fedmammo's records, and other loggers' records from WARNING up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("fedmammo") or record.levelno >= logging.WARNING


class _NoRunSimulationDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("DEPRECATED FEATURE" in text and "run_simulation" in text)


def add_run_log(run_dir: Path) -> logging.Handler:
    """Append the run's records to ``run_dir/run.log`` (see the module docstring)."""
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(OwnRecordsOnly())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def quiet_libraries() -> None:
    """Filter the known library warnings of a default run (module docstring says why)."""
    os.environ.setdefault(RAY_ACCEL_ENV, "0")
    flwr_logger = logging.getLogger("flwr")
    if not any(isinstance(f, _NoRunSimulationDeprecation) for f in flwr_logger.filters):
        flwr_logger.addFilter(_NoRunSimulationDeprecation())
    flwr_logger.setLevel(logging.WARNING)
