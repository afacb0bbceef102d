"""Field types shared by the schema modules."""

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, field_validator
from pydantic_core import PydanticCustomError


def utc_now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


# Aware timestamps only, normalised to UTC so they serialise with a `Z`.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]


class InputModel(BaseModel):
    """A model that people or outside systems send: no string in it may carry a NUL character
    (no human text contains one, and PostgreSQL text cannot store it)."""

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul_characters(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise PydanticCustomError("nul_character", "must not contain NUL characters")
        return value
