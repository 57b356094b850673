"""run_provenance: git commit, versions and machine for results.json meta."""

from __future__ import annotations

import os
import platform
import re
import shutil

from fedmammo.evaluation.provenance import run_provenance


def test_provenance_records_versions_machine_and_commit():
    p = run_provenance()

    assert p["versions"]["python"] == platform.python_version()
    assert re.fullmatch(r"\d+\.\d+.*", p["versions"]["numpy"])
    assert p["machine"]["cpu_count"] == os.cpu_count() and p["machine"]["cpu"]
    assert isinstance(p["machine"]["gpus"], list)
    if shutil.which("git") and p["git_commit"] is not None:
        assert re.fullmatch(r"[0-9a-f]{40}", p["git_commit"])
        assert isinstance(p["git_dirty"], bool)
