"""The phantom reader's ACR assessments: P(malignant | category) in the BI-RADS ranges.

Labels only, no images: the breast findings of a segment are laid out as the phantom lays
them out (rounded counts of cancer and benign-lesion patients, one finding per patient, the
other breast normal) and read by :func:`fedmammo.data.phantom.reader_acr`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedmammo.config import load_profile
from fedmammo.data.phantom import acr_probabilities, reader_acr
from fedmammo.errors import ConfigError

CENTRES = Path(__file__).resolve().parents[2] / "centres"
NORMAL, BENIGN, CANCER = 0, 1, 2
#: BI-RADS malignancy rate of each category (ACR 6: biopsy-proven), as (low, high).
BIRADS = {1: (0.0, 0.01), 2: (0.0, 0.01), 3: (0.0, 0.02), 4: (0.02, 0.95), 5: (0.95, 1.0)}


def _breasts(patients: int, prevalence: float, lesion_prevalence: float) -> np.ndarray:
    """Findings of every breast of a segment, as the phantom plans them (rounded counts)."""
    cancers = round(prevalence * patients)
    benign = round(lesion_prevalence * (patients - cancers))
    normal = patients - cancers - benign
    return np.r_[
        np.full(cancers, CANCER), np.full(benign, BENIGN), np.zeros(normal + patients, int)
    ]


def _rates(findings: np.ndarray, acr: np.ndarray) -> dict[int, tuple[float, int]]:
    return {
        c: (float((findings[acr == c] == CANCER).mean()), int((acr == c).sum()))
        for c in np.unique(acr)
    }


def _synthetic_segments() -> list[tuple[str, float, float, float]]:
    out = []
    for path in sorted(CENTRES.glob("*.yaml")):
        profile = load_profile(path)
        if profile.data.synthetic is None:
            continue
        for seg in profile.data.synthetic.segments:
            out.append(
                (profile.name, seg.prevalence, seg.lesion_prevalence, profile.labels.reader_noise)
            )
    return out


def test_probabilities_are_distributions_and_noise_is_checked():
    # Execute
    tables = [acr_probabilities(x) for x in (0.0, 0.15, 1.0)]
    # Assert: rows sum to 1; no cancer read 3, no benign or normal breast read 5 or 6
    for t in tables:
        assert t.shape == (3, 6) and (t >= 0).all()
        assert t.sum(axis=1) == pytest.approx(np.ones(3))
        assert t[CANCER, 2] == 0 and not t[:CANCER, 4:].any()
    with pytest.raises(ConfigError, match="reader_noise"):
        acr_probabilities(1.5)


def test_same_seed_same_draws_other_seed_other_draws():
    # Prepare
    findings = _breasts(2000, 0.1, 0.2)
    # Execute
    a = reader_acr(np.random.default_rng(7), findings, 0.1)
    b = reader_acr(np.random.default_rng(7), findings, 0.1)
    c = reader_acr(np.random.default_rng(8), findings, 0.1)
    # Assert
    assert a.dtype.kind == "i" and set(np.unique(a)) <= set(range(1, 7))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_reader_disagrees_cancers_are_4_5_or_6_mostly():
    # Prepare: 3000 cancers, 3000 benign lesions, 3000 normal breasts
    findings = np.repeat([CANCER, BENIGN, NORMAL], 3000)
    # Execute
    acr = reader_acr(np.random.default_rng(0), findings, 0.1)
    # Assert: every finding is read in several categories (disagreement), cancers mostly 4+
    for f in (CANCER, BENIGN, NORMAL):
        assert len(np.unique(acr[findings == f])) >= 3
    assert (acr[findings == CANCER] >= 4).mean() > 0.95
    assert (acr[findings == NORMAL] == 1).mean() > 0.75


@pytest.mark.parametrize(("prevalence", "lesions"), [(0.05, 0.15), (0.3, 0.6), (0.8, 0.6)])
def test_malignancy_rate_per_category_in_birads_range(prevalence, lesions):
    # Prepare: 3000 patients (6000 breasts) of a screening, a mixed and an enriched population
    findings = _breasts(3000, prevalence, lesions)
    # Execute
    rates = _rates(findings, reader_acr(np.random.default_rng(1), findings, 0.1))
    # Assert
    for c, (rate, n) in rates.items():
        lo, hi = BIRADS.get(c, (1.0, 1.0))  # 6: biopsy-proven
        assert lo <= rate <= hi, f"ACR {c}: malignancy rate {rate:.3f} of {n} breasts"
    assert rates[4][1] > 50 and rates[5][1] > 50


@pytest.mark.parametrize(("centre", "prevalence", "lesions", "noise"), _synthetic_segments())
def test_every_shipped_segment_reads_in_birads_ranges(centre, prevalence, lesions, noise):
    # Prepare: the segment's population, scaled to 20000 patients
    findings = _breasts(20_000, prevalence, lesions)
    # Execute
    rates = _rates(findings, reader_acr(np.random.default_rng(2), findings, noise))
    # Assert
    for c, (rate, n) in rates.items():
        lo, hi = BIRADS.get(c, (1.0, 1.0))
        assert lo <= rate <= hi, f"{centre}: ACR {c} malignancy rate {rate:.4f} of {n} breasts"
