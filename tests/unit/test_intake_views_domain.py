"""The escalation queue entry a case's events produce, and who may see a case."""

from datetime import UTC, datetime, timedelta

import pytest

from services.intake.domain import QueueEntry, may_see_case, next_queue_entry
from services.shared.directory import User

T0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def replay(*events: tuple[str, dict[str, object]]) -> QueueEntry:
    entry = QueueEntry()
    for minute, (name, data) in enumerate(events):
        entry = next_queue_entry(name, data, at(minute), entry)
    return entry


ESCALATED = ("escalated", {"reason": "no_capacity", "station_id": "C"})
QUEUED = ("queued", {"waiting_at": "M"})
ASSIGNED = ("assigned", {"worker_id": "w-1"})
ACCEPTED = ("accepted", {"worker_id": "w-1"})
BREACHED = ("sla_breached", {"kind": "resolve", "station_id": "T1"})
RESOLVED = ("resolved", {"worker_id": "w-1"})


def test_a_case_escalated_and_offered_at_once_opens_and_closes_its_entry() -> None:
    entry = replay(("routed", {}), ESCALATED, ASSIGNED)
    assert (entry.reason, entry.station_id, entry.since, entry.closed_at) == ("no_capacity", "C", at(1), at(2))
    assert not entry.is_open


def test_a_queued_case_waits_at_the_top_since_its_first_escalation_with_that_reason() -> None:
    entry = replay(("routed", {}), ESCALATED, ("escalated", {"reason": "no_capacity", "station_id": "M"}), QUEUED)
    assert entry.is_open
    assert (entry.reason, entry.station_id, entry.since) == ("no_capacity", "M", at(1))


def test_a_case_queued_without_escalation_waits_for_no_capacity() -> None:
    assert replay(("routed", {}), QUEUED) == QueueEntry("no_capacity", "M", at(1))


def test_expired_offers_escalation_reason_is_kept_when_the_case_then_queues() -> None:
    entry = replay(ASSIGNED, ("escalated", {"reason": "offer_expired", "station_id": "M"}), QUEUED)
    assert (entry.reason, entry.is_open) == ("offer_expired", True)


def test_a_supervisor_assigning_the_queued_case_takes_it_off_the_queue() -> None:
    entry = replay(QUEUED, ASSIGNED)
    assert (entry.is_open, entry.closed_at) == (False, at(1))


def test_an_sla_breach_stays_on_the_queue_until_the_case_is_resolved_even_if_reassigned() -> None:
    assert replay(ASSIGNED, ACCEPTED, BREACHED, ASSIGNED).is_open
    entry = replay(ASSIGNED, ACCEPTED, BREACHED, ASSIGNED, RESOLVED)
    assert (entry.reason, entry.station_id, entry.closed_at) == ("sla_breach", "T1", at(4))


def test_an_accept_deadline_breach_does_not_put_the_case_on_the_queue() -> None:
    assert replay(ASSIGNED, ("sla_breached", {"kind": "accept", "station_id": "T1"})) == QueueEntry()


def test_events_that_do_not_concern_the_queue_leave_it_as_it_is() -> None:
    entry = replay(QUEUED)
    for name in ("notified", "sla_warning", "notification_failed"):
        assert next_queue_entry(name, {"kind": "resolve"}, at(9), entry) == entry


def sees(role: str, station: str | None, *, user_id: str = "u-1", assignee: str | None = None) -> bool:
    user = User(id=user_id, role=role, station_id=station)
    return may_see_case(user, assignee_id=assignee, stations_on_path={"V11", "T1", "C", "M"})


@pytest.mark.parametrize(
    ("role", "station", "assignee", "visible"),
    [
        ("worker", "T1", "u-1", True),  # holds it
        ("worker", "V11", None, True),  # their room submitted it
        ("worker", "T1", None, True),  # a worker of the township above the room, not holding it
        ("worker", "M", None, True),  # a worker of the city centre: above the case's path
        ("worker", "V12", "w-2", False),  # another room
        ("worker", "T2", None, False),  # a sibling township
        ("worker", "T2", "u-1", True),  # holds it, wherever their station is
        ("supervisor", "T1", None, True),
        ("supervisor", "M", None, True),
        ("supervisor", "T2", None, False),  # a sibling township
        ("system", None, None, True),
    ],
)
def test_who_may_see_a_case(role: str, station: str | None, assignee: str | None, visible: bool) -> None:
    assert sees(role, station, assignee=assignee) is visible
