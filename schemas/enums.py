"""Enumerations shared by submissions, case events and the services."""

from enum import StrEnum


class Category(StrEnum):
    """The kind of help a referral asks for."""

    SOCIAL_ASSISTANCE = "social_assistance"
    ELDERLY_CARE = "elderly_care"
    CHILD_PROTECTION = "child_protection"
    DISABILITY_SUPPORT = "disability_support"
    MENTAL_HEALTH = "mental_health"
    CRISIS_INTERVENTION = "crisis_intervention"
    MEDICAL_SOCIAL_WORK = "medical_social_work"
    FAMILY_SUPPORT = "family_support"
    LIVELIHOOD = "livelihood"
    COMMUNITY_GOVERNANCE = "community_governance"
    RESOURCE_LINKAGE = "resource_linkage"


class RiskLevel(StrEnum):
    """How urgent a case is, least urgent first."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """Return 0 for low up to 3 for critical."""
        return list(RiskLevel).index(self)


class Tier(StrEnum):
    """A level of the station network, lowest first."""

    VILLAGE = "village"
    TOWNSHIP = "township"
    COUNTY = "county"
    CITY = "city"

    @property
    def rank(self) -> int:
        """Return 0 for village up to 3 for city."""
        return list(Tier).index(self)

    def parent_tier(self) -> "Tier | None":
        """Return the next tier up, or None at the top."""
        tiers = list(Tier)
        return tiers[self.rank + 1] if self.rank + 1 < len(tiers) else None

    def child_tier(self) -> "Tier | None":
        """Return the next tier down, or None at the bottom."""
        return list(Tier)[self.rank - 1] if self.rank > 0 else None


class Certification(StrEnum):
    """A worker's national social-work qualification, lowest first."""

    NONE = "none"
    ASSISTANT = "assistant"
    INTERMEDIATE = "intermediate"
    SENIOR = "senior"

    @property
    def rank(self) -> int:
        """Return 0 for none up to 3 for senior."""
        return list(Certification).index(self)


class Role(StrEnum):
    """What a user may do."""

    WORKER = "worker"
    SUPERVISOR = "supervisor"
    SYSTEM = "system"


class Gender(StrEnum):
    """A resident's gender as recorded by the submitting room."""

    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNKNOWN = "unknown"


class ConsentScope(StrEnum):
    """What the resident consented to."""

    SERVICE = "service"
    SERVICE_AND_SHARE = "service_and_share"


class CaseStatus(StrEnum):
    """A case's status after its latest lifecycle event."""

    RECEIVED = "received"
    ROUTED = "routed"
    ESCALATED = "escalated"
    OFFERED = "offered"
    ACCEPTED = "accepted"
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    RESOLVED = "resolved"
    CLOSED = "closed"
