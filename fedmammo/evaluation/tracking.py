"""Optional, offline experiment tracking: TensorBoard event files and/or a local MLflow store.

A scenario's ``tracking:`` section turns it on::

    tracking:
      tensorboard: true          # <run_dir>/tensorboard/ (or {log_dir: PATH})
      mlflow: true               # sqlite:///<run_dir>/mlflow.db, artefacts in <run_dir>/mlartifacts
                                 # (or {tracking_uri: URI, experiment: NAME})

Nothing is sent anywhere: both write files in the run folder, and MLflow's telemetry is off.
Without a ``tracking`` section :class:`Tracker` does nothing, at no cost.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedmammo.config.scenario import TrackingSpec
from fedmammo.errors import ConfigError

__all__ = ["Tracker", "missing_trackers", "tracking_settings"]

logger = logging.getLogger(__name__)

_MEMBERS = {"bool", "TensorBoardSpec", "MlflowSpec"}  # pydantic names a union's members
_MLFLOW_KEY = re.compile(r"[^\w\-. /:]")
_RUN_ID_FILE = "mlflow_run_id"


def tracking_settings(resolved: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The trackers a resolved scenario turns on, ``{backend: options}`` (its ``tracking``
    block read by :class:`~fedmammo.config.scenario.TrackingSpec`, which refuses unknown
    trackers and options)."""
    try:
        spec = TrackingSpec.model_validate((resolved or {}).get("tracking") or {})
    except ValidationError as err:  # the deepest error; a union's member names left out
        first = max(err.errors(), key=lambda e: len(e["loc"]))
        where = ".".join(p for p in map(str, ("tracking", *first["loc"])) if p not in _MEMBERS)
        what = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"key {where!r}: {what}") from None
    out: dict[str, dict[str, Any]] = {}
    for name in ("tensorboard", "mlflow"):
        value = getattr(spec, name)
        if value:
            out[name] = {} if value is True else value.model_dump(exclude_none=True)
    return out


#: The package each tracker imports, and what its key says when it is not installed.
_NEEDS = {
    "tensorboard": ("tensorboard", "the tensorboard package"),
    "mlflow": ("mlflow", "MLflow"),
}


def missing_trackers(spec: TrackingSpec | None) -> list[str]:
    """One line per tracker ``spec`` turns on whose package is not installed (``--check``
    says so before a run that would stop after its data preparation)."""
    import importlib.util

    on = [name for name in _NEEDS if spec is not None and getattr(spec, name)]
    return [
        f"key 'tracking.{name}' needs {_NEEDS[name][1]}; fix: pip install 'fedmammo[tracking]'"
        for name in on
        if importlib.util.find_spec(_NEEDS[name][0]) is None
    ]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = "null" if v is None else str(v)
    return out


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x):
            out[str(k)] = x
    return out


class _TensorBoard:
    def __init__(self, run_dir: Path, options: Mapping[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # tensorboard itself missing
            raise ConfigError(
                "key 'tracking.tensorboard' needs the tensorboard package; "
                "fix: pip install 'fedmammo[tracking]'"
            ) from exc
        self.log_dir = Path(options.get("log_dir") or run_dir / "tensorboard")
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_round(self, arm: str, centre: str, rnd: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(f"{arm}/{centre}/{name}", value, global_step=rnd)

    def log_params(self, scenario: Mapping[str, Any]) -> None:
        text = yaml.safe_dump(dict(scenario), sort_keys=False)
        self.writer.add_text("scenario", "```\n" + text + "\n```", global_step=0)

    def log_artifact(self, path: Path) -> None:
        self.writer.add_text("artifacts", str(path), global_step=0)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class _MLflow:
    def __init__(self, run_dir: Path, options: Mapping[str, Any], name: str) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline, no usage pings
        with warnings.catch_warnings():
            # MLflow's SQL store uses a SQLAlchemy loader that SQLAlchemy 2.1 deprecates: not
            # ours to fix, and a default run prints no warnings
            warnings.filterwarnings("ignore", message=".*noload", category=DeprecationWarning)
            self._open(run_dir, options, name)

    def _open(self, run_dir: Path, options: Mapping[str, Any], name: str) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ConfigError(
                "key 'tracking.mlflow' needs MLflow; fix: pip install 'fedmammo[tracking]'"
            ) from exc
        self.uri = options.get("tracking_uri") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment = options.get("experiment") or name
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            artifacts = (run_dir / "mlartifacts").resolve().as_uri()
            experiment_id = self.client.create_experiment(experiment, artifact_location=artifacts)
        id_file = run_dir / _RUN_ID_FILE
        if id_file.is_file():  # a resumed run keeps logging into its MLflow run
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(
                experiment_id, run_name=run_dir.name, tags={"fedmammo.run_dir": str(run_dir)}
            )
            self.run_id = run.info.run_id
            id_file.write_text(self.run_id + "\n")

    @staticmethod
    def key(*parts: str) -> str:
        return "/".join(_MLFLOW_KEY.sub("_", p) for p in parts)

    def log_round(self, arm: str, centre: str, rnd: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(self.key(arm, centre, k), v, now, int(rnd)) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_params(self, scenario: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = _flatten(scenario)
        params = [Param(self.key(k)[:250], v[:6000]) for k, v in flat.items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        text = yaml.safe_dump(dict(scenario), sort_keys=False)
        self.client.log_text(self.run_id, text, "scenario.resolved.yaml")

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        self.client.set_terminated(self.run_id, "FINISHED")


class Tracker:
    """Per-round metrics, parameters and artefacts to the configured trackers (or nowhere)."""

    def __init__(self, backends: list[Any] | None = None) -> None:
        self._backends = list(backends or [])

    @classmethod
    def from_config(
        cls, resolved: Mapping[str, Any], run_dir: str | Path, *, name: str | None = None
    ) -> Tracker:
        """Open the trackers a resolved scenario turns on (:func:`tracking_settings`) for a
        run folder. ``name`` is the MLflow experiment (default: the scenario's name, else the
        run folder's parent name)."""
        settings = tracking_settings(resolved)
        if not settings:
            return cls()
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        name = str(name or resolved.get("name") or run_dir.resolve().parent.name or "fedmammo")
        backends: list[Any] = []
        if "tensorboard" in settings:
            backends.append(_TensorBoard(run_dir, settings["tensorboard"]))
        if "mlflow" in settings:
            backends.append(_MLflow(run_dir, settings["mlflow"], name))
        return cls(backends)

    @property
    def enabled(self) -> bool:
        """True when at least one tracker is on."""
        return bool(self._backends)

    def log_round(self, arm: str, centre: str, round: int, metrics: Mapping[str, Any]) -> None:
        """Log one round's scalar metrics of an arm at a centre (non-finite values skipped)."""
        if not self._backends:
            return
        values = _finite(metrics)
        for b in self._backends:
            b.log_round(str(arm), str(centre), int(round), values)

    def log_params(self, resolved_scenario: Mapping[str, Any]) -> None:
        """Log the resolved scenario (flattened ``a.b.c`` parameters, and as YAML text)."""
        for b in self._backends:
            b.log_params(resolved_scenario)

    def log_artifact(self, path: str | Path) -> None:
        """Attach a file (e.g. report.html) to the tracked run."""
        for b in self._backends:
            b.log_artifact(Path(path))

    def close(self) -> None:
        """Flush and close every tracker (the MLflow run is marked finished)."""
        for b in self._backends:
            try:
                b.close()
            except Exception:  # closing must not lose a finished run's results
                logger.exception("closing tracker %s failed", type(b).__name__)
        self._backends = []

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
