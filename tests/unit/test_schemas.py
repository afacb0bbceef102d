import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.enums import CaseStatus, Certification, Tier
from schemas.events import (
    EVENT_CLASSES,
    STATUS_AFTER,
    AssignedData,
    CaseAssigned,
    CaseDeclined,
    CaseEscalated,
    data_class,
    event_name,
    event_type,
    new_event,
    parse_case_event,
    status_after,
)
from schemas.referral import (
    KafkaReferralSubmission,
    ReferralSubmission,
    id_number_check_char,
    validation_errors,
)
from schemas.topics import CASE_COMMANDS, CASE_EVENTS, REFERRALS_SUBMITTED, TOPIC_PARTITIONS, dlq

KNOWN_VALID_ID_NUMBER = "11010519491231002X"
T0 = datetime(2024, 5, 1, 8, 30, tzinfo=UTC)


def id_number(first17: str) -> str:
    """Return a checksum-valid resident id number for the given first 17 digits."""
    return first17 + id_number_check_char(first17)


def submission(**overrides: Any) -> dict[str, Any]:
    """Return a valid submission as JSON-ready data, with top-level overrides."""
    body: dict[str, Any] = {
        "room_id": "V-360402101001",
        "submitted_by": "w-0001",
        "category": "elderly_care",
        "risk_level": "medium",
        "summary": "独居老人，近期行动不便，需要上门探访。",
        "resident": {
            "name": "王秀英",
            "id_number": KNOWN_VALID_ID_NUMBER,
            "phone": "+86 138-0000-0000",
            "birth_year": 1949,
            "gender": "female",
            "address": "十里街道某小区 3 栋",
            "household_id": "H-001",
        },
        "consent": {"given": True, "scope": "service", "recorded_by": "w-0001"},
        "occurred_at": "2024-05-01T08:00:00+08:00",
    }
    body.update(overrides)
    return body


def errors_of(body: dict[str, Any], model: type[ReferralSubmission] = ReferralSubmission) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return {error.field: error.message for error in validation_errors(caught.value)}


def common_data(status: CaseStatus, sequence: int = 1) -> dict[str, Any]:
    return {
        "case_id": "case-7f3a",
        "status": status.value,
        "tier": "township",
        "station_id": "T-360402101",
        "category": "elderly_care",
        "risk_level": "high",
        "resident_ref": "rr-3b1d9c",
        "sequence": sequence,
    }


EXTRA_DATA: dict[str, dict[str, Any]] = {
    "received": {"room_id": "V-360402101001", "submitted_by": "w-0001"},
    "routed": {"rule": "serious", "reason": "risk high", "policy_version": 1, "explanation": {"k": [1]}},
    "assigned": {
        "worker_id": "w-0001",
        "accept_by": "2024-05-01T09:30:00Z",
        "candidates_considered": 4,
        "score": 0.25,
        "explanation": {"load": 0.25},
    },
    "accepted": {"worker_id": "w-0001"},
    "declined": {"worker_id": "w-0001", "reason": "on leave"},
    "offer_expired": {"worker_id": "w-0001"},
    "queued": {"waiting_at": "M-3604"},
    "escalated": {"from_tier": "township", "from_station_id": "T-360402101", "reason": "no_capacity"},
    "referred_back": {"from_tier": "county", "from_station_id": "C-360402", "reason": "local follow-up"},
    "started": {"worker_id": "w-0001"},
    "resolved": {"worker_id": "w-0001", "outcome": "linked to home-care service"},
    "closed": {"worker_id": None},
    "sla_warning": {"deadline": "2024-05-01T09:30:00Z", "kind": "accept"},
    "sla_breached": {"deadline": "2024-05-08T08:30:00Z", "kind": "resolve"},
    "notified": {"channel": "webhook", "recipient": "w-0001", "attempts": 1, "purpose": "task"},
    "notification_failed": {
        "channel": "webhook",
        "recipient": "w-0001",
        "attempts": 5,
        "purpose": "escalation",
        "error": "HTTP 503",
    },
}


