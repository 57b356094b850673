"""The ``fedmammo`` command: one entry point for every task.

fedmammo simulate SCENARIO.yaml [...]   run a scenario (= python -m fedmammo.simulate)
fedmammo check SCENARIO.yaml [...]      validate it and print its plan (= simulate --check)
fedmammo report RUN_DIR [...]           write report.html / a comparison page
fedmammo reproduce RUNS... [--out F]    the papers' headlines vs these runs (docs/reproduction.md)
fedmammo deploy prepare PROFILE [...]   prepare a site (= python -m fedmammo.federation.deployment)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["COMMANDS", "main", "run"]


def _simulate(argv: list[str]) -> int:
    from fedmammo.simulate import main as simulate

    return simulate(argv, prog="fedmammo simulate")


def _check(argv: list[str]) -> int:
    from fedmammo.simulate import main as simulate

    if {"-h", "--help"} & set(argv):  # the help below is simulate's: say what check is
        print(
            "fedmammo check SCENARIO.yaml [OPTIONS] is fedmammo simulate SCENARIO.yaml --check "
            "[OPTIONS]:\ncheck everything a run would check, print the resolved scenario and "
            "the run plan, run nothing.\nsimulate's help follows (--check is implied):\n"
        )
    return simulate([*argv, "--check"], prog="fedmammo check")


def _report(argv: list[str]) -> int:
    from fedmammo.report import main as report

    return report(argv, prog="fedmammo report")


def _reproduce(argv: list[str]) -> int:
    from fedmammo.reproduce import main as reproduce

    return reproduce(argv, prog="fedmammo reproduce")


def _deploy(argv: list[str]) -> int:
    from fedmammo.federation.deployment import main as deploy

    return deploy(argv, prog="fedmammo deploy")


#: command -> (entry point, one-line help)
COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "simulate": (_simulate, "run a scenario on Flower's simulation engine"),
    "check": (_check, "validate a scenario and print its resolved form and plan"),
    "report": (_report, "write report.html of a run, or a comparison page"),
    "reproduce": (_reproduce, "check the seed papers' headlines against run folders"),
    "deploy": (_deploy, "prepare a real site (its data, cache and centre.yaml)"),
}


def _listing(kind: str, folder: str) -> list[str]:
    """Lines listing ``folder``'s YAML files: the shipped ones (in the checkout), then the
    user's own in the current directory, if it has any (looked up first by name)."""
    from fedmammo.config.loading import checkout_root

    here, shipped = Path.cwd().resolve(), checkout_root().resolve()
    where = f"{folder}/" if here == shipped else f"{shipped / folder}/"
    lines = [f"shipped {kind} ({where}):", "  " + ", ".join(_stems(shipped / folder))]
    if here != shipped and (mine := _stems(here / folder)):
        first = "" if folder == "scenarios" else ", looked up first by name"
        lines += [f"your {kind} (./{folder}/{first}):", "  " + ", ".join(mine)]
    return lines


def _stems(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def usage() -> str:
    """The help text: commands, shipped scenarios and strategy recipes (and the user's)."""
    from fedmammo.config.loading import checkout_root

    width = max(map(len, COMMANDS))
    lines = ["usage: fedmammo COMMAND [ARGS...]   (fedmammo COMMAND --help for its options)", ""]
    lines += ["commands:"] + [f"  {c:<{width}}  {h}" for c, (_, h) in COMMANDS.items()]
    lines += ["", *_listing("scenarios", "scenarios"), *_listing("strategy recipes", "strategies")]
    example = Path("scenarios", "fedavg_quick.yaml")
    if not example.is_file():
        example = checkout_root() / example
    lines += ["", f"e.g. fedmammo simulate {example} --quick"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``fedmammo COMMAND ARGS``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"fedmammo: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return COMMANDS[command][0](rest)


def run() -> int:
    """The ``fedmammo`` console script (and ``python -m fedmammo.cli``): :func:`main`, and
    after a finished run a Ctrl-C while the process leaves is ignored
    (:func:`fedmammo.interrupt.exit_code`, which changes the process's SIGINT handler: for
    a process's entry point only)."""
    from fedmammo.interrupt import exit_code

    return exit_code(main())


if __name__ == "__main__":
    raise SystemExit(run())
