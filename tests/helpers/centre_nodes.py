"""A prepared centre as a deployed Flower node sees it: its profile and a fresh Context."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml
from flwr.app import Context, RecordDict


def use_privacy(data_dir: Path, **privacy) -> None:
    """Rewrite the centre's profile with these privacy settings (identity_of re-reads it)."""
    path = data_dir / "centre.yaml"
    prof = yaml.safe_load(path.read_text())
    prof["privacy"] = {"max_grad_norm": 1.0, **privacy}
    path.write_text(yaml.safe_dump(prof))


def current_state_dir(data_dir: Path) -> Path:
    """The state folder :func:`node_context` gives nodes of the running test."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "none").rsplit(" (", 1)[0]
    return data_dir / "state" / hashlib.sha1(test.encode()).hexdigest()[:12]


def ledger_file(state_dir: Path) -> Path | None:
    """The centre's privacy-ledger file in a state folder (None: nothing spent there)."""
    return next(state_dir.glob("privacy-ledger-*.json"), None)


def node_context(
    centre: str, data_dir: Path, node_id: int = 7, *, state_dir: Path | None = None
) -> Context:
    """A new node of ``centre`` (empty ``context.state``, as after a restart).

    Its state folder (the privacy ledger) survives restarts within one test and is new for
    each test (``<data-dir>/state/<test>``), unless ``state_dir`` names another one.
    """
    node = {
        "centre": centre,
        "data-dir": str(data_dir),
        "role": "train",
        "state-dir": str(state_dir or current_state_dir(data_dir)),
    }
    return Context(run_id=1, node_id=node_id, node_config=node, state=RecordDict(), run_config={})


def prepared_centre(
    root: Path, name: str, size: tuple[int, int], *, prevalence: float = 0.5, **profile
) -> tuple:
    """A tiny two-vendor phantom centre (6 + 6 patients, split 60/20/20) prepared under
    ``root``; ``profile`` adds keys such as ``labels``. Returns (CentreData, data dir)."""
    from fedmammo.config import CentreProfile
    from fedmammo.data.prepare import materialise_centre

    segments = [{"manufacturer": m, "patients": 6, "prevalence": prevalence} for m in ("Ma", "Mb")]
    spec = CentreProfile.model_validate(
        {
            "name": name,
            "source": "T",
            "data": {"synthetic": {"image_height": 64, "segments": segments}},
            "split": {"train": 0.6, "val": 0.2, "test": 0.2},
            **profile,
        }
    )
    data_dir = root / name
    return materialise_centre(spec, root, image_size=size, data_dir=data_dir), data_dir