ENVELOPE_FIELDS = {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"}


def event_data(name: str) -> dict[str, Any]:
    status = STATUS_AFTER[name] or CaseStatus.OFFERED
    return {**common_data(status, sequence=3), **EXTRA_DATA[name]}


def event_json(name: str) -> dict[str, Any]:
    """Return a valid event of `name` as JSON-ready data."""
    return new_event(name, source="caselink/router", data=event_data(name), time=T0).model_dump(mode="json")


# --- topics and enums ---------------------------------------------------------------------


def test_every_consumed_topic_has_a_dlq_with_the_same_partition_count() -> None:
    for topic in (REFERRALS_SUBMITTED, CASE_EVENTS, CASE_COMMANDS):
        assert TOPIC_PARTITIONS[dlq(topic)] == TOPIC_PARTITIONS[topic]
    assert dlq(CASE_EVENTS) == "caselink.case.events.dlq"


def test_tiers_are_ordered_village_to_city_with_parents_and_children() -> None:
    assert [tier.rank for tier in Tier] == [0, 1, 2, 3]
    assert Tier.VILLAGE.parent_tier() is Tier.TOWNSHIP
    assert Tier.CITY.parent_tier() is None
    assert Tier.COUNTY.child_tier() is Tier.TOWNSHIP
    assert Tier.VILLAGE.child_tier() is None
    assert Certification.INTERMEDIATE.rank > Certification.ASSISTANT.rank


# --- referral submissions -----------------------------------------------------------------


def test_known_valid_id_number_passes_the_checksum() -> None:
    assert id_number_check_char(KNOWN_VALID_ID_NUMBER[:17]) == "X"


def test_valid_submission_parses_and_normalises_fields() -> None:
    parsed = ReferralSubmission.model_validate(submission(summary="  needs a visit  "))
    assert parsed.summary == "needs a visit"
    assert parsed.resident.phone == "+8613800000000"
    assert parsed.occurred_at == datetime(2024, 5, 1, 0, 0, tzinfo=UTC)
    assert parsed.submission_id is None


def test_lowercase_x_check_character_is_accepted_and_uppercased() -> None:
    resident = {**submission()["resident"], "id_number": KNOWN_VALID_ID_NUMBER.lower()}
    parsed = ReferralSubmission.model_validate(submission(resident=resident))
    assert parsed.resident.id_number == KNOWN_VALID_ID_NUMBER


def test_generated_id_number_with_a_numeric_check_digit_is_accepted() -> None:
    number = id_number("44030619851017201")
    resident = {**submission()["resident"], "id_number": number}
    assert ReferralSubmission.model_validate(submission(resident=resident)).resident.id_number == number


def test_wrong_id_checksum_is_rejected_on_resident_id_number_without_echoing_it() -> None:
    valid = id_number("44030619851017201")
    wrong = valid[:17] + ("0" if valid[17] != "0" else "1")
    resident = {**submission()["resident"], "id_number": wrong}
    errors = errors_of(submission(resident=resident))
    assert list(errors) == ["resident.id_number"]
    assert "check digit" in errors["resident.id_number"]
    assert wrong not in json.dumps(errors) and wrong[:17] not in json.dumps(errors)


def test_id_number_with_an_impossible_birth_date_is_rejected() -> None:
    resident = {**submission()["resident"], "id_number": id_number("11010519490231002")}
    assert "birth date" in errors_of(submission(resident=resident))["resident.id_number"]


def test_consent_not_given_is_rejected() -> None:
    consent = {"given": False, "scope": "service", "recorded_by": "w-0001"}
    errors = errors_of(submission(consent=consent))
    assert errors == {"consent.given": "consent must be given before a referral is recorded"}


def test_unknown_category_names_the_field() -> None:
    errors = errors_of(submission(category="housing_repair"))
    assert list(errors) == ["category"]
    assert "housing_repair" not in errors["category"]


@pytest.mark.parametrize("value", ["x", "张秘密"])
def test_an_unknown_field_is_named_as_unknown_whatever_its_value(value: str) -> None:
    assert errors_of(submission(unexpected_field=value)) == {
        "unexpected_field": "Unknown field: not part of this document"
    }


def test_blank_summary_is_rejected_after_stripping() -> None:
    assert "summary" in errors_of(submission(summary="   "))


def test_invalid_personal_fields_are_reported_without_echoing_their_values() -> None:
    resident = {"name": "赵某某", "phone": "call 13800000000 after 6", "birth_year": 2999, "nickname": "老赵"}
    errors = errors_of(submission(resident=resident))
    assert set(errors) == {"resident.phone", "resident.birth_year", "resident.nickname"}
    assert "13800000000" not in json.dumps(errors, ensure_ascii=False)
    assert "老赵" not in json.dumps(errors, ensure_ascii=False)


def test_occurred_at_far_in_the_future_is_rejected() -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert ReferralSubmission.model_validate(submission(occurred_at=soon)).occurred_at is not None
    assert "occurred_at" in errors_of(submission(occurred_at=later))


def test_kafka_submission_requires_submission_id_and_submitter() -> None:
    body = submission()
    del body["submitted_by"]
    assert set(errors_of(body, KafkaReferralSubmission)) == {"submission_id", "submitted_by"}
    sid = uuid.uuid4()
    parsed = KafkaReferralSubmission.model_validate_json(json.dumps(submission(submission_id=str(sid))))
    assert parsed.submission_id == sid


def test_malformed_json_is_reported_as_a_root_error() -> None:
    with pytest.raises(ValidationError) as caught:
        KafkaReferralSubmission.model_validate_json(b'{"room_id": ')
    assert [error.field for error in validation_errors(caught.value)] == ["$"]


# --- case events --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EVENT_CLASSES))
def test_every_event_type_round_trips_through_json(name: str) -> None:
    event = new_event(name, source="caselink/router", data=event_data(name), time=T0)
    parsed = parse_case_event(event.model_dump_json())
    assert type(parsed) is EVENT_CLASSES[name]
    assert parsed == event
    assert parse_case_event(event.model_dump(mode="json")) == event


@pytest.mark.parametrize("name", sorted(EVENT_CLASSES))
def test_event_json_uses_cloudevents_and_contract_field_names(name: str) -> None:
    dumped = event_json(name)
    assert set(dumped) == ENVELOPE_FIELDS
    assert dumped["type"] == f"caselink.case.{name}.v1"
    assert dumped["subject"] == dumped["data"]["case_id"]
    assert dumped["time"] == "2024-05-01T08:30:00Z"
    assert set(event_data(name)) <= set(dumped["data"])


def test_discriminator_picks_the_class_named_by_type() -> None:
    raw = new_event("escalated", source="caselink/router", data=event_data("escalated"), time=T0)
    parsed = parse_case_event(raw.model_dump_json().encode())
    assert isinstance(parsed, CaseEscalated)
    assert parsed.data.from_tier is Tier.TOWNSHIP
    assert parsed.data.reason == "no_capacity"


def test_unknown_extra_fields_in_data_and_envelope_are_tolerated_by_the_parser() -> None:
    dumped = event_json("assigned")
    dumped["data"]["added_in_a_later_release"] = {"x": 1}
    dumped["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    parsed = parse_case_event(json.dumps(dumped))
    assert isinstance(parsed, CaseAssigned)
    assert parsed.data.model_extra == {"added_in_a_later_release": {"x": 1}}


def test_unknown_event_type_is_rejected_by_the_parser() -> None:
    dumped = event_json("accepted")
    dumped["type"] = "caselink.case.teleported.v1"
    with pytest.raises(ValidationError):
        parse_case_event(dumped)


def test_declined_event_requires_a_reason() -> None:
    data = event_data("declined")
    del data["reason"]
    with pytest.raises(ValidationError):
        new_event("declined", source="caselink/router", data=data)


def test_producers_cannot_add_undeclared_data_fields() -> None:
    with pytest.raises(ValueError, match="undeclared"):
        new_event("queued", source="caselink/router", data={**event_data("queued"), "resident_name": "x"})


def test_producers_cannot_emit_a_status_the_event_does_not_lead_to() -> None:
    data = {**event_data("accepted"), "status": CaseStatus.RESOLVED.value}
    with pytest.raises(ValueError, match="accepted"):
        new_event("accepted", source="caselink/router", data=data)


def test_new_event_takes_a_data_model_and_sets_subject_to_the_case_id() -> None:
    data = AssignedData.model_validate(event_data("assigned"))
    event = new_event("assigned", source="caselink/router", data=data)
    assert event.subject == "case-7f3a"
    assert event.time.tzinfo is not None
    with pytest.raises(TypeError):
        new_event("declined", source="caselink/router", data=data)


def test_subject_must_match_the_case_id() -> None:
    dumped = event_json("started")
    dumped["subject"] = "another-case"
    with pytest.raises(ValidationError):
        parse_case_event(dumped)


def test_event_names_and_types_map_both_ways() -> None:
    assert event_type("assigned") == "caselink.case.assigned.v1"
    assert event_name("caselink.case.offer_expired.v1") == "offer_expired"
    assert data_class("declined").model_fields["reason"].is_required()
    assert CaseDeclined.model_fields["type"].default == event_type("declined")
    with pytest.raises(ValueError):
        event_type("teleported")


def test_status_after_keeps_the_current_status_for_sla_and_notifier_events() -> None:
    assert status_after("assigned", CaseStatus.ROUTED) is CaseStatus.OFFERED
    assert status_after("declined", CaseStatus.OFFERED) is CaseStatus.ROUTED
    assert status_after("sla_warning", CaseStatus.IN_PROGRESS) is CaseStatus.IN_PROGRESS
    assert status_after("notified", CaseStatus.ESCALATED) is CaseStatus.ESCALATED
