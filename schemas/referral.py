"""Referral submissions (HTTP body and Kafka message), their validation errors and rejections."""

import re
import unicodedata
import uuid
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from schemas.common import InputModel, UtcDatetime, utc_now
from schemas.enums import Category, ConsentScope, Gender, RiskLevel

# GB 11643-1999: weighted sum of the first 17 digits modulo 11 indexes the check characters.
ID_NUMBER_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_NUMBER_CHECK_CHARS = "10X98765432"
MAX_FUTURE_SKEW = timedelta(minutes=5)
ROOT_FIELD = "$"

# Resident id numbers and birth years are issued on China Standard Time, whatever the server's zone.
_CHINA_TZ = timezone(timedelta(hours=8), "CST")
_ID_NUMBER_SHAPE = re.compile(r"[0-9]{17}[0-9X]")
_ID_DIGITS = re.compile(r"[0-9]{17}")
_PHONE_SHAPE = re.compile(r"\+?[0-9]+")
_PHONE_SEPARATORS = re.compile(r"[ \-]")
_NAME_PUNCTUATION = frozenset("·・‧•.-'’")


def id_number_check_char(first17: str) -> str:
    """Return the GB 11643 check character for the first 17 digits of a resident id number."""
    if not _ID_DIGITS.fullmatch(first17):
        raise ValueError("expected exactly 17 ASCII digits")
    total = sum(int(digit) * weight for digit, weight in zip(first17, ID_NUMBER_WEIGHTS, strict=True))
    return ID_NUMBER_CHECK_CHARS[total % 11]


def _china_today() -> date:
    return datetime.now(_CHINA_TZ).date()


def _validate_id_number(value: str) -> str:
    # Messages here never quote the number: it is personal data and errors get logged and published.
    value = value.upper()
    if len(value) != 18:
        raise PydanticCustomError("id_number_length", "resident id number must be 18 characters")
    if not _ID_NUMBER_SHAPE.fullmatch(value):
        raise PydanticCustomError("id_number_format", "resident id number must be 17 digits followed by a digit or X")
    try:
        born = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        raise PydanticCustomError(
            "id_number_birth_date", "resident id number does not contain a valid birth date"
        ) from None
    if born > _china_today():
        raise PydanticCustomError("id_number_birth_date", "resident id number contains a birth date in the future")
    if id_number_check_char(value[:17]) != value[17]:
        raise PydanticCustomError("id_number_checksum", "resident id number check digit does not match")
    return value


class Resident(InputModel):
    """The person the referral is about."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=100)
    id_number: str | None = Field(
        default=None, description="18-character PRC resident id number; GB 11643 checksum verified"
    )
    phone: str | None = Field(
        default=None, description="digits with an optional leading +; spaces and dashes are removed"
    )
    birth_year: int | None = Field(default=None, ge=1900)
    gender: Gender = Gender.UNKNOWN
    address: str | None = Field(default=None, max_length=500)
    household_id: str | None = Field(default=None, max_length=100)

    @field_validator("name")
    @classmethod
    def _name_characters(cls, value: str) -> str:
        # Letters and marks of any script (rare characters beyond the BMP included), spaces and the
        # punctuation of names (阿依古丽·买买提, O'Brien-Smith); not emoji, symbols, or invisible
        # format characters such as bidi overrides (U+202E) that make a name display as another.
        # Controls are left to InputModel and lone surrogates to pydantic, which name them.
        for char in value:
            if not (unicodedata.category(char)[0] in "LM" or char in _NAME_PUNCTUATION or char == " "
                    or unicodedata.category(char) in ("Cs", "Cc")):  # fmt: skip
                raise PydanticCustomError(
                    "name_characters", "resident name must contain only letters, marks, spaces and · - ' ."
                )
        return value

    @field_validator("id_number")
    @classmethod
    def _check_id_number(cls, value: str | None) -> str | None:
        return None if value is None else _validate_id_number(value)

    @field_validator("phone")
    @classmethod
    def _normalise_phone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        phone = _PHONE_SEPARATORS.sub("", value)
        if not (5 <= len(phone) <= 20 and _PHONE_SHAPE.fullmatch(phone)):
            raise PydanticCustomError("phone_format", "phone must be 5 to 20 digits with an optional leading +")
        return phone

    @field_validator("birth_year")
    @classmethod
    def _birth_year_not_in_future(cls, value: int | None) -> int | None:
        if value is not None and value > _china_today().year:
            raise PydanticCustomError("birth_year_future", "birth year must not be after the current year")
        return value


class Consent(InputModel):
    """The resident's recorded consent; a referral without it is never recorded."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    # Strict: consent is a JSON `true`, never a string or a number that happens to be truthy.
    given: bool = Field(strict=True)
    scope: ConsentScope
    recorded_by: str = Field(min_length=1, max_length=64)

    @field_validator("given")
    @classmethod
    def _must_be_given(cls, value: bool) -> bool:
        if not value:
            raise PydanticCustomError("consent_not_given", "consent must be given before a referral is recorded")
        return value


