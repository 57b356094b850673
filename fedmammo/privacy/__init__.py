"""Differential privacy per centre (Opacus), budgets across rounds, membership audits.

Names are imported on first use (PEP 562), so ``import fedmammo.privacy.accounting`` on a
centre without DP does not load Opacus, SciPy or scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AuditResult": "audit",
    "BudgetExceeded": "accounting",
    "CentreAccountant": "accounting",
    "DPIncompatibleModelError": "engine",
    "DPSession": "engine",
    "PrivacyBudget": "accounting",
    "PrivacyUsageError": "accounting",
    "plan_noise": "accounting",
    "validate_for_dp": "engine",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
