"""The StrEnums of the wire models and the Literals of the pure modules name the same values, in order."""

from __future__ import annotations

from enum import StrEnum

import pytest

from schemas import enums, vocabulary


@pytest.mark.parametrize(
    ("enum", "values"),
    [
        (enums.Category, vocabulary.CATEGORIES),
        (enums.RiskLevel, vocabulary.RISK_LEVELS),
        (enums.Tier, vocabulary.TIERS),
        (enums.Certification, vocabulary.CERTIFICATIONS),
        (enums.Role, vocabulary.ROLES),
    ],
)
def test_enum_and_vocabulary_list_the_same_values_in_the_same_order(
    enum: type[StrEnum], values: tuple[str, ...]
) -> None:
    assert tuple(member.value for member in enum) == values
