"""Property-based tests (Hypothesis) of what outsiders send: referral submissions and routing
policy files. Whatever arrives, the answer is the model or a validation error naming fields;
never another exception (a 500, a crashed consumer, a traceback from `caselink policy check`),
and never an error message that repeats personal data it was given."""

from __future__ import annotations

import json
import re
import string
from datetime import date, timedelta
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.referral import KafkaReferralSubmission, Resident, id_number_check_char, validation_errors
from services.intake.domain import SubmissionInvalid, json_nesting_exceeds, parse_kafka_submission, resident_ref
from services.router.policy import (
    PolicyError,
    default_policy,
    format_iso_duration,
    parse_iso_duration,
    parse_policy,
)

pytestmark = [pytest.mark.reliability]
PROPERTIES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)

VALID: dict[str, Any] = {
    "submission_id": "7d0c1c52-3c8e-4a4e-9a57-0f0f2f1d6a11",
    "room_id": "V-360402101001",
    "submitted_by": "w-0031",
    "category": "elderly_care",
    "risk_level": "medium",
    "summary": "独居老人，近一周未出门",
    "resident": {"name": "王秀英", "birth_year": 1941, "address": "十里社区3栋"},
    "consent": {"given": True, "scope": "service", "recorded_by": "w-0031"},
}
RESIDENT_FIELDS = ("name", "id_number", "phone", "birth_year", "gender", "address", "household_id")


def with_value(document: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(document))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


paths = st.sampled_from([(k,) for k in VALID] + [("resident", k) for k in RESIDENT_FIELDS]
                        + [("consent", k) for k in ("given", "scope", "recorded_by")])  # fmt: skip


@PROPERTIES
@given(path=paths, value=json_values)
def test_any_value_in_any_field_gives_a_submission_or_errors_naming_fields(path: tuple[str, ...], value: Any) -> None:
    raw = json.dumps(with_value(VALID, path, value)).encode()
    try:
        parse_kafka_submission(raw)
    except SubmissionInvalid as invalid:
        assert invalid.errors and all(e.field and e.message for e in invalid.errors)


@PROPERTIES
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_on_the_submissions_topic_give_a_submission_or_errors_naming_fields(raw: bytes) -> None:
    try:
        parse_kafka_submission(raw)
    except SubmissionInvalid as invalid:
        assert invalid.errors


secret_text = st.text(alphabet=string.ascii_letters + string.digits + "王秀英陈桂十里社区栋", min_size=6, max_size=40)


@PROPERTIES
@given(field=st.sampled_from(["name", "id_number", "phone", "address", "household_id"]), secret=secret_text)
def test_validation_errors_never_repeat_the_personal_data_they_refuse(field: str, secret: str) -> None:
    # Made invalid on purpose (a control character, or too long), so every field produces an error.
    for bad in (secret + "\x07", secret * 30):
        try:
            KafkaReferralSubmission.model_validate(with_value(VALID, ("resident", field), bad))
        except ValidationError as exc:
            errors = validation_errors(exc)
            assert errors and all(secret not in e.message for e in errors), errors


birth_dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2020, 12, 31))


def id_number(born: date, serial: int) -> str:
    first17 = f"360402{born:%Y%m%d}{serial:03d}"
    return first17 + id_number_check_char(first17)


@PROPERTIES
@given(born=birth_dates, serial=st.integers(0, 999))
def test_every_id_number_with_its_check_character_is_valid(born: date, serial: int) -> None:
    number = id_number(born, serial)
    assert Resident(name="王秀英", id_number=number.lower()).id_number == number


@PROPERTIES
@given(born=birth_dates, serial=st.integers(0, 999), position=st.integers(0, 17), digit=st.sampled_from("0123456789X"))
def test_any_single_character_changed_in_an_id_number_is_refused(
    born: date, serial: int, position: int, digit: str
) -> None:
    number = id_number(born, serial)
    changed = number[:position] + digit + number[position + 1 :]
    assume(changed != number and (position == 17 or digit != "X"))
    with pytest.raises(ValidationError) as refused:
        Resident(name="王秀英", id_number=changed)
    assert [e.field for e in validation_errors(refused.value)] == ["id_number"]


