"""Write a run's report.html, or a comparison page of several runs or a sweep.

python -m fedmammo.report RUN_DIR [RUN_DIR ...] [--out FILE] [--metric auc ...]

One run folder: RUN_DIR/report.html. One sweep folder (points/ inside): each point's
report.html and SWEEP/report.html comparing the points. Several folders: one comparison page
(--out, default ./comparison.html), one column per run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from fedmammo.errors import FedmammoError

__all__ = ["main"]


def _parser(prog: str = "python -m fedmammo.report") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Write report.html of a run folder, or a comparison page of several runs.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run or sweep folder(s)")
    p.add_argument(
        "--out",
        help="output file (default: RUN_DIR/report.html for one run or sweep folder, "
        "./comparison.html for several)",
    )
    p.add_argument(
        "--metric",
        action="append",
        dest="metrics",
        help="metric rows of the comparison page (repeatable; default auc)",
    )
    return p


def main(argv: list[str] | None = None, *, prog: str = "python -m fedmammo.report") -> int:
    """Entry point; returns the exit code (2 with a one-line error for bad input)."""
    args = _parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from fedmammo.evaluation.html_report import check_metrics, write_comparison, write_report
    from fedmammo.evaluation.run_folder import expand_run_dirs, is_sweep
    from fedmammo.sweep import redraw_privacy_utility

    dirs = [Path(d) for d in args.run_dirs]
    out_file = None if args.out is None else Path(args.out)
    metrics = tuple(args.metrics or ("auc",))
    try:
        for d in dirs:
            if not d.is_dir():
                raise FedmammoError(f"{d}: no such run folder")
        # a folder: one that exists, or a name written as one (Path drops the trailing "/")
        if out_file is not None and (out_file.is_dir() or args.out.endswith(("/", os.sep))):
            name = "report.html" if len(dirs) == 1 else "comparison.html"
            raise FedmammoError(
                f"--out {args.out}: a folder, not a file; fix: give a file name, "
                f"e.g. --out {out_file / name}"
            )
        if args.metrics:
            check_metrics(dirs, metrics)
        if len(dirs) == 1 and not is_sweep(dirs[0]):
            out = write_report(dirs[0], out=out_file)
        else:
            for point in (p for d in dirs if is_sweep(d) for p in expand_run_dirs([d])):
                write_report(point)
            for sweep in filter(is_sweep, dirs):  # an older sweep gets the current figure
                redraw_privacy_utility(sweep)
            default = dirs[0] / "report.html" if len(dirs) == 1 else Path("comparison.html")
            out = write_comparison(dirs, out_file or default, metrics=metrics)
    except FedmammoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
