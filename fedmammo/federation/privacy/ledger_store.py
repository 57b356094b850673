"""A centre's privacy ledgers on its own disk, write-ahead (the server never holds them).

One JSON file per centre identity and data fingerprint, in the centre's state folder
(:func:`~fedmammo.federation.site.state_dir`: ``<data-dir>/state`` at a real site, the run's
``centres/<name>/`` in simulation), named ``privacy-ledger-<fingerprint>.json``. The
fingerprint hashes what defines the centre's data (its name, the profile's ``data`` block,
its own image size and data seed), never a value from a message, so a dataset that changes
gets its own ledger and the server cannot pick a fresh one.

Inside the file, ledgers are keyed by :meth:`LedgerStore.key`: at a real site one ledger for
everything trained on the data (``site``; every arm, seed and phase composes, whatever
names the server sends), in simulation one per what-if deployment (``<arm>|<seed>``, the
server's name: each arm and seed of a study is a separate hypothetical deployment).
``privacy.ledger_scope`` in the profile overrides the choice (``site`` or ``arm``).

Write-ahead: before a DP round takes its first step the centre writes the round's planned
charge (``pending``: noise, sample rate, steps per segment) next to the ledger; after
training it commits the ledger with the steps taken and clears the charge. A centre that
crashed in between finds the charge on restart and counts it as spent. Writes are atomic
(temporary file, fsync, rename) under an exclusive lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from flwr.app import Context

from fedmammo.errors import DataError
from fedmammo.federation.centre_runtime import CentreIdentity
from fedmammo.federation.site import deployed, state_dir
from fedmammo.privacy.accounting import CentreAccountant

__all__ = [
    "FORMAT",
    "Charge",
    "LedgerStore",
    "data_fingerprint",
    "ledger_scope",
    "store_of",
]

logger = logging.getLogger(__name__)

FORMAT = 1
#: One planned charge: (noise multiplier, sample rate, steps, segment or None).
Charge = tuple[float, float, int, str | None]


def data_fingerprint(ident: CentreIdentity) -> str:
    """16 hex digits of sha256 over what defines the centre's data (its own settings only)."""
    profile = ident.profile
    blob = {
        "centre": ident.name,
        "data": None if profile is None else profile.data.model_dump(mode="json"),
        "split": None if profile is None else profile.split,
        "image_size": None if ident.image_size is None else list(ident.image_size),
        "data_seed": ident.data_seed,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def ledger_scope(context: Context, ident: CentreIdentity) -> str:
    """``site`` (one ledger for all work on the data) or ``arm`` (one per what-if)."""
    chosen = "auto" if ident.profile is None else ident.profile.privacy.ledger_scope
    if chosen != "auto":
        return chosen
    return "site" if deployed(context) else "arm"


def _charged(state: dict, pending: dict | None) -> CentreAccountant:
    acc = CentreAccountant.from_state(state)
    for sigma, q, steps, segment in (pending or {}).get("charges", []):
        acc.record(str(pending["phase"]), sigma, q, int(steps), segment=segment)
    return acc


class LedgerStore:
    """The centre's ledger file for one data fingerprint (read-modify-write under a lock)."""

    def __init__(self, folder: Path, ident: CentreIdentity, scope: str) -> None:
        self.ident, self.scope = ident, scope
        self.fingerprint = data_fingerprint(ident)
        self.path = Path(folder) / f"privacy-ledger-{self.fingerprint}.json"

    # ---- file -------------------------------------------------------------------------
    def _empty(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "centre": self.ident.name,
            "fingerprint": self.fingerprint,
            "ledgers": {},
            "pending": {},
        }

    def read(self) -> dict[str, Any]:
        """The file's content (an empty ledger file when there is none yet)."""
        if not self.path.is_file():
            return self._empty()
        try:
            data = json.loads(self.path.read_text())
            if data.get("fingerprint") != self.fingerprint or data.get("centre") != self.ident.name:
                raise ValueError("it belongs to another centre or dataset")
            if not isinstance(data.get("ledgers"), dict):
                raise ValueError("no ledgers")
        except (OSError, ValueError, AttributeError) as err:
            # never start afresh silently: a damaged ledger would give a new budget
            raise DataError(
                f"centre {self.ident.name}: its privacy ledger {self.path} is unreadable "
                f"({err}); restore it from a backup (DP work is refused without it)"
            ) from None
        data.setdefault("pending", {})
        return data

    @contextlib.contextmanager
    def _update(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            yield data
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w") as fh:
                json.dump(data, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)

    def key(self, name: str) -> str:
        """The ledger a message's ledger ``name`` charges: ``site``, or the name per arm."""
        return "site" if self.scope == "site" else str(name)

    # ---- ledgers ----------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self.read()["ledgers"]

    def accountant(self, key: str) -> CentreAccountant | None:
        """The ledger's accountant with any interrupted round counted as spent; None if new."""
        data = self.read()
        if key not in data["ledgers"]:
            return None
        pending = data["pending"].get(key)
        if pending:
            logger.warning(
                "centre %s ledger %s: a DP round of phase %s started and never committed (the "
                "centre stopped during it); its %d planned steps are counted as spent",
                self.ident.name,
                key,
                pending.get("phase"),
                sum(int(c[2]) for c in pending.get("charges", [])),
            )
        return _charged(data["ledgers"][key], pending)

    def reserve(
        self, key: str, accountant: CentreAccountant, phase: str, charges: Sequence[Charge]
    ) -> None:
        """Write-ahead: the ledger as it is before the round, and the round's planned charge."""
        with self._update() as data:
            data["ledgers"][key] = accountant.to_state()
            data["pending"][key] = {
                "phase": phase,
                "charges": [[float(s), float(q), int(n), seg] for s, q, n, seg in charges],
            }

    def commit(self, key: str, accountant: CentreAccountant) -> None:
        """Store the ledger (after a round: with the steps taken) and clear its planned charge.

        ``accountant`` comes from :meth:`accountant` (an interrupted round's charge included)
        or is new, so the cleared charge is never lost."""
        with self._update() as data:
            data["ledgers"][key] = accountant.to_state()
            data["pending"].pop(key, None)


def store_of(context: Context, ident: CentreIdentity) -> LedgerStore:
    """The centre's ledger store (its own state folder, its data's fingerprint)."""
    return LedgerStore(state_dir(context, ident), ident, ledger_scope(context, ident))
