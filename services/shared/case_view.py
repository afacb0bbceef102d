"""The case read model: each case's row in `intake.cases` (status, place, assignee, deadlines,
escalation queue entry) and its timeline in `intake.case_events`, written in the transaction that
emits the events (`services.shared.outbox.emit_case_events`, and intake's one-statement
acceptance), so the read model is never behind the events and no consumer has to rebuild it.

The tables are intake's (the case row also holds the resident data only intake reads); router and
notifier write only the timeline and the columns in `_PROJECTED`. A redelivered or replayed event
is harmless: the timeline keeps one row per (case, sequence), and only a newer event moves a row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.events import CaseEvent, data_fields, event_name
from services.intake.domain import QueueEntry, next_queue_entry
from services.shared.time import utc_now

_PROJECTED = (
    "status",
    "tier",
    "station_id",
    "last_sequence",
    "updated_at",
    "assignee_id",
    "accept_by",
    "weight",
    "escalation_reason",
    "escalation_station_id",
    "escalated_at",
    "escalation_closed_at",
)


# An event's audience travels as one space-separated text per event (unnest cannot take an array of
# arrays); station and user ids never hold a space (services.shared.network.Id).
_ADD_TO_TIMELINES = text(
    "INSERT INTO intake.case_events (case_id, sequence, event_id, type, time, event, audience_stations, "
    "audience_workers) "
    "SELECT e.case_id, e.sequence, CAST(e.event_id AS uuid), e.type, e.time, CAST(e.event AS json), "
    "string_to_array(e.stations, ' '), string_to_array(e.workers, ' ') FROM unnest("
    "CAST(:case_ids AS text[]), CAST(:sequences AS integer[]), CAST(:event_ids AS text[]), CAST(:types AS text[]), "
    "CAST(:times AS timestamptz[]), CAST(:events AS text[]), CAST(:stations AS text[]), CAST(:workers AS text[])"
    ") WITH ORDINALITY AS e(case_id, sequence, event_id, type, time, event, stations, workers, n) ORDER BY e.n "
    "ON CONFLICT DO NOTHING"
)
# Locked in one order (the case heads already are, by the same transaction), so writers queue.
_LOCK_CASES = text(
    f"SELECT case_id, {', '.join(_PROJECTED)} FROM intake.cases "
    "WHERE case_id = ANY(CAST(:ids AS text[])) ORDER BY case_id FOR UPDATE"
)
_PROJECTED_TYPES = {
    "last_sequence": "integer",
    "weight": "integer",
    "updated_at": "timestamptz",
    "accept_by": "timestamptz",
    "escalated_at": "timestamptz",
    "escalation_closed_at": "timestamptz",
}
_UPDATE_CASES = text(
    "UPDATE intake.cases c SET "
    + ", ".join(f"{column} = u.{column}" for column in _PROJECTED)
    + " FROM unnest(CAST(:case_id AS text[]), "
    + ", ".join(f"CAST(:{column} AS {_PROJECTED_TYPES.get(column, 'text')}[])" for column in _PROJECTED)
    + f") AS u(case_id, {', '.join(_PROJECTED)}) WHERE c.case_id = u.case_id"
)


async def record_case_events(session: AsyncSession, events: Sequence[tuple[CaseEvent, bytes]]) -> None:
    """Add (event, its JSON as published) pairs to their cases' timelines and move the cases' rows,
    in order: the cases locked in case-id order, one insert, one update for all."""
    if not events:
        return
    locked = await session.execute(_LOCK_CASES, {"ids": sorted({event.data.case_id for event, _ in events})})
    current = {row.case_id: dict(row._mapping) for row in locked}
    changed: set[str] = set()
    audiences: list[Audience] = []
    for event, _ in events:
        data = event.data
        row = current.get(data.case_id)
        # A row at or past this sequence has the event already (the timeline row and the case row
        # are written together): a redelivery, or the same event twice in one batch. The insert
        # below keeps the timeline's row as it is.
        if row is None or row["last_sequence"] >= data.sequence:
            audiences.append(Audience((), ()))
            continue
        before = dict(row)
        row.update(projected_changes(event, row))
        audiences.append(audience_of(event, before, row))
        changed.add(data.case_id)
    await session.execute(
        _ADD_TO_TIMELINES,
        {
            "case_ids": [event.data.case_id for event, _ in events],
            "sequences": [event.data.sequence for event, _ in events],
            "event_ids": [str(event.id) for event, _ in events],
            "types": [event.type for event, _ in events],
            "times": [event.time for event, _ in events],
            # The published JSON itself: the same document model_dump would give back, without the work.
            "events": [raw.decode() for _, raw in events],
            "stations": [" ".join(audience.stations) for audience in audiences],
            "workers": [" ".join(audience.workers) for audience in audiences],
        },
    )
    if changed:
        ids = sorted(changed)
        columns = {column: [current[case_id][column] for case_id in ids] for column in _PROJECTED}
        await session.execute(_UPDATE_CASES, {"case_id": ids, **columns})


class Audience(NamedTuple):
    """Who may see an event beside whoever may see its case now: the stations and workers it was
    with just before and just after the event."""

    stations: tuple[str, ...]
    workers: tuple[str, ...]


def audience_of(event: CaseEvent, before: Mapping[str, Any], after: Mapping[str, Any]) -> Audience:
    """The audience of an event that moved a case's row from `before` to `after`: the worker whose
    offer it ended and the station it left see it, as do the worker and station it went to."""
    worker = data_fields(event.data).get("worker_id")
    stations = dict.fromkeys(s for s in (before["station_id"], after["station_id"]) if s)
    workers = dict.fromkeys(w for w in (before["assignee_id"], after["assignee_id"], worker) if w)
    return Audience(tuple(stations), tuple(workers))


def projected_changes(event: CaseEvent, current: Mapping[str, Any]) -> dict[str, Any]:
    """What a newer event changes in a case's read-model row and escalation queue entry."""
    data = event.data
    changes: dict[str, Any] = {
        "status": str(data.status),
        "tier": str(data.tier),
        "station_id": data.station_id,
        "last_sequence": data.sequence,
        "updated_at": utc_now(),
    }
    name = event_name(event.type)
    fields = data_fields(data)
    if name == "assigned":
        changes |= {
            "assignee_id": fields["worker_id"],
            "accept_by": fields["accept_by"],
            "weight": fields.get("weight"),
        }
    elif name in {"accepted"}:
        changes |= {"accept_by": None}
    elif name in {"declined", "offer_expired", "escalated", "queued", "referred_back"}:
        changes |= {"assignee_id": None, "accept_by": None}
    entry = QueueEntry(
        current["escalation_reason"],
        current["escalation_station_id"],
        current["escalated_at"],
        current["escalation_closed_at"],
    )
    after = next_queue_entry(name, fields, event.time, entry)
    if after != entry:
        changes |= {
            "escalation_reason": after.reason,
            "escalation_station_id": after.station_id,
            "escalated_at": after.since,
            "escalation_closed_at": after.closed_at,
        }
    return changes
