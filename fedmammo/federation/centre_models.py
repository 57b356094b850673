"""The model a message carries, and a centre's local BatchNorm state (FedBN) per arm and seed.

Under FedBN (``batchnorm: local``) a training centre trains and tests with its own BatchNorm
state, kept in its state folder (:func:`~fedmammo.federation.site.state_dir`,
``fedbn/<arm>-<hash>/seed<s>/round<r>.pt``, one per training round, every round of every seed
kept: a few kB each), so a restarted node or a resumed run continues with it, a round the
server retrains after a restart starts from the same state as the first time, a model tested
from an earlier round (periodic sampling's best validation round) is tested with that round's
state, and each seed's numbers can be reproduced from the run folder afterwards. An arm's first
round starts from the received model's BatchNorm state (a seed never inherits another's). The
state is not secret from the server: a training reply carries the whole model, BatchNorm
included, and the server's average of those is the global model's BatchNorm (what test-only
centres use, and what the checkpoints hold). The optimiser's state
(``train.keep_optimizer_state``: Adam's moments carried from round to round, paper 000) is kept
the same way, under ``optimizer/``, its last two rounds per seed only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context
from torch import nn

from fedmammo.errors import DataError
from fedmammo.federation.centre_runtime import identity_of
from fedmammo.federation.codec import arrays_to_state
from fedmammo.federation.messages import BASELINE, BaselineFields, MessageError, ModelConfig
from fedmammo.federation.site import state_dir, state_name
from fedmammo.files import replace_whole
from fedmammo.models import build_model_to_load

__all__ = [
    "FEDBN",
    "OPTIMIZER",
    "baseline_model",
    "bn_keys",
    "keep_optimizer_state",
    "kept_optimizer_state",
    "load_model",
    "load_round_state",
    "model_from",
    "model_with_weights",
    "round_state_file",
    "save_local_bn",
    "save_round_state",
]

#: Kinds of per-round centre state: FedBN's BatchNorm state, the optimiser's state.
log = logging.getLogger(__name__)

FEDBN, OPTIMIZER = "fedbn", "optimizer"


def bn_keys(model: nn.Module) -> list[str]:
    """State-dict keys of every BatchNorm layer (kept local under FedBN)."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            keys += [f"{name}.{k}" for k in module.state_dict()]
    return keys


def _round_folder(context: Context, kind: str, arm: str, seed: int | None) -> Path:
    """This centre's ``kind`` state of ``arm`` and run seed ``seed``, one file per round (its
    own state folder; a message without a run seed: the arm's folder itself)."""
    folder = state_dir(context, identity_of(context)) / kind / state_name(arm)
    return folder if seed is None else folder / f"seed{int(seed)}"


def _saved_rounds(folder: Path) -> dict[int, Path]:
    found = (re.fullmatch(r"round(\d+)\.pt", p.name) for p in folder.glob("round*.pt"))
    return {int(f.group(1)): folder / f.group(0) for f in found if f}


def round_state_file(
    context: Context, kind: str, arm: str, seed: int | None, server_round: int | None
) -> Path | None:
    """The ``kind`` state a message of ``server_round`` continues: the latest saved before
    that round (a training round r continues round r-1's, also when the server retrains r
    after a restart), or the latest of all for a message without a round (evaluation)."""
    folder = _round_folder(context, kind, arm, seed)
    saved = _saved_rounds(folder)
    if not saved and seed is not None:  # a run folder from before per-seed state (resumed):
        saved = _saved_rounds(folder.parent)  # the arm's rounds, of the seed it was running
    usable = [r for r in saved if server_round is None or r < int(server_round)]
    return saved[max(usable)] if usable else None


def save_round_state(context: Context, kind: str, m: ModelConfig, state: dict) -> None:
    """Keep ``state`` as this centre's ``kind`` state after round ``m.server_round`` of
    ``m.arm`` and ``m.run_seed`` (atomic write). FedBN's earlier rounds are kept; of the
    optimiser's, the round before this one (what a retrained round starts from). Round 1 starts
    the seed afresh: later rounds of an earlier start of it are removed."""
    rnd = int(getattr(m, "server_round", None) or 1)
    folder = _round_folder(context, kind, m.arm, m.run_seed)
    if rnd > 1 and m.run_seed is not None and not _saved_rounds(folder):
        _adopt_older_rounds(folder, rnd)
    folder.mkdir(parents=True, exist_ok=True)
    replace_whole(folder / f"round{rnd}.pt", lambda t: torch.save(state, t))
    for old, path in _saved_rounds(folder).items():
        if (rnd == 1 and old > 1) or (kind != FEDBN and old < rnd - 1):
            path.unlink()


