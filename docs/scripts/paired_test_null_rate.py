"""How often the tables' rule calls a difference of two equally good models significant.

    python docs/scripts/paired_test_null_rate.py [--studies 400] [--malignant 5 10 20]
                                                 [--min-units 5]

Each simulated study: max(16, 4 k) patients of 4 images, k of them with 2 malignant images;
two models whose scores have the same distribution (a true AUROC difference of 0, a patient
effect shared by both). ``delta_auc`` (patient-clustered paired bootstrap CI and paired
permutation p, 1000 resamples, as FedAvg's "What each centre gains" table). Prints, per k, the
fraction of studies whose CI lies beside 0, whose p is below 0.05, and that the tables' rule
"CI beside 0 and p < 0.05" calls significant (nominal: 5%). docs/report.md quotes it.
``--min-units 1`` lets the tables give a CI from fewer than 5 patients of a class
(``metrics.MIN_UNITS_PER_CLASS``), to see why they do not: ``--malignant 2 3 --min-units 1``.
"""

from __future__ import annotations

import argparse

import numpy as np

from fedmammo.evaluation import metrics
from fedmammo.evaluation.metrics import delta_auc


def null_rates(
    malignant: int, studies: int, effect: float = 1.0
) -> tuple[float, float, float, int]:
    """(CI beside 0, p < 0.05, both: fractions of the studies with a CI; studies with a CI)."""
    rng = np.random.default_rng(0)
    patients = max(16, 4 * malignant)
    groups = np.repeat(np.arange(patients), 4)
    y = ((groups < malignant) & (np.tile(np.arange(4), patients) < 2)).astype(int)
    ci = p_only = both = counted = 0
    for study in range(studies):
        shared = 0.5 * rng.normal(size=patients)[groups]
        a = effect * y + shared + rng.normal(size=y.size)
        b = effect * y + shared + rng.normal(size=y.size)
        _, lo, hi, p = delta_auc(y, a, b, n_boot=1000, seed=study, groups=groups)
        if np.isnan(lo):
            continue
        counted += 1
        beside = bool(lo > 0 or hi < 0)
        ci += beside
        p_only += bool(p < 0.05)
        both += beside and p < 0.05
    n = max(counted, 1)
    return ci / n, p_only / n, both / n, counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--studies", type=int, default=400, help="simulated null studies per row (default: 400)"
    )
    parser.add_argument(
        "--malignant",
        type=int,
        nargs="+",
        default=[5, 10, 20],
        help="malignant test patients of each row (default: 5 10 20)",
    )
    parser.add_argument(
        "--min-units",
        type=int,
        default=metrics.MIN_UNITS_PER_CLASS,
        help="patients of a class needed for a CI (default: the tables' "
        f"{metrics.MIN_UNITS_PER_CLASS})",
    )
    args = parser.parse_args()
    metrics.MIN_UNITS_PER_CLASS = args.min_units
    print(
        "| malignant test patients | CI beside 0 | p < 0.05 | both: called significant | studies |"
    )
    print("|---|---|---|---|---|")
    for k in args.malignant:
        ci, p, both, n = null_rates(k, args.studies)
        rates = [f"{100 * r:.1f}%" if n else "n/a (no CI)" for r in (ci, p, both)]
        print(f"| {k} | {' | '.join(rates)} | {n} |")


if __name__ == "__main__":
    main()