names = st.text(st.characters(categories=["L", "M"]), min_size=1, max_size=20).filter(str.strip)


@PROPERTIES
@given(name=names, spaces=st.sampled_from(["", " ", "  "]), year=st.integers(1900, 2020))
def test_a_residents_reference_ignores_spacing_and_case_and_never_shows_the_name(
    name: str, spaces: str, year: int
) -> None:
    ref = resident_ref(Resident(name=name, birth_year=year, address="十里社区"), key="k")
    again = resident_ref(
        Resident(name=f"{spaces}{name.upper()}{spaces}", birth_year=year, address="十里社区 "), key="k"
    )
    assume(name.upper().casefold() == name.casefold())  # some letters change under upper() beyond casefolding
    assert ref == again and re.fullmatch(r"r_[0-9a-f]{32}", ref)  # hex only: nothing of the name shows


@PROPERTIES
@given(text=st.text(alphabet='[]{}"\\ ab', max_size=80))
def test_nesting_depth_is_measured_like_a_json_parser_would(text: str) -> None:
    try:
        value = json.loads(text)
    except ValueError:
        return  # not JSON: only its depth for valid JSON is specified

    def depth(v: Any) -> int:
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()
        return (1 + max((depth(c) for c in children), default=0)) if isinstance(v, dict | list) else 0

    for limit in range(0, 6):
        assert json_nesting_exceeds(text.encode(), limit) == (depth(value) > limit)


# ---------------------------------------------------------------- routing policy files

DEFAULT = default_policy().model_dump(mode="json", exclude_none=True)
policy_paths = st.sampled_from(
    [("version",), ("sla",), ("sla", "critical"), ("sla", "high", "accept"), ("sla", "low", "resolve"),
     ("load_weight",), ("load_weight", "critical"), ("offers_per_tier",), ("lateral",), ("rules",),
     ("rules", 0), ("rules", 0, "tier"), ("rules", 0, "when"), ("rules", 0, "require"), ("rules", -1, "name")]
)  # fmt: skip


def policy_with(path: tuple[Any, ...], value: Any) -> str:
    document = json.loads(json.dumps(DEFAULT, default=str))
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return yaml.safe_dump(document, allow_unicode=True)


@PROPERTIES
@given(path=policy_paths, value=json_values)
def test_any_value_anywhere_in_a_policy_gives_a_policy_or_errors_naming_where(
    path: tuple[Any, ...], value: Any
) -> None:
    try:
        parse_policy(policy_with(path, value))
    except PolicyError as error:
        assert error.messages and all(": " in m for m in error.messages), error.messages


durations = st.from_regex(r"\AP(\d{1,12}W)?(\d{1,12}D)?(T(\d{1,12}H)?(\d{1,12}M)?(\d{1,12}S)?)?\Z")


@PROPERTIES
@given(value=durations | st.text(max_size=20))
def test_any_duration_in_a_policy_gives_a_policy_or_errors_naming_where(value: str) -> None:
    try:
        parse_policy(policy_with(("sla", "high", "accept"), value))
    except PolicyError as error:
        assert any(m.startswith("sla.high") for m in error.messages), error.messages


@PROPERTIES
@given(text=st.text(max_size=200))
def test_any_text_as_a_policy_file_gives_a_policy_or_errors(text: str) -> None:
    try:
        parse_policy(text)
    except PolicyError as error:
        assert error.messages


@PROPERTIES
@given(seconds=st.integers(1, 10 * 365 * 86400))
def test_a_duration_survives_formatting_and_parsing(seconds: int) -> None:
    duration = timedelta(seconds=seconds)
    assert parse_iso_duration(format_iso_duration(duration)) == duration
