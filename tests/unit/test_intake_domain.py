"""Intake's pure decisions (services/intake/domain.py): resident references, rooms, who may submit,
and decoding of caselink.referrals.submitted messages. No database, no broker."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from schemas.referral import Resident
from services.intake.domain import (
    SubmissionInvalid,
    kafka_submission_problems,
    may_submit_for,
    parse_kafka_submission,
    resident_ref,
    room_problems,
    says_another_referral,
    submission_fingerprint,
)
from services.shared.directory import StationRow, User

KEY = "unit-test-resident-key"
# A valid GB 11643 number (check character X) with a real birth date, 1949-12-31.
ID_NUMBER = "11010519491231002X"
# The same first 17 digits with a wrong check character.
BAD_ID_NUMBER = "110105194912310021"
ROOM = "V-360402101001"
SUBMISSION_ID = "6f1c2d7e-3b4a-4c5d-8e9f-0a1b2c3d4e5f"


def _resident(**fields: Any) -> Resident:
    return Resident.model_validate({"name": "王秀英", **fields})


def _message(**overrides: Any) -> dict[str, Any]:
    """A valid caselink.referrals.submitted message as data."""
    message: dict[str, Any] = {
        "submission_id": SUBMISSION_ID,
        "room_id": ROOM,
        "submitted_by": "sys-portal",
        "category": "elderly_care",
        "risk_level": "medium",
        "summary": "独居老人，近一周未出门",
        "resident": {"name": "王秀英", "birth_year": 1941, "address": "十里社区3栋"},
        "consent": {"given": True, "scope": "service", "recorded_by": "w-0031"},
    }
    message.update(overrides)
    return message


def _invalid(raw: bytes | None) -> SubmissionInvalid:
    with pytest.raises(SubmissionInvalid) as caught:
        parse_kafka_submission(raw)
    return caught.value


# --- resident_ref ---------------------------------------------------------------------------


def test_resident_ref_is_stable_for_the_same_id_number() -> None:
    first = resident_ref(_resident(id_number=ID_NUMBER), key=KEY)
    again = resident_ref(_resident(id_number=ID_NUMBER), key=KEY)

    assert first == again
    assert first.startswith("r_") and len(first) == 2 + 32


def test_resident_ref_treats_a_lowercase_check_x_as_the_same_resident() -> None:
    upper = resident_ref(_resident(id_number=ID_NUMBER), key=KEY)
    lower = resident_ref(_resident(id_number=ID_NUMBER.lower()), key=KEY)

    assert upper == lower


def test_resident_ref_follows_the_id_number_not_the_spelling_of_the_name() -> None:
    as_recorded = resident_ref(_resident(id_number=ID_NUMBER, address="十里社区3栋"), key=KEY)
    misspelt_elsewhere = resident_ref(
        _resident(name="王秀瑛", id_number=ID_NUMBER, address="湖滨社区", birth_year=1950), key=KEY
    )

    assert as_recorded == misspelt_elsewhere


def test_resident_ref_differs_under_another_key() -> None:
    resident = _resident(id_number=ID_NUMBER)

    assert resident_ref(resident, key=KEY) != resident_ref(resident, key="another-deployment-key")


def test_resident_ref_never_contains_the_id_number_or_the_name() -> None:
    resident = _resident(id_number=ID_NUMBER, phone="13800138000", address="十里社区3栋")
    ref = resident_ref(resident, key=KEY)

    for personal in (ID_NUMBER, ID_NUMBER[:6], ID_NUMBER[6:14], "王秀英", "13800138000", "十里社区"):
        assert personal not in ref
    assert all(c in "0123456789abcdef" for c in ref.removeprefix("r_"))


def test_resident_ref_without_id_number_uses_name_birth_year_and_address() -> None:
    ref = resident_ref(_resident(birth_year=1941, address="十里社区3栋"), key=KEY)

    assert ref == resident_ref(_resident(birth_year=1941, address="十里社区3栋"), key=KEY)
    assert ref != resident_ref(_resident(birth_year=1942, address="十里社区3栋"), key=KEY)
    assert ref != resident_ref(_resident(name="王秀兰", birth_year=1941, address="十里社区3栋"), key=KEY)
    assert ref != resident_ref(_resident(birth_year=1941, address="湖滨社区5栋"), key=KEY)


def test_resident_ref_without_id_number_prefers_the_household_over_the_address() -> None:
    at_home = resident_ref(_resident(birth_year=1941, household_id="HH-0042", address="十里社区3栋"), key=KEY)
    moved = resident_ref(_resident(birth_year=1941, household_id="HH-0042", address="女儿家，濂溪社区"), key=KEY)
    other_household = resident_ref(_resident(birth_year=1941, household_id="HH-0043", address="十里社区3栋"), key=KEY)

    assert at_home == moved
    assert at_home != other_household


def test_resident_ref_ignores_full_width_characters_extra_whitespace_and_case() -> None:
    plain = resident_ref(_resident(name="Wang Xiuying", birth_year=1941, address="十里社区3栋 2单元"), key=KEY)
    # Full-width digit and ideographic space, doubled spaces, padding and capitals, as typed on a phone.
    typed = resident_ref(
        _resident(name="  WANG   Xiuying ", birth_year=1941, address="十里社区３栋\u3000 2单元"), key=KEY
    )
    full_width_latin = resident_ref(
        _resident(name="Ｗａｎｇ Ｘｉｕｙｉｎｇ", birth_year=1941, address="十里社区3栋 2单元"), key=KEY
    )

    assert typed == plain
    assert full_width_latin == plain


def test_resident_ref_without_id_number_or_place_still_distinguishes_birth_years() -> None:
    born_1941 = resident_ref(_resident(birth_year=1941), key=KEY)

    assert born_1941 == resident_ref(_resident(birth_year=1941), key=KEY)
    assert born_1941 != resident_ref(_resident(birth_year=1950), key=KEY)


# --- room_problems ------------------------------------------------------------------------


def test_an_unknown_room_cannot_receive_referrals() -> None:
    problems = room_problems("V-999", None)

    assert [p.field for p in problems] == ["room_id"]
    assert "unknown station 'V-999'" in problems[0].message


def test_a_township_station_cannot_receive_referrals() -> None:
    township = StationRow(id="T-360402101", name="十里街道社工站", tier="township", parent_id="C-360402")

    problems = room_problems(township.id, township)

    assert [p.field for p in problems] == ["room_id"]
    assert "township" in problems[0].message
    assert "village rooms" in problems[0].message


def test_a_village_room_receives_referrals() -> None:
    room = StationRow(id=ROOM, name="十里社区社工室", tier="village", parent_id="T-360402101")

    assert room_problems(ROOM, room) == []


# --- may_submit_for -----------------------------------------------------------------------


def test_a_system_user_may_submit_for_any_room() -> None:
    portal = User(id="sys-portal", role="system", station_id=None)

    assert may_submit_for(portal, ROOM)
    assert may_submit_for(portal, "V-360402102001")


def test_a_worker_may_submit_only_for_their_own_room() -> None:
    worker = User(id="w-0031", role="worker", station_id=ROOM)

    assert may_submit_for(worker, ROOM)
    assert not may_submit_for(worker, "V-360402102001")


def test_a_township_worker_may_not_submit_for_a_room_below_them() -> None:
    township_worker = User(id="w-0001", role="worker", station_id="T-360402101")

    assert not may_submit_for(township_worker, ROOM)


def test_a_supervisor_never_submits_referrals_even_for_their_own_station() -> None:
    supervisor = User(id="s-0002", role="supervisor", station_id=ROOM)

    assert not may_submit_for(supervisor, ROOM)
    assert not may_submit_for(supervisor, "V-360402102001")


# --- parse_kafka_submission ---------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"not json", b"{", b"", None, b"\xff\xfe\x00"], ids=repr)
def test_a_message_that_is_not_json_is_rejected_at_the_root(raw: bytes | None) -> None:
    invalid = _invalid(raw)

    assert [e.field for e in invalid.errors] == ["$"]
    assert "JSON" in invalid.errors[0].message
    assert invalid.submission_id is None


@pytest.mark.parametrize("document", [[_message()], "a string", 42, None], ids=repr)
def test_a_json_message_that_is_not_an_object_is_rejected_at_the_root(document: object) -> None:
    invalid = _invalid(json.dumps(document, ensure_ascii=False).encode())

    assert [e.field for e in invalid.errors] == ["$"]
    assert "JSON object" in invalid.errors[0].message
    assert invalid.submission_id is None


def test_missing_fields_are_named_and_the_submission_id_is_kept() -> None:
    message = {"submission_id": SUBMISSION_ID, "room_id": ROOM, "submitted_by": "sys-portal"}

    invalid = _invalid(json.dumps(message).encode())

    fields = {e.field for e in invalid.errors}
    assert {"category", "risk_level", "summary", "resident", "consent"} <= fields
    assert invalid.submission_id == SUBMISSION_ID


def test_a_kafka_message_must_name_its_submission_id_and_submitter() -> None:
    message = _message()
    del message["submission_id"], message["submitted_by"]

    invalid = _invalid(json.dumps(message, ensure_ascii=False).encode())

    assert {e.field for e in invalid.errors} == {"submission_id", "submitted_by"}
    assert invalid.submission_id is None


def test_a_submission_id_that_is_not_a_string_is_not_carried_into_the_rejection() -> None:
    invalid = _invalid(json.dumps(_message(submission_id=12345), ensure_ascii=False).encode())

    assert "submission_id" in {e.field for e in invalid.errors}
    assert invalid.submission_id is None


def test_an_invalid_id_number_is_named_without_echoing_it() -> None:
    message = _message(resident={"name": "王秀英", "id_number": BAD_ID_NUMBER, "address": "十里社区3栋"})

    invalid = _invalid(json.dumps(message, ensure_ascii=False).encode())

    assert [e.field for e in invalid.errors] == ["resident.id_number"]
    assert invalid.submission_id == SUBMISSION_ID
    assert all(BAD_ID_NUMBER not in e.message for e in invalid.errors)
    assert BAD_ID_NUMBER not in str(invalid)
    assert BAD_ID_NUMBER[:17] not in str(invalid)


@pytest.mark.parametrize("bad", ["11010519491231002", "1101051949123100X2", "110105194902300028"], ids=repr)
def test_malformed_id_numbers_are_named_without_echoing_them(bad: str) -> None:
    message = _message(resident={"name": "王秀英", "id_number": bad})

    invalid = _invalid(json.dumps(message, ensure_ascii=False).encode())

    assert [e.field for e in invalid.errors] == ["resident.id_number"]
    assert bad not in str(invalid)


def test_consent_not_given_is_named() -> None:
    message = _message(consent={"given": False, "scope": "service", "recorded_by": "w-0031"})

    invalid = _invalid(json.dumps(message, ensure_ascii=False).encode())

    assert [e.field for e in invalid.errors] == ["consent.given"]


def test_a_valid_message_parses() -> None:
    message = _message(resident={"name": "王秀英", "id_number": ID_NUMBER.lower(), "birth_year": 1949})

    submission = parse_kafka_submission(json.dumps(message, ensure_ascii=False).encode())

    assert submission.submission_id == uuid.UUID(SUBMISSION_ID)
    assert submission.room_id == ROOM
    assert submission.submitted_by == "sys-portal"
    assert str(submission.category) == "elderly_care"
    assert str(submission.risk_level) == "medium"
    assert submission.resident.id_number == ID_NUMBER
    assert submission.consent.given is True


ROOM_ROW = StationRow("V-360402101001", "十里社区社工室", "village", "T-360402101")


def fields_of(submitted_by: str, room_id: str, submitter: User | None, room: StationRow | None) -> list[str]:
    return [e.field for e in kafka_submission_problems(submitted_by, room_id, submitter=submitter, room=room)]


def test_kafka_submitter_must_be_a_known_user_who_may_submit_for_the_room() -> None:
    room = ROOM_ROW.id
    assert fields_of("w-9", room, None, ROOM_ROW) == ["submitted_by"]
    elsewhere = User(id="w-1", role="worker", station_id="V-360402102001")
    assert fields_of("w-1", room, elsewhere, ROOM_ROW) == ["submitted_by"]
    assert fields_of("w-2", room, User(id="w-2", role="worker", station_id=room), ROOM_ROW) == []
    assert fields_of("sys", room, User(id="sys", role="system", station_id=None), ROOM_ROW) == []


def test_a_kafka_submission_for_an_unknown_room_names_the_room_not_the_submitter() -> None:
    worker_elsewhere = User(id="w-1", role="worker", station_id="V-360402102001")
    assert fields_of("w-1", "V-999", worker_elsewhere, None) == ["room_id"]
    assert fields_of("w-9", "V-999", None, None) == ["room_id", "submitted_by"]
    township = StationRow("T-360402101", "十里街道社工站", "township", "C-360402")
    system = User(id="sys", role="system", station_id=None)
    assert fields_of("sys", township.id, system, township) == ["room_id"]


def _parsed(message: dict[str, Any]) -> Any:
    return parse_kafka_submission(json.dumps(message, ensure_ascii=False).encode())


def test_a_submission_says_the_same_whatever_its_key_field_order_or_spacing() -> None:
    first = _parsed(_message())
    reordered = parse_kafka_submission(json.dumps(dict(reversed(list(_message().items()))), indent=2).encode())
    other_key = _parsed(_message(submission_id=str(uuid.uuid4())))
    assert submission_fingerprint(first) == submission_fingerprint(reordered) == submission_fingerprint(other_key)


@pytest.mark.parametrize(
    "change",
    [{"summary": "另一件事"}, {"risk_level": "high"}, {"resident": {"name": "李四", "birth_year": 1941}}],
    ids=["summary", "risk", "resident"],
)
def test_a_submission_that_says_something_else_has_another_fingerprint(change: dict[str, Any]) -> None:
    assert submission_fingerprint(_parsed(_message(**change))) != submission_fingerprint(_parsed(_message()))


def test_a_key_claimed_before_fingerprints_were_kept_takes_any_repeat() -> None:
    assert not says_another_referral(None, "f1")
    assert not says_another_referral("f1", "f1")
    assert says_another_referral("f1", "f2")