def _adopt_older_rounds(folder: Path, rnd: int) -> None:
    """A seed continuing at round ``rnd`` in a run folder from before per-seed state: the
    rounds before it that the arm's folder holds (the seed it was running when stopped) move
    into the seed's own folder, so that its earlier rounds stay testable."""
    older = [path for r, path in _saved_rounds(folder.parent).items() if r < rnd]
    if older:
        folder.mkdir(parents=True, exist_ok=True)
        for path in older:
            path.replace(folder / path.name)


def load_round_state(
    context: Context, kind: str, arm: str, seed: int | None, server_round: int | None
) -> dict | None:
    """The ``kind`` state of ``arm`` and ``seed`` that round ``server_round`` continues (see
    :func:`round_state_file`), or None."""
    path = round_state_file(context, kind, arm, seed, server_round)
    if path is None:
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader error: a file cut short or changed
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        log.error("centre state file %s: damaged, PyTorch cannot read it (%s)", path, reason)
        raise DataError(
            f"the centre's {kind} state of arm {arm} seed {seed} that round {server_round} "
            "continues is damaged, PyTorch cannot read it (the centre's log names the file); "
            "the arm cannot continue from it at this centre: restore the file from a backup, "
            "or start a new run"
        ) from exc


def kept_optimizer_state(context: Context, m: ModelConfig, keep: bool) -> dict | None:
    """The optimiser state this round continues (this centre's from its previous round of
    ``m.arm`` and ``m.run_seed``) when the recipe keeps it (``train.keep_optimizer_state``), else
    None."""
    rnd = getattr(m, "server_round", None)
    return load_round_state(context, OPTIMIZER, m.arm, m.run_seed, rnd) if keep else None


def keep_optimizer_state(context: Context, m: ModelConfig, state: dict, keep: bool) -> None:
    """Keep ``state`` (the optimiser's after this round) when the recipe keeps it."""
    if keep:
        save_round_state(context, OPTIMIZER, m, state)


def load_model(
    spec: Mapping,
    arrays: ArrayRecord,
    context: Context,
    *,
    local_bn: tuple[str, int | None] | None = None,
    after_round: int | None = None,
) -> nn.Module:
    """Build the model ``spec`` (``{"name", "options"}``) names and load ``arrays`` into it.

    With ``local_bn`` (an arm's name and a run seed) this centre's own BatchNorm state of that arm
    and seed replaces the received one (FedBN): the state it kept after round ``after_round``
    (or its latest round before; None: its latest of all). Where the centre has none (an arm's
    first round, a centre that never trained the arm) the received state stays.
    """
    model = model_with_weights(spec, arrays)
    if local_bn is not None:
        until = None if after_round is None else int(after_round) + 1
        arm, seed = local_bn
        own = load_round_state(context, FEDBN, arm, seed, until)
        if own:
            model.load_state_dict(own, strict=False)  # its BatchNorm keys only
    return model


def model_with_weights(spec: Mapping, arrays: ArrayRecord) -> nn.Module:
    """The model ``spec`` (``{"name", "options"}``) names, built uninitialised
    (:func:`~fedmammo.models.build_model_to_load`) with ``arrays`` loaded into it."""
    model = build_model_to_load(spec["name"], **spec.get("options", {}))
    model.load_state_dict(arrays_to_state(arrays, like=model.state_dict()))
    return model


def baseline_model(msg_content, m: BaselineFields) -> nn.Module:
    """The baseline arm's model a message carries in its :data:`BASELINE` record (``m`` names
    the arm and, as a :class:`ModelConfig`, the model spec), with the BatchNorm state it has."""
    if BASELINE not in msg_content:
        raise MessageError(
            f"{m.KIND} names baseline arm {m.baseline} but carries no {BASELINE} record"
        )
    return model_with_weights(m.model, msg_content[BASELINE])


def model_from(
    m: ModelConfig, arrays: ArrayRecord, context: Context, *, keep_local_bn: bool
) -> nn.Module:
    """Build the model the message names and load its weights ``arrays`` into it; with
    ``keep_local_bn`` the centre's own BatchNorm state of ``m.arm`` that its round continues
    (the round before; the latest for a message without a round), see :func:`load_model`."""
    rnd = getattr(m, "server_round", None)
    return load_model(
        m.model,
        arrays,
        context,
        local_bn=(m.arm, m.run_seed) if keep_local_bn else None,
        after_round=None if rnd is None else int(rnd) - 1,
    )


def save_local_bn(model: nn.Module, context: Context, m: ModelConfig) -> None:
    """Keep this centre's BatchNorm state after training round ``m.server_round`` of ``m.arm``
    and ``m.run_seed``."""
    state = model.state_dict()
    save_round_state(
        context, FEDBN, m, {k: state[k].detach().cpu().clone() for k in bn_keys(model)}
    )
