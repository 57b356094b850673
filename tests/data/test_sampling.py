"""Tests of fedmammo.data.sampling: Algorithm 1, periodic / balanced / random / quota samplers."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from torch.utils.data import DataLoader

from fedmammo.data.sampling import (
    SAMPLERS,
    BalancedLabelSampler,
    BalancedSegmentSampler,
    PeriodicBatchSampler,
    QuotaBatchSampler,
    RandomBatchSampler,
    build_sampler,
    build_sampling_pattern,
)
from fedmammo.errors import ConfigError, DataError


def _naive_pattern(counts: list[int]) -> list[int]:
    """Algorithm 1 as printed (linspace without endpoint, linear collision walk)."""
    length = sum(counts)
    pattern = [-1] * length
    for i in sorted(range(len(counts)), key=lambda k: counts[k]):
        for p in np.linspace(0, length, counts[i], endpoint=False):
            p = int(math.floor(p + 1e-9))
            while pattern[p] != -1:
                p = (p + 1) % length
            pattern[p] = i
    return pattern


def _dataset(sizes: dict[str, tuple[int, int]], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Segments and labels with ``sizes[segment] = (n_benign, n_malignant)``, shuffled."""
    segments, labels = [], []
    for segment, (n0, n1) in sizes.items():
        segments += [segment] * (n0 + n1)
        labels += [0] * n0 + [1] * n1
    order = np.random.default_rng(seed).permutation(len(labels))
    return np.asarray(segments, dtype=object)[order], np.asarray(labels)[order]


def _flat(sampler) -> list[int]:
    return [i for batch in sampler for i in batch]


def test_algorithm1_on_the_figure2_example():
    # Prepare
    counts = [2, 5, 10, 20]

    # Execute
    pattern = build_sampling_pattern(counts)

    # Assert: length 37, each segment counts[i] times, rarest segments evenly spread
    assert pattern.shape == (37,)
    assert np.bincount(pattern).tolist() == counts
    assert np.flatnonzero(pattern == 0).tolist() == [0, 18]
    assert np.flatnonzero(pattern == 1).tolist() == [1, 7, 14, 22, 29]
    assert np.flatnonzero(pattern == 2).tolist() == [2, 3, 8, 11, 15, 19, 23, 25, 30, 33]
    for i, n in enumerate(counts[:-1]):  # the largest segment fills the leftover slots
        slots = np.flatnonzero(pattern == i)
        gaps = np.diff(np.r_[slots, slots[0] + 37])
        assert gaps.max() <= math.ceil(37 / n) + 2  # no segment waits much longer than 1/p_i
    assert pattern.tolist() == _naive_pattern(counts)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ([5], [0, 0, 0, 0, 0]),
        ([3, 3, 3], [0, 1, 2, 0, 1, 2, 0, 1, 2]),
        ([1, 4], [0, 1, 1, 1, 1]),
        ([4, 1], [1, 0, 0, 0, 0]),
        ([0, 3], [1, 1, 1]),
        ([1], [0]),
    ],
)
def test_algorithm1_edge_cases(counts, expected):
    # Execute
    pattern = build_sampling_pattern(counts)

    # Assert
    assert pattern.tolist() == expected


def test_algorithm1_matches_the_naive_algorithm_on_random_counts():
    # Prepare
    rng = np.random.default_rng(3)

    for _ in range(30):
        counts = rng.integers(0, 40, size=rng.integers(1, 7)).tolist()
        counts[0] += 1

        # Execute
        pattern = build_sampling_pattern(counts)

        # Assert
        assert pattern.tolist() == _naive_pattern(counts)
        assert np.bincount(pattern, minlength=len(counts)).tolist() == counts


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ([], "empty"),
        ([0, 0], "all zero"),
        ([3, -1], r"counts\[1\] = -1 is negative"),
        ([3, 2.5], r"counts\[1\] = 2.5 is not an integer"),
        ([True, 2], r"counts\[0\] = True is not an integer"),
    ],
)
def test_algorithm1_rejects_bad_counts(counts, message):
    with pytest.raises(ValueError, match=message):
        build_sampling_pattern(counts)


