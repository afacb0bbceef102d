"""`caselink tail`'s pure half: one line per event, the filters, tolerance of unknown and broken messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.events import EVENT_CLASSES, data_class, new_event
from services.tail import (
    KEY_FIELDS,
    EventFilter,
    base_name,
    decode,
    format_event,
    key_fields,
    render,
    short_type,
    unknown_type_warning,
)

WHEN = datetime(2025, 11, 22, 8, 30, 5, 123456, tzinfo=UTC)
COMMON = {
    "case_id": "c-0001",
    "tier": "township",
    "station_id": "T-360402101",
    "category": "elderly_care",
    "risk_level": "medium",
    "resident_ref": "r_" + "0" * 32,
}


def _event(name: str, sequence: int = 1, status: str = "offered", **data: Any) -> bytes:
    payload = {**COMMON, "status": status, "sequence": sequence, **data}
    return new_event(name, source="caselink/router", data=payload, time=WHEN).model_dump_json().encode()


ASSIGNED = _event(
    "assigned",
    sequence=3,
    worker_id="w-0031",
    accept_by="2025-11-22T09:00:00Z",
    candidates_considered=4,
    score=0.8333333,
)
ESCALATED = _event(
    "escalated", sequence=4, status="escalated", from_tier="village", from_station_id="V-1", reason="no_capacity"
)


def test_short_type_drops_prefix_and_v1_but_keeps_other_versions() -> None:
    assert short_type("caselink.case.assigned.v1") == "assigned"
    assert short_type("caselink.case.assigned.v2") == "assigned.v2"
    assert base_name("caselink.case.assigned.v2") == "assigned"
    assert base_name("sla_warning") == "sla_warning"


def test_assigned_line_has_time_type_case_sequence_status_place_and_key_fields() -> None:
    line = format_event(json.loads(ASSIGNED))
    assert line == (
        "2025-11-22T08:30:05.123Z  assigned             c-0001  #3    offered      township/T-360402101      "
        "worker_id=w-0031 accept_by=2025-11-22T09:00:00Z score=0.833 candidates_considered=4"
    )


def test_escalated_line_shows_reason_and_where_it_came_from() -> None:
    line = format_event(json.loads(ESCALATED))
    assert "escalated" in line and "#4" in line
    assert line.endswith("reason=no_capacity from_tier=village from_station_id=V-1")


def test_notified_line_shows_channel_and_recipient() -> None:
    value = _event("notified", status="offered", channel="webhook", recipient="w-0031", attempts=1, purpose="task")
    assert format_event(json.loads(value)).endswith("purpose=task channel=webhook recipient=w-0031 attempts=1")


def test_values_with_spaces_are_quoted_and_long_ones_cut() -> None:
    value = _event("declined", status="routed", worker_id="w-1", reason="on leave " + "x" * 100)
    line = format_event(json.loads(value))
    assert 'reason="on leave xxx' in line and "…" in line
    assert len(line.split("reason=", 1)[1]) == 74  # 72 characters, quoted


def test_absent_optional_fields_are_left_out() -> None:
    line = format_event(json.loads(_event("started", status="in_progress")))
    assert "worker_id" not in line


@pytest.mark.parametrize("name", sorted(EVENT_CLASSES))
def test_every_event_type_has_key_fields_that_its_data_declares(name: str) -> None:
    assert set(KEY_FIELDS[name]) <= set(data_class(name).model_fields)


def test_unknown_event_type_prints_its_extra_fields() -> None:
    event = json.loads(ASSIGNED)
    event["type"] = "caselink.case.transferred.v2"
    event["data"]["to_station"] = "T-2"
    line = format_event(event)
    assert "transferred.v2" in line
    assert key_fields("transferred.v2", event["data"])[-1] == ("to_station", "T-2")


def test_a_message_missing_most_fields_still_formats() -> None:
    assert format_event({"type": "caselink.case.queued.v1"}) == "-  queued               -  #?    -            -/-"


def test_filter_by_type_any_of_several_and_any_version() -> None:
    only = EventFilter.build(["assigned", "escalated"])
    assert only.matches(json.loads(ASSIGNED)) and only.matches(json.loads(ESCALATED))
    assert not EventFilter.build(["queued"]).matches(json.loads(ASSIGNED))
    newer = {**json.loads(ASSIGNED), "type": "caselink.case.assigned.v2"}
    assert EventFilter.build(["assigned"]).matches(newer)


def test_filter_by_case_id() -> None:
    assert EventFilter.build(case_id="c-0001").matches(json.loads(ASSIGNED))
    assert not EventFilter.build(case_id="c-9999").matches(json.loads(ASSIGNED))
    assert EventFilter.build(["assigned"], "c-0001").matches(json.loads(ASSIGNED))
    assert not EventFilter.build(["escalated"], "c-0001").matches(json.loads(ASSIGNED))


def test_no_filter_shows_everything() -> None:
    assert EventFilter.build(None, None).matches({})


def test_render_json_prints_the_raw_message_on_one_line() -> None:
    assert render(ASSIGNED + b"\n", EventFilter(), as_json=True) == ASSIGNED.decode()
    assert render(ASSIGNED, EventFilter.build(["queued"]), as_json=True) is None


def test_render_reports_undecodable_messages_unless_filtering() -> None:
    assert render(b"\xff{", EventFilter(), as_json=False, origin="t/0/7") == "undecodable message at t/0/7 (2 bytes)"
    assert render(b"[1]", EventFilter.build(["assigned"]), as_json=False) is None
    assert decode(None) is None and decode(b"") is None and decode(b'"text"') is None


def test_unknown_type_names_get_a_warning() -> None:
    assert unknown_type_warning(["assigned", "escalated.v2"]) is None
    warning = unknown_type_warning(["asigned"])
    assert warning is not None and "asigned" in warning and "assigned" in warning
