"""The domain's fixed vocabularies as typing Literals, in their natural order (one home for them).

Pure modules (routing, network file) type their fields with these; `schemas.enums` offers the same
values as StrEnums for the wire models, and a test keeps the two identical.
"""

from __future__ import annotations

from typing import Literal, get_args

Category = Literal[
    "social_assistance",
    "elderly_care",
    "child_protection",
    "disability_support",
    "mental_health",
    "crisis_intervention",
    "medical_social_work",
    "family_support",
    "livelihood",
    "community_governance",
    "resource_linkage",
]
RiskLevel = Literal["low", "medium", "high", "critical"]
Tier = Literal["village", "township", "county", "city"]
Certification = Literal["none", "assistant", "intermediate", "senior"]
Role = Literal["worker", "supervisor", "system"]

CATEGORIES: tuple[str, ...] = get_args(Category)
RISK_LEVELS: tuple[str, ...] = get_args(RiskLevel)  # least to most urgent
TIERS: tuple[str, ...] = get_args(Tier)  # lowest to highest
CERTIFICATIONS: tuple[str, ...] = get_args(Certification)  # lowest to highest
ROLES: tuple[str, ...] = get_args(Role)