def test_periodic_sampler_alternates_labels_within_each_segment():
    # Prepare
    segments, labels = _dataset({"S1-Ma": (60, 30), "S2-Ma": (200, 4), "S2-Mb": (150, 6)})
    sampler = PeriodicBatchSampler(segments, labels, batch_size=8, num_batches=40, seed=1)

    # Execute
    flat = _flat(sampler)

    # Assert
    for segment in ("S1-Ma", "S2-Ma", "S2-Mb"):
        drawn = labels[[i for i in flat if segments[i] == segment]]
        assert np.all(drawn[1:] != drawn[:-1]), segment


def test_periodic_sampler_segment_proportions_match_rarest_label_counts():
    # Prepare: rarest-label counts 30, 4, 6 -> pattern length 40
    segments, labels = _dataset({"S1-Ma": (60, 30), "S2-Ma": (200, 4), "S2-Mb": (150, 6)})
    sampler = PeriodicBatchSampler(segments, labels, batch_size=8, num_batches=500, seed=0)

    # Execute
    flat = np.asarray(_flat(sampler))

    # Assert: 4000 samples = 100 pattern passes, exact proportions counts / sum(counts)
    assert sampler.counts_ == {"S1-Ma": 30, "S2-Ma": 4, "S2-Mb": 6}
    drawn = pd.Series(segments[flat]).value_counts().to_dict()
    assert drawn == {"S1-Ma": 3000, "S2-Ma": 400, "S2-Mb": 600}
    assert labels[flat].mean() == pytest.approx(0.5, abs=0.001)


def test_periodic_sampler_defaults_to_one_pass_and_is_a_torch_batch_sampler():
    # Prepare
    segments, labels = _dataset({"a": (20, 10), "b": (30, 3)})
    sampler = PeriodicBatchSampler(segments, labels, batch_size=4)
    data = np.arange(labels.size) * 10

    # Execute
    batches = [b.tolist() for b in DataLoader(data, batch_sampler=sampler)]

    # Assert
    assert len(sampler) == math.ceil(13 / 4) == len(batches)
    assert all(len(b) == 4 for b in batches)
    assert batches[0] == [10 * i for i in next(iter(sampler))]


def test_periodic_sampler_cycles_through_every_image_before_repeating():
    # Prepare: 13 malignant images in segment "a", drawn once per 2 slots of "a"
    segments, labels = _dataset({"a": (40, 13), "b": (40, 13)})
    sampler = PeriodicBatchSampler(segments, labels, batch_size=2, num_batches=26, seed=5)

    # Execute
    flat = _flat(sampler)

    # Assert: the first 13 malignant draws of "a" are its 13 images, each once
    malignant_a = [i for i in flat if segments[i] == "a" and labels[i] == 1]
    expected = np.flatnonzero((segments == "a") & (labels == 1))
    assert sorted(malignant_a[:13]) == expected.tolist()


def test_periodic_sampler_is_deterministic_and_epochs_continue_the_stream():
    # Prepare
    segments, labels = _dataset({"a": (50, 9), "b": (80, 5), "c": (9, 30)})
    make = lambda n, seed=0: PeriodicBatchSampler(segments, labels, 5, num_batches=n, seed=seed)  # noqa: E731

    # Execute
    first, again, other_seed = _flat(make(6)), _flat(make(6)), _flat(make(6, seed=1))
    two_epochs = make(6)
    epoch0 = _flat(two_epochs)
    two_epochs.set_epoch(1)
    epoch1 = _flat(two_epochs)

    # Assert
    assert first == again
    assert first != other_seed
    assert epoch0 != epoch1
    assert epoch0 + epoch1 == _flat(make(12))


