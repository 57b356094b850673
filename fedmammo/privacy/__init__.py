"""Differential privacy per centre (Opacus), budgets across rounds, membership audits."""

from __future__ import annotations

from fedmammo.privacy.accounting import (
    BudgetExceeded,
    CentreAccountant,
    PrivacyBudget,
    PrivacyUsageError,
    plan_noise,
)
from fedmammo.privacy.audit import AuditResult
from fedmammo.privacy.engine import DPIncompatibleModelError, DPSession, validate_for_dp

__all__ = [
    "AuditResult",
    "BudgetExceeded",
    "CentreAccountant",
    "DPIncompatibleModelError",
    "DPSession",
    "PrivacyBudget",
    "PrivacyUsageError",
    "plan_noise",
    "validate_for_dp",
]