class ReferralSubmission(InputModel):
    """A village room's referral of a resident (the HTTP body; see KafkaReferralSubmission)."""

    model_config = ConfigDict(
        extra="forbid",
        str_strip_whitespace=True,
        json_schema_extra={
            "examples": [
                {
                    "room_id": "V-360402101001",
                    "submitted_by": "w-0031",
                    "category": "elderly_care",
                    "risk_level": "medium",
                    "summary": "独居老人，近一周未出门，邻居反映无人送餐",
                    "resident": {"name": "王秀英", "birth_year": 1941, "gender": "female", "address": "十里社区3栋"},
                    "consent": {"given": True, "scope": "service", "recorded_by": "w-0031"},
                }
            ]
        },
    )

    submission_id: uuid.UUID | None = Field(
        default=None, description="Kafka only (idempotency); HTTP uses the Idempotency-Key header"
    )
    room_id: str = Field(min_length=1, max_length=64)
    submitted_by: str | None = Field(
        default=None, min_length=1, max_length=64, description="worker id; HTTP fills it from the token"
    )
    category: Category
    risk_level: RiskLevel
    summary: str = Field(min_length=1, max_length=2000)
    resident: Resident
    consent: Consent
    occurred_at: UtcDatetime | None = None

    @field_validator("occurred_at")
    @classmethod
    def _not_in_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value > utc_now() + MAX_FUTURE_SKEW:
            raise PydanticCustomError("occurred_at_future", "occurred_at must not be more than 5 minutes in the future")
        return value


class KafkaReferralSubmission(ReferralSubmission):
    """A referral on `caselink.referrals.submitted`: submission id and submitter are required."""

    submission_id: uuid.UUID = Field(description="unique per submission; a repeat creates nothing")
    # Kafka has no bearer token to take the submitter from, so the message must name them.
    submitted_by: str = Field(min_length=1, max_length=64, description="worker or system user id")


class FieldError(BaseModel):
    """One reason a submission was not accepted."""

    field: str = Field(description="dotted path of the offending field, e.g. resident.id_number")
    message: str


class RejectedSubmission(BaseModel):
    """A submission intake could not accept, published on `caselink.referrals.rejected`."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    submission_id: str | None = Field(description="as received; may itself be malformed")
    errors: list[FieldError]
    received_at: UtcDatetime


# Pydantic messages for these types can quote part of the input.
_GENERIC_MESSAGES = {
    "uuid_parsing": "Input should be a valid UUID",
    "uuid_type": "Input should be a valid UUID",
    "uuid_version": "Input should be a valid UUID",
    "json_invalid": "Invalid JSON",
    "extra_forbidden": "Unknown field: not part of this document",
}
# These list the allowed values, which may contain a short input by coincidence.
_MESSAGES_LISTING_CHOICES = {"enum", "literal_error"}


def _safe_message(error: ErrorDetails) -> str:
    message = _GENERIC_MESSAGES.get(error["type"], error["msg"]).removeprefix("Value error, ")
    raw = error.get("input")
    if error["type"] not in _MESSAGES_LISTING_CHOICES and isinstance(raw, str) and raw and raw in message:
        return "Invalid value"
    return message


def _dotted(location: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in location) or ROOT_FIELD


def field_errors(details: Sequence[ErrorDetails] | Sequence[dict[str, Any]]) -> list[FieldError]:
    """Turn pydantic error details (as FastAPI also reports them) into field errors that never echo the input."""
    return [FieldError(field=_dotted(tuple(e["loc"])), message=_safe_message(e)) for e in details]  # type: ignore[arg-type]


def validation_errors(exc: ValidationError) -> list[FieldError]:
    """Turn a pydantic ValidationError into field errors that never echo the input."""
    return field_errors(exc.errors(include_input=True, include_url=False, include_context=False))
