"""Field types shared by the schema modules."""

import re
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


# C0/C1 control characters other than tab and line breaks: no human text needs them, and
# terminal escapes in a summary would reach whoever reads it in a log viewer or a console.
_CONTROL = re.compile(r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class InputModel(BaseModel):
    """A model that people or outside systems send: no string in it may carry a NUL character
    (no human text contains one, and PostgreSQL text cannot store it) or another control character.
    Lone surrogates (JSON can escape one, UTF-8 cannot encode it) pydantic refuses itself."""

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul_characters(cls, value: Any) -> Any:
        if isinstance(value, str):
            if "\x00" in value:
                raise PydanticCustomError("nul_character", "must not contain NUL characters")
            if _CONTROL.search(value):
                raise PydanticCustomError("control_character", "must not contain control characters")
        return value
