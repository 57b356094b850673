"""Where a run ran: git commit, package versions, machine; for results.json ``meta``.

The report reads these keys back (``git_commit``, ``git_dirty``, ``versions``, ``machine``);
a run that did not record them says "not recorded" rather than guessing at report time.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["PACKAGES", "run_provenance"]

#: Distributions whose versions a run records.
PACKAGES = (
    "fedmammo",
    "torch",
    "torchvision",
    "flwr",
    "opacus",
    "numpy",
    "scikit-learn",
    "pydicom",
    "pandas",
)


def _git(*args: str) -> str | None:
    repo = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    torch = sys.modules.get("torch")  # only when the run already imported it
    if torch is None or not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def run_provenance() -> dict[str, Any]:
    """Return ``{git_commit, git_dirty, versions, machine}`` of this process's fedmammo."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory = None
    return {
        "git_commit": commit,
        "git_dirty": bool(status) if status is not None else None,
        "versions": _versions(),
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "memory_gib": round(memory, 1) if memory else None,
            "gpus": _gpus(),
        },
    }
