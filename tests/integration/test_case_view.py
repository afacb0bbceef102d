"""The case read model on a real PostgreSQL: whoever emits a case event writes the case's row in
`intake.cases` and its timeline in `intake.case_events` in the same transaction, so

- an accepted referral (in bulk or by the one-statement path) has its row at sequence 1 and its
  `received` entry the moment it commits;
- the router's events move the row (status, place, assignee, deadline, escalation queue) and extend
  the timeline in the transaction that emits them: another reader sees all of it or none of it;
- an event recorded again (a replay) changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from schemas.events import parse_case_event
from schemas.referral import KafkaReferralSubmission, ReferralSubmission
from services.intake.handlers import accept_kafka_submissions, accept_submission
from services.shared import directory
from services.shared.case_view import record_case_events
from services.shared.db import session_factory, transaction
from services.shared.migrate import upgrade_async
from services.shared.network import parse_network
from services.shared.outbox import emit_case_events
from tests.support.api_client import referral
from tests.support.network_builder import NetworkBuilder

pytestmark = pytest.mark.integration

_ROW = text(
    "SELECT status, tier, station_id, assignee_id, accept_by, last_sequence, escalation_reason, "
    "escalation_station_id, escalation_closed_at FROM intake.cases WHERE case_id = :id"
)
_TIMELINE = text("SELECT sequence, type, event FROM intake.case_events WHERE case_id = :id ORDER BY sequence")


@pytest_asyncio.fixture(scope="module")
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    await upgrade_async(database_url)
    engine = create_async_engine(database_url)
    net = NetworkBuilder()
    net.station("M-CV", "city")
    county = net.subtree("CV", city="M-CV", townships=1)
    net.worker("w-cv", county.room(), ["elderly_care"])  # a room worker may submit for the room
    factory = session_factory(engine)
    async with transaction(factory) as session:
        await directory.load_network(session, parse_network(net.dump_yaml()))
    yield factory
    await engine.dispose()


async def new_case(sessions: async_sessionmaker[AsyncSession], *, batch: bool = True) -> str:
    """A referral for the room V-CV-1-1, accepted in bulk (HTTP group commit and Kafka batches) or
    by the one-statement path (a Kafka submission handled on its own)."""
    body = referral(room_id="V-CV-1-1", submitted_by="w-cv", submission_id=str(uuid.uuid4()))
    async with transaction(sessions) as session:
        if batch:
            submission = KafkaReferralSubmission.model_validate(body)
            [accepted], _ = await accept_kafka_submissions(session, [submission], resident_key="test-key")
        else:
            accepted = await accept_submission(
                session,
                ReferralSubmission.model_validate(body),
                submitted_by="w-cv",
                idempotency_source="kafka",
                idempotency_key=body["submission_id"],
                resident_key="test-key",
            )
    return accepted.case_id


def facts(case_id: str, status: str, tier: str, station: str) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "status": status,
        "tier": tier,
        "station_id": station,
        "category": "elderly_care",
        "risk_level": "medium",
        "resident_ref": "ref",
    }


async def read(sessions: async_sessionmaker[AsyncSession], case_id: str) -> tuple[Any, list[Any]]:
    async with sessions() as session:
        return await _read(session, case_id)


async def _read(session: AsyncSession, case_id: str) -> tuple[Any, list[Any]]:
    row = (await session.execute(_ROW, {"id": case_id})).one()
    return row, list((await session.execute(_TIMELINE, {"id": case_id})).all())


@pytest.mark.parametrize("batch", [True, False], ids=["in-bulk", "one-statement"])
async def test_an_accepted_referral_has_its_row_and_first_timeline_entry_when_it_commits(
    sessions: async_sessionmaker[AsyncSession], batch: bool
) -> None:
    case_id = await new_case(sessions, batch=batch)

    row, timeline = await read(sessions, case_id)
    assert (row.status, row.tier, row.station_id, row.last_sequence) == ("received", "village", "V-CV-1-1", 1)
    [(sequence, kind, event)] = timeline
    assert (sequence, kind) == (1, "caselink.case.received.v1")
    assert parse_case_event(event).data.case_id == case_id


async def test_emitted_events_move_the_row_and_extend_the_timeline_in_the_same_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    case_id = await new_case(sessions)
    accept_by = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    routed = facts(case_id, "routed", "township", "T-CV-1") | {"rule": "default", "reason": "r"}
    assigned = facts(case_id, "offered", "township", "T-CV-1") | {
        "worker_id": "w-cv",
        "accept_by": accept_by,
        "candidates_considered": 1,
        "score": 0.1,
        "weight": 2,
    }
    async with transaction(sessions) as session:
        await emit_case_events(session, [("routed", routed), ("assigned", assigned)], source="caselink/router")
        row, timeline = await _read(session, case_id)
        assert (row.status, row.assignee_id, row.accept_by, row.last_sequence) == ("offered", "w-cv", accept_by, 3)
        before_commit, _ = await read(sessions, case_id)  # another connection: nothing yet
        assert (before_commit.status, before_commit.last_sequence) == ("received", 1)

    row, timeline = await read(sessions, case_id)
    assert (row.status, row.tier, row.station_id, row.assignee_id, row.last_sequence) == (
        "offered", "township", "T-CV-1", "w-cv", 3,
    )  # fmt: skip
    assert [(s, kind.split(".")[2]) for s, kind, _ in timeline] == [(1, "received"), (2, "routed"), (3, "assigned")]


async def test_escalation_opens_the_queue_entry_and_taking_the_case_closes_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    case_id = await new_case(sessions)
    escalated = facts(case_id, "escalated", "county", "C-CV") | {
        "from_tier": "village",
        "from_station_id": "V-CV-1-1",
        "reason": "no_capacity",
    }
    async with transaction(sessions) as session:
        await emit_case_events(session, [("escalated", escalated)], source="caselink/router")
    row, _ = await read(sessions, case_id)
    assert (row.status, row.escalation_reason, row.escalation_station_id, row.escalation_closed_at) == (
        "escalated", "no_capacity", "C-CV", None,
    )  # fmt: skip

    accepted = facts(case_id, "accepted", "county", "C-CV") | {"worker_id": "w-cv"}
    async with transaction(sessions) as session:
        await emit_case_events(session, [("accepted", accepted)], source="caselink/router")
    row, _ = await read(sessions, case_id)
    assert row.status == "accepted" and row.escalation_closed_at is not None


async def test_an_event_recorded_again_changes_nothing(sessions: async_sessionmaker[AsyncSession]) -> None:
    case_id = await new_case(sessions)
    routed = facts(case_id, "routed", "township", "T-CV-1") | {"rule": "default", "reason": "r"}
    async with transaction(sessions) as session:
        [event] = await emit_case_events(session, [("routed", routed)], source="caselink/router")
    queued = facts(case_id, "queued", "township", "T-CV-1") | {"waiting_at": "T-CV-1"}
    async with transaction(sessions) as session:
        await emit_case_events(session, [("queued", queued)], source="caselink/router")
    before = await read(sessions, case_id)

    async with transaction(sessions) as session:  # `routed` again, e.g. replayed from a DLQ
        await record_case_events(session, [(event, event.model_dump_json().encode())])

    assert await read(sessions, case_id) == before
    assert before[0].status == "queued"


async def test_the_timeline_keeps_each_event_as_the_json_text_that_was_published(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    case_id = await new_case(sessions)
    routed = facts(case_id, "routed", "township", "T-CV-1") | {"rule": "default", "reason": "r"}
    async with transaction(sessions) as session:
        await emit_case_events(session, [("routed", routed)], source="caselink/router")
        # Read before the commit: nobody else can have relayed (and deleted) these outbox rows yet;
        # no relay runs on this database at all, so `received` is there too.
        published = (
            await session.execute(
                text(
                    "SELECT payload FROM shared.outbox WHERE topic = 'caselink.case.events' AND key = :key ORDER BY id"
                ),
                {"key": case_id.encode()},
            )
        ).scalars()
        stored = (
            await session.execute(
                text("SELECT event::text FROM intake.case_events WHERE case_id = :id ORDER BY sequence"),
                {"id": case_id},
            )
        ).scalars()
        assert list(stored) == [bytes(payload).decode() for payload in published]


async def test_each_timeline_event_names_the_stations_and_workers_it_was_with_before_and_after(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    case_id = await new_case(sessions)
    accept_by = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    offer = {"accept_by": accept_by, "candidates_considered": 1, "score": 0.1, "weight": 1}
    events = [
        ("routed", facts(case_id, "routed", "township", "T-CV-1") | {"rule": "default", "reason": "r"}),
        ("assigned", facts(case_id, "offered", "township", "T-CV-2") | {"worker_id": "w-a"} | offer),
        ("assigned", facts(case_id, "offered", "township", "T-CV-1") | {"worker_id": "w-b"} | offer),
        ("declined", facts(case_id, "routed", "township", "T-CV-1") | {"worker_id": "w-b", "reason": "away"}),
        ("escalated", facts(case_id, "escalated", "county", "C-CV") | {
            "from_tier": "township", "from_station_id": "T-CV-1", "reason": "declined",
        }),  # fmt: skip
    ]
    async with transaction(sessions) as session:
        await emit_case_events(session, events, source="caselink/router")
    audiences = await sessions_sql(
        sessions,
        "SELECT sequence, audience_stations, audience_workers FROM intake.case_events WHERE case_id = :id "
        "ORDER BY sequence",
        id=case_id,
    )
    assert [tuple(row) for row in audiences] == [
        (1, [], []),  # `received`, written with its case's row: the room is on the case's path for good
        (2, ["V-CV-1-1", "T-CV-1"], []),
        (3, ["T-CV-1", "T-CV-2"], ["w-a"]),
        (4, ["T-CV-2", "T-CV-1"], ["w-a", "w-b"]),  # the event that took the case from w-a at T-CV-2
        (5, ["T-CV-1"], ["w-b"]),
        (6, ["T-CV-1", "C-CV"], []),
    ]


async def sessions_sql(sessions: async_sessionmaker[AsyncSession], query: str, **params: Any) -> list[Any]:
    async with sessions() as session:
        return list((await session.execute(text(query), params)).all())
