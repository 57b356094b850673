"""Which model of an arm is tested (paper 000): the round of best validation WLL, and the
exponential moving average of the weights that the server keeps over rounds."""

from __future__ import annotations

import math

from flwr.app import ArrayRecord

from fedmammo.federation.orchestrator import Orchestrator
from fedmammo.methods.periodic_sampling.params import PeriodicSamplingParams

__all__ = ["ema_name", "ema_update", "final_model", "selected_round", "tested_round"]


def selected_round(records: list[dict], arm: str, seed: int, last: int, rule: str) -> int:
    """The round whose model an arm is tested with: ``last``, or (``best_val_wll``) the round
    with the lowest validation WLL over the arm's validation sets (their ``n``-weighted mean
    when several centres validated; one global set on the pooled node), ties to the earlier.
    """
    if rule == "last":
        return last
    by_round: dict[int, dict[str, dict[str, float]]] = {}
    for r in records:
        if (
            r["arm"] == arm
            and r["seed"] == seed
            and r["split"] == "val"
            and r.get("segment") is None
            and r.get("round") is not None
            and int(r["round"]) <= last
            and r["metric"] in ("wll", "n")
            and r["value"] is not None
        ):
            by_round.setdefault(int(r["round"]), {}).setdefault(r["centre"], {})[r["metric"]] = (
                float(r["value"])
            )
    scores = {}
    for rnd, centres in by_round.items():
        pairs = [(c["wll"], c.get("n", 1.0)) for c in centres.values() if "wll" in c]
        total = sum(n for _, n in pairs)
        if pairs and total > 0 and all(math.isfinite(w) for w, _ in pairs):
            scores[rnd] = sum(w * n for w, n in pairs) / total
    return min(scores, key=lambda r: (scores[r], r)) if scores else last


def final_model(orc: Orchestrator, p: PeriodicSamplingParams, arm: str, seed: int) -> ArrayRecord:
    """The checkpoint an arm is tested with (``checkpoint``), recorded in meta."""
    last = orc.recorder.last_round(arm, seed)
    chosen = selected_round(orc.recorder.metrics, arm, seed, last, p.checkpoint)
    orc.recorder.meta.setdefault("selected_round", {})[f"{arm}|{seed}"] = chosen
    return orc.load_checkpoint(arm if p.ema_decay is None else ema_name(arm), seed, chosen)


def tested_round(orc: Orchestrator, arm: str, seed: int) -> int | None:
    """The round :func:`final_model` chose for ``arm`` and ``seed`` (None before it ran)."""
    return orc.recorder.meta.get("selected_round", {}).get(f"{arm}|{seed}")


def ema_name(arm: str) -> str:
    """Where an arm's moving-average checkpoints go (``checkpoints/<arm>.ema/``)."""
    return f"{arm}.ema"


def ema_update(ema: ArrayRecord, arrays: ArrayRecord, decay: float) -> ArrayRecord:
    """``decay * ema + (1 - decay) * arrays`` for floating tensors (BatchNorm's running
    statistics included, as TensorFlow's EMA of every variable); counters follow ``arrays``."""
    old, new = ema.to_torch_state_dict(), arrays.to_torch_state_dict()
    return ArrayRecord(
        {
            k: decay * old[k] + (1.0 - decay) * v if v.is_floating_point() else v.clone()
            for k, v in new.items()
        }
    )
