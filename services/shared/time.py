"""The clock (one place, so tests can reason about it)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """A moment as events write it: UTC, with `Z` (not `+00:00`)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
