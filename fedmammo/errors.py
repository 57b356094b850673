"""Typed errors that fedmammo raises for bad input, each naming what and where."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["CentreSettingError", "ConfigError", "DataError", "FedmammoError"]


class FedmammoError(Exception):
    """Base class of every error fedmammo raises on purpose."""


class ConfigError(FedmammoError, ValueError):
    """A scenario, centre profile or strategy recipe is invalid (names file, key and fix)."""


class CentreSettingError(ConfigError):
    """A method cannot run with the profile key ``key`` ("privacy") of ``centres``: the run
    plan's error names where each centre's setting came from (its override, else its entry)."""

    def __init__(self, message: str, *, centres: Sequence[str], key: str) -> None:
        super().__init__(message)
        self.centres = list(centres)
        self.key = key


class DataError(FedmammoError, ValueError):
    """Input data (a DICOM file, a manifest, a dataset tree) is missing or unusable."""
