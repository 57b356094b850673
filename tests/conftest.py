"""Shared pytest setup: deterministic, single-threaded torch for stable, fast tests."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