def test_single_label_segment_falls_back_to_its_label_with_a_warning(caplog):
    # Prepare
    segments, labels = _dataset({"a": (30, 10), "benign-only": (25, 0)})

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedmammo.data.sampling"):
        sampler = PeriodicBatchSampler(segments, labels, batch_size=11, num_batches=10)
    flat = np.asarray(_flat(sampler))
    dropped = PeriodicBatchSampler(segments, labels, 11, num_batches=10, min_count=0)

    # Assert
    assert "'benign-only' has only label 0" in caplog.text
    assert sampler.counts_ == {"a": 10, "benign-only": 1}
    only = flat[segments[flat] == "benign-only"]
    assert only.size == 10 and np.all(labels[only] == 0)
    assert not np.any(segments[np.asarray(_flat(dropped))] == "benign-only")


@pytest.mark.parametrize(
    "bad_labels",
    [
        pd.array([0, 1, None, 1], dtype="Int8"),
        np.array([0.0, 1.0, np.nan, 1.0]),
        np.array([0, 1, 2, 1]),
    ],
)
def test_samplers_reject_labels_other_than_0_and_1(bad_labels):
    with pytest.raises(DataError, match="labels must be 0 or 1: 1 of 4 .* position 2"):
        PeriodicBatchSampler(["a", "a", "b", "b"], bad_labels, batch_size=2)


def test_samplers_reject_mismatched_lengths_and_missing_segments():
    with pytest.raises(DataError, match="one segment key per image"):
        PeriodicBatchSampler(["a", "b"], [0, 1, 1], batch_size=2)
    with pytest.raises(DataError, match="no segment key"):
        PeriodicBatchSampler(["a", None, "a"], [0, 1, 1], batch_size=2)
    with pytest.raises(ConfigError, match="batch_size"):
        PeriodicBatchSampler(["a", "a"], [0, 1], batch_size=0)


def test_balanced_label_sampler_gives_equal_labels_regardless_of_segment():
    # Prepare: the malignant images are almost all in segment "S1"
    segments, labels = _dataset({"S1": (50, 50), "S2": (300, 2)})
    sampler = BalancedLabelSampler(segments, labels, batch_size=10, num_batches=40, seed=2)

    # Execute
    flat = np.asarray(_flat(sampler))

    # Assert: exactly 50/50 labels, alternating; segment mix follows the pooled label pools
    assert labels[flat].tolist() == [labels[flat[0]], 1 - labels[flat[0]]] * 200
    assert np.mean(segments[flat[labels[flat] == 1]] == "S1") > 0.9


def test_balanced_segment_sampler_gives_equal_segments_and_labels():
    # Prepare
    segments, labels = _dataset({"S1": (50, 50), "S2": (300, 2), "S3": (40, 7)})
    sampler = BalancedSegmentSampler(segments, labels, batch_size=6, num_batches=100, seed=3)

    # Execute
    flat = np.asarray(_flat(sampler))

    # Assert: 600 samples = 200 per segment, 100 per label within each segment
    for segment in ("S1", "S2", "S3"):
        drawn = labels[flat[segments[flat] == segment]]
        assert drawn.size == 200
        assert drawn.sum() == 100
    assert sampler.pattern_.tolist() == [0, 1, 2]


def test_random_sampler_covers_every_image_once_per_epoch():
    # Prepare
    segments, labels = _dataset({"a": (17, 3), "b": (9, 0)})

    # Execute
    sampler = RandomBatchSampler(segments, labels, batch_size=4)
    flat = _flat(sampler)

    # Assert: 8 full batches; the first 29 draws are a permutation of the 29 images
    assert len(sampler) == 8 and len(flat) == 32
    assert sorted(flat[:29]) == list(range(29))
    assert flat != sorted(flat)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_registry_builds_every_sampler_with_the_same_interface(name):
    # Prepare
    segments, labels = _dataset({"a": (20, 8), "b": (30, 4)})

    # Execute
    sampler = build_sampler(name, segments=segments, labels=labels, batch_size=3, num_batches=7)
    batches = list(sampler)

    # Assert
    assert isinstance(sampler, SAMPLERS[name])
    assert len(sampler) == len(batches) == 7
    assert all(len(b) == 3 and all(0 <= i < labels.size for i in b) for b in batches)
    assert all(isinstance(i, int) for b in batches for i in b)


