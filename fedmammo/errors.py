"""Typed errors that fedmammo raises for bad input, each naming what and where."""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "FedmammoError"]


class FedmammoError(Exception):
    """Base class of every error fedmammo raises on purpose."""


class ConfigError(FedmammoError, ValueError):
    """A scenario, centre profile or strategy recipe is invalid (names file, key and fix)."""


class DataError(FedmammoError, ValueError):
    """Input data (a DICOM file, a manifest, a dataset tree) is missing or unusable."""
