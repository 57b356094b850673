"""Tests of fedmammo.methods.periodic_sampling.quota: windows, quotas, offsets, weights."""

from __future__ import annotations

import ast
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fedmammo.data.sampling import PeriodicBatchSampler, QuotaBatchSampler
from fedmammo.errors import ConfigError, DataError
from fedmammo.methods.periodic_sampling import quota as periodic_quota
from fedmammo.methods.periodic_sampling.quota import (
    global_pattern,
    pattern_window,
    round_offsets,
    round_quotas,
)

COUNTS = {"A": {"S1-Ma": 20, "S1-Mb": 2}, "B": {"S2-Ma": 5, "S2-Mb": 10}}
PAIRS = [(c, s) for c in COUNTS for s in COUNTS[c]]


def _sum_quotas(quotas: dict[str, dict[str, int]]) -> int:
    return sum(q for by_segment in quotas.values() for q in by_segment.values())


def test_global_pattern_places_every_centre_segment_pair_by_its_count():
    # Execute
    pattern = global_pattern(COUNTS)

    # Assert
    assert len(pattern) == 37
    assert Counter(pattern) == {pair: COUNTS[pair[0]][pair[1]] for pair in PAIRS}
    assert [i for i, pair in enumerate(pattern) if pair == ("A", "S1-Mb")] == [0, 18]


def test_global_pattern_rejects_bad_counts():
    with pytest.raises(DataError, match="centre 'A' reported count -1 for segment 's'"):
        global_pattern({"A": {"s": -1}})
    with pytest.raises(DataError, match="no centre reported a positive"):
        global_pattern({"A": {"s": 0}, "B": {}})


@pytest.mark.parametrize(("batches_per_round", "batch_size"), [(1, 4), (2, 3), (5, 8), (1, 37)])
def test_round_quotas_sum_to_the_window_and_tile_the_pattern(batches_per_round, batch_size):
    # Prepare
    pattern = global_pattern(COUNTS)
    width = batches_per_round * batch_size
    rounds = math.lcm(len(pattern), width) // width  # windows that tile whole cycles
    cycles = rounds * width // len(pattern)

    # Execute
    quotas = [round_quotas(pattern, r, batches_per_round, batch_size) for r in range(rounds)]

    # Assert: each window has its length; together they cover each slot `cycles` times, so
    # per-segment proportions over full cycles are counts / sum(counts)
    assert all(_sum_quotas(q) == width for q in quotas)
    total = Counter()
    for q in quotas:
        total.update({(c, s): n for c in q for s, n in q[c].items()})
    assert total == {pair: cycles * COUNTS[pair[0]][pair[1]] for pair in PAIRS}
    assert all(n > 0 for q in quotas for by_segment in q.values() for n in by_segment.values())


def test_round_quotas_are_the_counts_of_the_cyclic_window():
    # Prepare
    pattern = global_pattern(COUNTS)

    # Execute
    window = pattern_window(pattern, 3, 2, 7)  # slots 42..55 = 5..18 of the pattern
    quotas = round_quotas(pattern, 3, 2, 7)

    # Assert
    assert window == pattern[5:19]
    assert quotas == {
        c: dict(sorted(Counter(s for cc, s in window if cc == c).items()))
        for c in sorted({c for c, _ in window})
    }


def test_round_offsets_accumulate_previous_quotas():
    # Prepare
    pattern = global_pattern(COUNTS)
    running = {c: dict.fromkeys(COUNTS[c], 0) for c in COUNTS}

    for r in range(12):
        # Execute
        offsets = round_offsets(pattern, r, 1, 8)

        # Assert
        assert offsets == running
        for c, by_segment in round_quotas(pattern, r, 1, 8).items():
            for s, n in by_segment.items():
                running[c][s] += n


def test_round_arguments_are_validated():
    pattern = global_pattern(COUNTS)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        round_quotas(pattern, 0, 1, 0)
    with pytest.raises(ConfigError, match="round_index must be an integer >= 0"):
        round_quotas(pattern, -1, 1, 4)
    with pytest.raises(DataError, match="empty"):
        round_quotas([], 0, 1, 4)


def test_one_batch_rounds_reproduce_centralised_periodic_batches():
    # Prepare: centre A holds segments "a1", "a2", centre B holds "b1"; pooled = A then B
    rng = np.random.default_rng(0)
    local = {
        "A": (
            np.array(["a1"] * 30 + ["a2"] * 40, dtype=object),
            rng.permutation([0] * 52 + [1] * 18),
        ),
        "B": (np.array(["b1"] * 25, dtype=object), rng.permutation([0] * 20 + [1] * 5)),
    }
    first_global = {"A": 0, "B": 70}
    segments = np.concatenate([local[c][0] for c in ("A", "B")])
    labels = np.concatenate([local[c][1] for c in ("A", "B")])
    counts = {
        c: {s: int(min(np.sum(lab[seg == s] == 0), np.sum(lab[seg == s] == 1))) for s in set(seg)}
        for c, (seg, lab) in local.items()
    }
    pattern = global_pattern(counts)
    central = PeriodicBatchSampler(segments, labels, batch_size=6, num_batches=20, seed=11)

    for r, central_batch in enumerate(central):
        # Execute: each centre draws its quota from its offsets; map local to pooled indices
        fed_batch = []
        quotas, offsets = round_quotas(pattern, r, 1, 6), round_offsets(pattern, r, 1, 6)
        for c, quota in quotas.items():
            seg, lab = local[c]
            sampler = QuotaBatchSampler(seg, lab, quota, 6, seed=11, offsets=offsets[c])
            fed_batch += [first_global[c] + i for batch in sampler for i in batch]

        # Assert: the same images as the centralised periodic sampler, round after round
        assert sorted(fed_batch) == sorted(central_batch), r


def test_periodic_quota_does_not_import_flower():
    # Prepare
    tree = ast.parse(Path(periodic_quota.__file__).read_text())

    # Execute
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}

    # Assert
    assert not any(name.split(".")[0] == "flwr" for name in imported)