def test_registry_rejects_unknown_names_listing_valid_ones():
    with pytest.raises(ValueError, match="balanced_labels, balanced_segments, periodic, random"):
        build_sampler("stratified", segments=["a"], labels=[0], batch_size=1)


def test_quota_sampler_covers_exactly_the_quota_with_alternating_labels():
    # Prepare
    segments, labels = _dataset({"S1": (40, 20), "S2": (90, 5), "S3": (10, 10)})
    quota = {"S1": 9, "S2": 4, "S3": 0}

    # Execute
    sampler = QuotaBatchSampler(segments, labels, quota, batch_size=4, seed=7)
    batches = list(sampler)
    flat = np.asarray([i for b in batches for i in b])

    # Assert
    assert len(sampler) == len(batches) == 4
    assert [len(b) for b in batches] == [4, 4, 4, 1]
    assert pd.Series(segments[flat]).value_counts().to_dict() == {"S1": 9, "S2": 4}
    for segment in ("S1", "S2"):
        drawn = labels[flat[segments[flat] == segment]]
        assert np.all(drawn[1:] != drawn[:-1])


def test_quota_sampler_offsets_chain_rounds_into_one_stream():
    # Prepare
    segments, labels = _dataset({"S1": (12, 6), "S2": (30, 3)})
    whole = QuotaBatchSampler(segments, labels, {"S1": 10, "S2": 6}, batch_size=100, seed=4)

    # Execute
    first = QuotaBatchSampler(segments, labels, {"S1": 4, "S2": 2}, batch_size=100, seed=4)
    second = QuotaBatchSampler(
        segments, labels, {"S1": 6, "S2": 4}, 100, 4, offsets={"S1": 4, "S2": 2}
    )

    # Assert: per segment, round 1 then round 2 equals one long draw
    def pick(sampler, segment):
        return [i for i in _flat(sampler) if segments[i] == segment]

    for segment in ("S1", "S2"):
        assert pick(first, segment) + pick(second, segment) == pick(whole, segment)


def test_quota_sampler_rejects_unknown_segments_and_yields_nothing_for_zero_quota():
    # Prepare
    segments, labels = _dataset({"S1": (4, 4)})

    # Execute
    empty = QuotaBatchSampler(segments, labels, {"S1": 0}, batch_size=2)

    # Assert
    assert len(empty) == 0 and list(empty) == []
    with pytest.raises(DataError, match=r"\['S9'\].*its segments are \['S1'\]"):
        QuotaBatchSampler(segments, labels, {"S9": 3}, batch_size=2)
    with pytest.raises(DataError, match=r"quota\['S1'\] = -1"):
        QuotaBatchSampler(segments, labels, {"S1": -1}, batch_size=2)


def test_a_single_label_warning_at_a_centre_names_the_centre(caplog):
    # Prepare: a sampler built inside a centre's handler (which sets the progress label)
    from fedmammo.progress import progress_label

    segments, labels = _dataset({"<all>": (48, 0)})
    # Execute
    with caplog.at_level(logging.WARNING, logger="fedmammo.data.sampling"):
        with progress_label("centre hosp_south"):
            PeriodicBatchSampler(segments, labels, batch_size=8, num_batches=2)
        PeriodicBatchSampler(segments, labels, batch_size=8, num_batches=2)
    # Assert: inside the block the line names the centre, outside it does not
    first, second = [r.getMessage() for r in caplog.records]
    assert first == (
        "centre hosp_south: segment '<all>' has only label 0 (48 images): its label "
        "alternation falls back to that label"
    )
    assert second == first.removeprefix("centre hosp_south: ")
