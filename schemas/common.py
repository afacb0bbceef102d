"""Field types shared by the schema modules."""

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime


def utc_now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


# Aware timestamps only, normalised to UTC so they serialise with a `Z`.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
