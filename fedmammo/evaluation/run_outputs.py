"""What a run writes besides results.json while it runs: report.html and the trackers.

:func:`attach_run_outputs` subscribes to a :class:`~fedmammo.evaluation.results.RunRecorder`:
every per-round record goes to the configured trackers (TensorBoard, MLflow: ``tracking:``
in the scenario), and ``report.html`` is rewritten after completed rounds and arms (at most
every ``report_every`` seconds, and never sooner than :data:`REPORT_SHARE` of the time allows:
a page that took 25 s to draw at 100 centres waits 225 s for the next, so a long study does
not spend its time on pages) and once more by :meth:`RunOutputs.close`, so an interrupted run
has a report too. A report that cannot be written is logged (one line for a full disk or a
read-only folder), never raised; why the final one failed is kept for the command that
started the run (:func:`final_report_problem`), which says so in its last line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmammo.evaluation.html_report import write_report
from fedmammo.evaluation.results import RunRecorder
from fedmammo.evaluation.tracking import Tracker

__all__ = ["REPORT_SHARE", "RunOutputs", "attach_run_outputs", "final_report_problem"]

#: The largest share of a run's wall time that rewriting the live report.html may take.
REPORT_SHARE = 0.1

log = logging.getLogger(__name__)

#: run folder (resolved) -> why its last final report.html could not be written
#: (:meth:`RunOutputs.close`; the ServerApp runs in the process of ``python -m
#: fedmammo.simulate``, Flower's Ray engine included, so the command reads it here)
_FINAL_PROBLEMS: dict[Path, str] = {}


def final_report_problem(run_dir: str | Path) -> str | None:
    """Why the last final report.html of ``run_dir`` written in this process failed (the
    error's reason), or None when it was written (or none was attempted)."""
    return _FINAL_PROBLEMS.get(Path(run_dir).resolve())


@dataclass
class RunOutputs:
    """The report writer and trackers of one run (see :func:`attach_run_outputs`)."""

    recorder: RunRecorder
    tracker: Tracker
    report_every: float = 30.0
    _last_report: float = field(default=float("-inf"), repr=False)
    _wait: float = field(default=0.0, repr=False)

    def on_event(self, event: str, records: list[dict]) -> None:
        """Recorder listener: per-round records to the trackers, the report after progress."""
        if event == "records":
            self._track(records)
        elif time.monotonic() - self._last_report >= max(self.report_every, self._wait):
            self.write_report()

    def _track(self, records: list[dict]) -> None:
        if not self.tracker.enabled:
            return
        for r in records:
            if r["round"] is None or r["value"] is None:
                continue
            name = f"{r['split']}/{r['metric']}" + (f"/{r['segment']}" if r["segment"] else "")
            self.tracker.log_round(
                f"{r['arm']}/seed{r['seed']}", r["centre"], r["round"], {name: r["value"]}
            )

    def write_report(self) -> str | None:
        """Rewrite report.html from the run folder; None when written, else why not (a
        failure is logged, never raised: the report must not cost the run its results; a
        full disk or a read-only folder in one line, anything else with its traceback)."""
        start = time.monotonic()
        problem = None
        try:
            write_report(self.recorder.run_dir)
        except OSError as exc:
            problem = exc.strerror or str(exc) or type(exc).__name__
            log.error("report.html could not be written for %s: %s", self.recorder.run_dir, problem)
        except Exception as exc:  # noqa: BLE001 - see docstring
            problem = f"{type(exc).__name__}: {exc}"
            log.exception("report.html could not be written for %s", self.recorder.run_dir)
        self._last_report = time.monotonic()
        took = self._last_report - start
        self._wait = took * (1 - REPORT_SHARE) / REPORT_SHARE
        return problem

    def close(self) -> bool:
        """The final report, attached to the trackers, which are then closed; whether the
        report was written (why not: :func:`final_report_problem`)."""
        problem = self.write_report()
        key = self.recorder.run_dir.resolve()
        report = self.recorder.run_dir / "report.html"
        if problem is None:
            _FINAL_PROBLEMS.pop(key, None)
            if report.is_file():
                self.tracker.log_artifact(report)
        else:
            _FINAL_PROBLEMS[key] = " ".join(problem.split())
        self.tracker.close()
        return problem is None


def attach_run_outputs(
    recorder: RunRecorder, resolved_scenario: Mapping[str, Any], *, report_every: float = 30.0
) -> RunOutputs:
    """Subscribe the report writer and the scenario's trackers to ``recorder``."""
    tracker = Tracker.from_config(resolved_scenario, recorder.run_dir)
    if tracker.enabled:
        tracker.log_params(resolved_scenario)
    outputs = RunOutputs(recorder, tracker, report_every=report_every)
    recorder.subscribe(outputs.on_event)
    return outputs
