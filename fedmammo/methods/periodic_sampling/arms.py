"""The arms of the periodic-sampling paper's scenario: baselines, and experiment x setting x method
(pure Python).

Arms are planned from the centres' ``query.identify`` counts (``n|<split>|<segment>|<label>``,
counts only): which centre holds each training segment and its rarest-label count (the input
of the global periodic-sampling pattern). Aggregation weights are not planned here: every
round weighs a centre by the count it reports in its reply (``weighting``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from fedmammo.errors import ConfigError
from fedmammo.methods.periodic_sampling.params import METHOD_LABELS, PeriodicSamplingParams

__all__ = ["ArmPlan", "plan_arms", "rarest_label_counts"]

_WEIGHT_LABELS = {
    "images": "by images",
    "labelled": "by labelled images",
    "uniform": "equal weights",
}


def rarest_label_counts(
    counts: dict[str, dict[str, int]], segments: Iterable[str] | None, *, split: str = "train"
) -> dict[str, dict[str, int]]:
    """``{centre: {segment: min over labels}}`` from identify counts ``n|split|segment|label``
    (``segments`` None: every segment a centre holds)."""
    wanted = None if segments is None else set(segments)
    out: dict[str, dict[str, int]] = {}
    for centre, by_key in counts.items():
        per: dict[str, dict[str, int]] = {}
        for key, n in by_key.items():
            parts = key.split("|")
            if (
                len(parts) == 4
                and parts[0] == "n"
                and parts[1] == split
                and (wanted is None or parts[2] in wanted)
                and parts[3] in ("0", "1")
            ):
                per.setdefault(parts[2], {"0": 0, "1": 0})[parts[3]] = int(n)
        if per:
            out[centre] = {s: min(v.values()) for s, v in sorted(per.items())}
    return out


def _held_anywhere(counts: dict[str, dict[str, int]]) -> list[str]:
    """The segments with labelled training images at any centre of ``counts`` (sorted)."""
    return sorted(
        {s for by_segment in rarest_label_counts(counts, None).values() for s in by_segment}
    )


@dataclass
class ArmPlan:
    """One arm: where it trains, on which segments, with which sampler and weighting."""

    name: str
    setting: str  # "baseline", "pooled" or "federated"
    method: str  # sampler name
    segments: list[str]
    centres: list[str]
    experiment: str | None = None
    weighting: str | None = None
    label: str = ""
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # rarest-label counts

    def meta(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "counts"}


def plan_arms(
    p: PeriodicSamplingParams, counts: dict[str, dict[str, int]], *, pooled: bool
) -> tuple[list[ArmPlan], list[str]]:
    """The arms in running order (baselines first) and notes on arms that cannot run."""
    notes: list[str] = []
    arms: list[ArmPlan] = []
    train_counts = {c: v for c, v in counts.items() if c != "pooled"}
    for segment in p.baselines:
        rarest = rarest_label_counts(train_counts, [segment])
        if not rarest:
            raise ConfigError(
                f"strategy params.baselines: no training centre holds segment "
                f"{segment!r}; fix the recipe or the scenario's centres"
            )
        arms.append(
            ArmPlan(
                f"baseline-{segment}",
                "baseline",
                p.baseline_sampler,
                [segment],
                sorted(rarest),
                label=f"baseline ({segment})",
            )
        )
    for exp, segments in p.experiments.items():
        rarest = rarest_label_counts(train_counts, segments)
        held = {s for v in rarest.values() for s in v}
        missing = [s for s in segments if s not in held]
        if missing:
            raise ConfigError(
                f"strategy params.experiments.{exp}: segments {missing} are held by "
                f"no training centre (held: {_held_anywhere(train_counts)}); fix the recipe "
                "or the scenario's centres"
            )
        for setting in p.settings:
            if setting == "pooled" and not pooled:
                notes.append(f"{exp}: pooled arms skipped (no pooled node: deployment)")
                continue
            for method in p.methods:
                name = f"{exp}-{setting}-{method}"
                label = METHOD_LABELS[method]
                if setting == "pooled":
                    arms.append(
                        ArmPlan(name, setting, method, list(segments), ["pooled"], exp, None, label)
                    )
                elif method != "periodic":
                    arms.append(
                        ArmPlan(
                            name,
                            setting,
                            method,
                            list(segments),
                            sorted(rarest),
                            exp,
                            p.fedavg_weighting,
                            label,
                        )
                    )
                else:
                    for w in p.periodic_weightings:
                        suffix = "" if w == "quota" else f"-{w}"
                        extra = f" ({_WEIGHT_LABELS[w]})" if w in _WEIGHT_LABELS else ""
                        arms.append(
                            ArmPlan(
                                name + suffix,
                                setting,
                                method,
                                list(segments),
                                sorted(rarest),
                                exp,
                                w,
                                label + extra,
                                rarest,
                            )
                        )
    return arms, notes
