"""The run directory's results: metric records, failures, notes, progress; written as we go.

``results.json`` holds ``metrics``, a list of records ``{arm, seed, centre, segment, split,
metric, value, ci_low, ci_high, round}`` (segment None for the whole centre, round None for
final figures), plus ``meta``, ``failures``, ``notes`` and ``progress``; ``metrics.csv`` the same
rows. It is strict JSON: a value that could not be computed (NaN, an infinity) is null.
Everything is rewritten after each round, so an interrupted run loses nothing completed.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from fedmammo.errors import DataError
from fedmammo.files import replace_json

log = logging.getLogger(__name__)

__all__ = ["CODE_KEYS", "RECORD_FIELDS", "RunRecorder", "results_problem"]

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


#: results.json's parts and the JSON type each must have.
_PARTS = {"meta": dict, "metrics": list, "failures": list, "notes": list, "progress": dict}
#: The provenance keys a resumed run compares with the code its folder was started with.
CODE_KEYS = ("git_commit", "git_dirty")


def results_problem(results: Any) -> str | None:
    """What makes a parsed results.json unusable (a phrase: its part and the type found), or
    None: the parts of the wrong JSON type, a metric record not an object, a value not a
    number (a hand edit; fedmammo writes null for a missing value)."""
    if not isinstance(results, dict):
        return f"expected an object, got {type(results).__name__}"
    for key, kind in _PARTS.items():
        if key in results and not isinstance(results[key], kind):
            wanted = "an object" if kind is dict else "a list"
            return f"'{key}' is {type(results[key]).__name__}, not {wanted}"
    for i, record in enumerate(results.get("metrics", [])):
        if not isinstance(record, dict):
            return f"metrics[{i}] is {type(record).__name__}, not an object"
        value = record.get("value")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"metrics[{i}] ('{record.get('metric')}'): value {value!r} is not a number"
    return None


def _code_history(old: dict, new: dict) -> list[dict]:
    """Each code a run folder was run with (commit, uncommitted changes), first first: the
    old history (or the old provenance), and the new one if it differs."""
    history = old.get("code_history") or [{k: old.get(k) for k in CODE_KEYS}]
    now = {k: new.get(k) for k in CODE_KEYS}
    if now != history[-1] and any(v is not None for v in now.values()):
        history = [*history, now]
    return history


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
            if problem := results_problem(old):
                raise DataError(f"{path}: damaged ({problem}); restore it or start a new run")
            old_meta = old.get("meta", {})
            history = _code_history(old_meta, self.meta)
            if len(history) > len(old_meta.get("code_history") or [None]):
                log.warning(
                    "%s: resumed on other code than it ran on (%s); its report lists each",
                    self.run_dir,
                    ", then ".join(str(c["git_commit"])[:12] for c in history),
                )
            self.meta = {**old_meta, **self.meta}
            if old_meta.get("started") and self.meta.get("started"):  # first start kept
                self.meta["resumed"] = [*old_meta.get("resumed", []), self.meta["started"]]
                self.meta["started"] = old_meta["started"]
            if len(history) > 1:
                self.meta["code_history"] = history
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
