"""The lean view of case events that the notifier reads: derived from the full models, it reads
each field it has exactly as parse_case_event does, leaves the rest (a routing explanation)
unbuilt, and turns away what is not a case event."""

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.events import EVENT_CLASSES, CaseEventData, CaseEventView, data_fields, parse_case_event
from services.notifier.domain import recipients_needed
from services.notifier.handlers import PUSHED_EVENTS
from services.notifier.messages import message_facts
from tests.unit.test_schemas import event_json

VIEWS = {"notifier": PUSHED_EVENTS}
T1 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def raw_event(name: str) -> bytes:
    body = event_json(name)
    if name == "routed":  # what a crisis rule adds, and what the router explains
        body["data"] |= {
            "notify_stations": ["C-3604"],
            "explanation": {"stations": [{"top": [{"worker_id": "w-1", "score": 0.2}]}]},
        }
    return json.dumps(body).encode()


@pytest.mark.parametrize("view", sorted(VIEWS))
@pytest.mark.parametrize("name", sorted(EVENT_CLASSES))
def test_a_view_reads_its_fields_as_the_full_model_does_and_skips_the_rest(name: str, view: str) -> None:
    raw = raw_event(name)
    full, lean = parse_case_event(raw), VIEWS[view].parse(raw)
    assert (lean.id, lean.type, lean.subject, lean.time, lean.source) == (
        full.id,
        full.type,
        full.subject,
        full.time,
        full.source,
    )
    expected = set(CaseEventData.model_fields) | (VIEWS[view].fields & set(type(full.data).model_fields))
    assert set(data_fields(lean.data)) == expected
    assert data_fields(lean.data) == {field: getattr(full.data, field) for field in expected}
    assert "explanation" not in data_fields(lean.data)


@pytest.mark.parametrize("name", sorted(EVENT_CLASSES))
def test_the_notifier_finds_the_same_recipients_and_facts_from_its_view(name: str) -> None:
    raw = raw_event(name)
    full = parse_case_event(raw).data.model_dump(mode="json")
    lean = PUSHED_EVENTS.parse(raw).data.model_dump(mode="json")
    event_type = f"caselink.case.{name}.v1"
    assert recipients_needed(event_type, lean) == recipients_needed(event_type, full)
    assert message_facts(event_type, lean, T1) == message_facts(event_type, full, T1)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda e: e | {"id": "not-a-uuid"},
        lambda e: e | {"data": {}},
        lambda e: e | {"subject": "another-case"},
        lambda e: e | {"type": "caselink.case.unheard_of.v1"},
        lambda e: e | {"data": e["data"] | {"sequence": 0}},
        lambda e: e | {"data": e["data"] | {"status": "misplaced"}},
        lambda e: e | {"data": {k: v for k, v in e["data"].items() if k != "worker_id"}},
        lambda e: e | {"data": e["data"] | {"accept_by": "soon"}},
    ],
)
@pytest.mark.parametrize("view", sorted(VIEWS))
def test_a_view_turns_away_what_is_not_a_case_event(spoil: Any, view: str) -> None:
    spoiled = json.dumps(spoil(event_json("assigned"))).encode()
    with pytest.raises(ValidationError):
        parse_case_event(spoiled)
    with pytest.raises(ValidationError):
        VIEWS[view].parse(spoiled)
    with pytest.raises(ValidationError):
        VIEWS[view].parse(b"\xff\xfe{not json")


def test_a_view_of_a_field_no_event_carries_is_refused() -> None:
    with pytest.raises(ValueError, match="worker"):
        CaseEventView("worker_id", "worker")
