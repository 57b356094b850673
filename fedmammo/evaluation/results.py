"""The run directory's results: metric records, failures, notes, progress; written as we go.

``results.json`` holds ``metrics``, a list of records ``{arm, seed, centre, segment, split,
metric, value, ci_low, ci_high, round}`` (segment None for the whole centre, round None for
final figures), plus ``meta``, ``failures``, ``notes`` and ``progress``; ``metrics.csv`` the same
rows. It is strict JSON: a value that could not be computed (NaN, an infinity) is null.
Everything is rewritten after each round, so an interrupted run loses nothing completed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from fedmammo.files import replace_json

__all__ = ["RECORD_FIELDS", "RunRecorder"]

RECORD_FIELDS = (
    "arm",
    "seed",
    "centre",
    "segment",
    "split",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "round",
)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


class RunRecorder:
    """Collects results of a run and keeps results.json / metrics.csv up to date."""

    def __init__(self, run_dir: str | Path, *, meta: dict | None = None, resume: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.meta: dict = dict(meta or {})
        self.metrics: list[dict] = []
        self.failures: list[dict] = []
        self.notes: list[str] = []
        self.progress: dict[str, Any] = {}
        self._listeners: list[Callable[[str, list[dict]], None]] = []
        path = self.run_dir / "results.json"
        if resume and path.is_file():
            old = json.loads(path.read_text())
            self.meta = {**old.get("meta", {}), **self.meta}
            self.failures = old.get("failures", [])
            self.notes = old.get("notes", [])
            self.progress = old.get("progress", {})
            self.metrics = [r for r in old.get("metrics", []) if self._completed(r)]

    # ------------------------------------------------------------------ listeners
    def subscribe(self, listener: Callable[[str, list[dict]], None]) -> None:
        """Call ``listener(event, records)`` on ``"records"`` (new metric records, after
        :meth:`add`) and ``"progress"`` (a round or an arm completed and flushed)."""
        self._listeners.append(listener)

    def _notify(self, event: str, records: list[dict]) -> None:
        for listener in self._listeners:
            listener(event, records)

    # ------------------------------------------------------------------ progress
    @staticmethod
    def key(arm: str, seed: int) -> str:
        return f"{arm}|{seed}"

    def _completed(self, r: dict) -> bool:
        state = self.progress.get(self.key(r["arm"], r["seed"]))
        if state is None:
            return False
        if state.get("done"):
            return True
        return r.get("round") is not None and r["round"] <= state.get("round", 0)

    def last_round(self, arm: str, seed: int) -> int:
        return int(self.progress.get(self.key(arm, seed), {}).get("round", 0))

    def is_done(self, arm: str, seed: int) -> bool:
        return bool(self.progress.get(self.key(arm, seed), {}).get("done", False))

    def complete_round(self, arm: str, seed: int, rnd: int) -> None:
        state = self.progress.setdefault(self.key(arm, seed), {})
        if state.get("stopped") and not state.get("done"):
            self._retried(arm, seed, rnd, state.pop("stopped"))
        state["round"] = rnd
        self.flush()
        self._notify("progress", [])

    def stop_arm(self, arm: str, seed: int, text: str) -> None:
        """Record that an arm-seed run ended before its planned rounds (a privacy budget, too
        few centres): ``text`` ("arm A seed S: stopped ...") is kept as a note and in the run's
        progress, where the report's status reads it. A stop without the arm done is tried
        again by a resumed run: once a round of it completes, :meth:`complete_round` replaces
        both with a note that it was retried."""
        self.note(text)
        self.progress.setdefault(self.key(arm, seed), {})["stopped"] = text

    def _retried(self, arm: str, seed: int, rnd: int, text: str) -> None:
        """The stop ``text`` of an arm tried again on resume (a round of it just completed):
        its note becomes one saying so (the failures of the earlier attempt stay)."""
        if text in self.notes:
            self.notes.remove(text)
        prefix = f"arm {arm} seed {seed}: "
        earlier = str(text).removeprefix(prefix).split("; ")[0]
        again = f"retried on resume, and round {rnd} completed"
        self.note(f"{prefix}{again} (the earlier attempt {earlier})")

    def complete_arm(self, arm: str, seed: int) -> None:
        self.progress.setdefault(self.key(arm, seed), {})["done"] = True
        self.flush()
        self._notify("progress", [])

    # ------------------------------------------------------------------ records
    def add(
        self,
        records: list[dict],
        *,
        arm: str,
        seed: int,
        centre: str,
        split: str,
        round: int | None = None,
    ) -> None:
        """Add metric records (``segment, metric, value, ci_low, ci_high``) with their context."""
        start = len(self.metrics)
        for r in records:
            self.metrics.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "centre": centre,
                    "segment": r.get("segment"),
                    "split": split,
                    "metric": r["metric"],
                    "value": _clean(r.get("value")),
                    "ci_low": _clean(r.get("ci_low")),
                    "ci_high": _clean(r.get("ci_high")),
                    "round": round,
                }
            )
        self._notify("records", self.metrics[start:])

    def failure(
        self,
        *,
        arm: str,
        seed: int,
        centre: str,
        reason: str,
        round: int | None = None,
        phase: str = "",
    ) -> None:
        self.failures.append(
            {
                "arm": arm,
                "seed": seed,
                "centre": centre,
                "round": round,
                "phase": phase,
                "reason": reason,
            }
        )

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def has(self, arm: str, seed: int, metric: str, *, centre: str | None = None) -> bool:
        """Whether a ``metric`` record of ``arm`` and ``seed`` (at ``centre``, if given) was
        recorded (and kept, on a resume)."""
        return any(
            r["arm"] == arm
            and r["seed"] == seed
            and r["metric"] == metric
            and (centre is None or r["centre"] == centre)
            for r in self.metrics
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.metrics, columns=list(RECORD_FIELDS))

    def flush(self) -> None:
        """Write results.json and metrics.csv (each replaced whole)."""
        payload = {
            "meta": self.meta,
            "metrics": self.metrics,
            "failures": self.failures,
            "notes": self.notes,
            "progress": self.progress,
        }
        replace_json(self.run_dir / "results.json", payload, default=str)
        self.frame().to_csv(self.run_dir / "metrics.csv", index=False)
