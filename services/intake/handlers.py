"""Intake's unit of work: store an accepted referral and emit `received` (the case's read-model row
and first timeline entry with it); reject the rest; keep the router's verdicts on commands."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.commands import CommandResult
from schemas.events import EventSource, new_event
from schemas.referral import FieldError, KafkaReferralSubmission, ReferralSubmission, RejectedSubmission
from schemas.topics import REFERRALS_REJECTED
from services.intake import referral_batch, tables
from services.intake.batching import GroupCommit
from services.intake.domain import (
    VILLAGE,
    SubmissionInvalid,
    kafka_submission_problems,
    key_reused,
    resident_ref,
    room_problems,
    says_another_referral,
    submission_fingerprint,
)
from services.intake.referral_batch import HttpSubmission
from services.shared.db import is_conflict, is_transient_db_error, transaction
from services.shared.directory import StationRow, User, live_token_users
from services.shared.logging import bind_message_context, get_logger
from services.shared.outbox import NOTIFY_CHANNEL, case_event_message, emit_case_events, enqueue
from services.shared.time import utc_now

log = get_logger(__name__)
SOURCE: EventSource = "caselink/intake"


@dataclass(frozen=True)
class Accepted:
    """The case a submission created, or the one an earlier submission with the same key created."""

    case_id: str
    created: bool
    errors: list[FieldError] = field(default_factory=list)


# A new case's whole acceptance in one statement (one round trip): look the room up, claim the
# idempotency key, store the case (its read-model row at sequence 1), open its head at sequence 1,
# start its timeline and put `received` in the outbox, all only when the room is a village room
# and the key was free; NOTIFY (delivered at commit)
# wakes the relay. The key is claimed first, as before: a concurrent duplicate waits on the
# claimed row and then finds it with _EARLIER_CASE. A fresh case id has no head yet, so its first
# event's sequence is 1 and the event can be built before the statement runs.
_ACCEPT = text(
    "WITH room AS (SELECT id, name, tier, parent_id FROM shared.stations WHERE id = CAST(:room_id AS text)), "
    "claim AS (INSERT INTO intake.submission_keys (source, key, case_id, fingerprint) "
    " SELECT CAST(:source AS text), CAST(:key AS text), CAST(:case_id AS text), CAST(:fingerprint AS text) FROM room "
    " WHERE room.tier = CAST(:tier AS text) AND CAST(:key AS text) IS NOT NULL "
    " ON CONFLICT DO NOTHING RETURNING case_id), "
    "go AS (SELECT 1 FROM room WHERE room.tier = CAST(:tier AS text) "
    " AND (CAST(:key AS text) IS NULL OR EXISTS (SELECT 1 FROM claim))), "
    "new_case AS (INSERT INTO intake.cases (case_id, room_id, submitted_by, category, risk_level, summary, "
    " resident, consent, resident_ref, occurred_at, status, tier, station_id, last_sequence) "
    " SELECT CAST(:case_id AS text), CAST(:room_id AS text), CAST(:submitted_by AS text), CAST(:category AS text), "
    " CAST(:risk_level AS text), CAST(:summary AS text), CAST(:resident AS jsonb), CAST(:consent AS jsonb), "
    " CAST(:resident_ref AS text), CAST(:occurred_at AS timestamptz), 'received', CAST(:tier AS text), "
    " CAST(:room_id AS text), CAST(:last_sequence AS integer) FROM go), "
    "timeline AS (INSERT INTO intake.case_events (case_id, sequence, event_id, type, time, event) "
    " SELECT CAST(:case_id AS text), 1, CAST(:event_id AS uuid), CAST(:event_type AS text), "
    " CAST(:event_time AS timestamptz), CAST(:event AS json) FROM go), "
    "head AS (INSERT INTO shared.case_heads (case_id, last_sequence, status, tier, station_id) "
    " SELECT CAST(:case_id AS text), 1, 'received', CAST(:tier AS text), CAST(:room_id AS text) FROM go), "
    "message AS (INSERT INTO shared.outbox (topic, key, payload, headers) "
    " SELECT CAST(:topic AS text), CAST(:event_key AS bytea), CAST(:payload AS bytea), CAST(:headers AS jsonb) "
    " FROM go) "
    "SELECT (SELECT name FROM room) AS room_name, (SELECT tier FROM room) AS room_tier, "
    " (SELECT parent_id FROM room) AS room_parent, EXISTS (SELECT 1 FROM go) AS created, "
    f" CASE WHEN EXISTS (SELECT 1 FROM go) THEN pg_notify('{NOTIFY_CHANNEL}', '') END AS woken"
)
_EARLIER_CASE = text(
    "SELECT case_id, fingerprint FROM intake.submission_keys "
    "WHERE source = CAST(:source AS text) AND key = CAST(:key AS text)"
)


async def accept_submission(
    session: AsyncSession,
    submission: ReferralSubmission,
    *,
    submitted_by: str,
    idempotency_source: str,
    idempotency_key: str | None,
    resident_key: str,
    key_field: str = "submission_id",
) -> Accepted:
    """Store a validated submission and emit `received`, or return the case of an earlier one.

    Raises SubmissionInvalid when the room cannot take referrals, or when the key came before with
    a different referral (naming `key_field`); nothing is written then.
    """
    fingerprint = submission_fingerprint(submission)
    case_id = str(uuid.uuid4())
    ref = resident_ref(submission.resident, key=resident_key)
    # Built for a village room; written only if the room is one (the statement checks).
    where = {"case_id": case_id, "room_id": submission.room_id, "tier": VILLAGE, "submitted_by": submitted_by}
    data = _received_data(submission, **where, ref=ref)
    event = new_event("received", source=SOURCE, data={**data, "sequence": 1})
    message = case_event_message(event)
    row = (
        await session.execute(
            _ACCEPT,
            _case_row(submission, **where, ref=ref)
            | {
                "source": idempotency_source,
                "key": idempotency_key,
                "fingerprint": fingerprint,
                "topic": message.topic,
                "event_key": case_id.encode(),
                "payload": message.payload,
                "headers": json.dumps(message.headers),
                "event_id": str(event.id),
                "event_type": event.type,
                "event_time": event.time,
                "event": message.payload.decode(),
            },
        )
    ).one()
    room = StationRow(submission.room_id, row.room_name, row.room_tier, row.room_parent) if row.room_tier else None
    if problems := room_problems(submission.room_id, room):
        raise SubmissionInvalid(problems, submission_id=idempotency_key)
    if not row.created:
        earlier = (await session.execute(_EARLIER_CASE, {"source": idempotency_source, "key": idempotency_key})).one()
        if says_another_referral(earlier.fingerprint, fingerprint):
            raise key_reused(key_field, submission_id=idempotency_key)
        return Accepted(case_id=str(earlier.case_id), created=False)
    bind_message_context(case_id=case_id)
    log.debug("intake.case_received", category=data["category"], risk=data["risk_level"])
    return Accepted(case_id=case_id, created=True)


async def reject_submission(session: AsyncSession, invalid: SubmissionInvalid, *, key: str) -> None:
    """Publish why a Kafka submission was not accepted on caselink.referrals.rejected."""
    rejection = RejectedSubmission(submission_id=invalid.submission_id, errors=invalid.errors, received_at=utc_now())
    await enqueue(
        session,
        topic=REFERRALS_REJECTED,
        key=invalid.submission_id or key,
        payload=rejection.model_dump_json().encode(),
    )
    log.info("intake.submission_rejected", fields=[e.field for e in invalid.errors])


async def record_command_result(session: AsyncSession, result: CommandResult) -> None:
    """Keep the router's verdict on a command for the HTTP request waiting on it."""
    await session.execute(
        pg_insert(tables.command_results)
        .values(
            command_id=str(result.command_id),
            case_id=result.case_id,
            action=result.action,
            outcome=result.outcome,
            status=str(result.status) if result.status is not None else None,
            message=result.message,
            decided_at=result.decided_at,
        )
        .on_conflict_do_nothing()
    )


# ---- poll batches: one transaction and a handful of statements for many messages ------------

_USERS = text("SELECT id, role, station_id, name FROM shared.users WHERE id = ANY(CAST(:ids AS text[]))")
_STATIONS = text("SELECT id, name, tier, parent_id FROM shared.stations WHERE id = ANY(CAST(:ids AS text[]))")
# Claimed in (source, key) order, so two batches sharing keys (two intake processes) wait on each
# other in the same order instead of deadlocking; a key claimed by a transaction still in flight
# waits for it, and is then either ours (it rolled back) or found by _EARLIER_CASES (it committed).
# A key twice in one batch (two different referrals) is claimed by the first in the batch (`n`): the
# rows are inserted in this order, and DO NOTHING skips a row that conflicts with one just inserted.
_CLAIM_KEYS = text(
    "INSERT INTO intake.submission_keys (source, key, case_id, fingerprint) "
    "SELECT k.source, k.key, k.case_id, k.fingerprint FROM unnest(CAST(:sources AS text[]), CAST(:keys AS text[]), "
    "CAST(:case_ids AS text[]), CAST(:fingerprints AS text[])) WITH ORDINALITY "
    "AS k(source, key, case_id, fingerprint, n) ORDER BY k.source, k.key, k.n ON CONFLICT DO NOTHING RETURNING case_id"
)
_EARLIER_CASES = text(
    "SELECT k.source, k.key, k.case_id, k.fingerprint FROM intake.submission_keys k "
    "JOIN unnest(CAST(:sources AS text[]), CAST(:keys AS text[])) AS w(source, key) "
    "ON k.source = w.source AND k.key = w.key"
)


@dataclass(frozen=True, slots=True)
class NewCase:
    """A checked submission to store as a new case, unless its idempotency key was claimed before."""

    submission: ReferralSubmission
    submitted_by: str
    room: StationRow
    source: str
    key: str | None  # None: no idempotency, always a new case
    case_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    key_field: str = "submission_id"  # where the key came from, for the refusal of a reused one
    fingerprint: str | None = None  # submission_fingerprint(submission), when the caller has it already


async def store_new_cases(
    session: AsyncSession, new: Sequence[NewCase], *, resident_key: str
) -> list[Accepted | SubmissionInvalid]:
    """Claim the keys, store the cases whose key was free (or who have none) and put their
    `received` events in the outbox, in a constant number of statements; by position, the new case,
    the earlier one of a repeated key, or the refusal of a key that came before with a different
    referral. A (source, key) may come twice in `new` only with two different referrals: the first
    claims the key (if it is free), and the other is judged against what the key holds then."""
    keyed = [n for n in new if n.key is not None]
    prints = {n.case_id: n.fingerprint or submission_fingerprint(n.submission) for n in keyed}
    claimed: set[str] = set()  # the case ids whose claim of their key won
    if keyed:
        claims = {"sources": [n.source for n in keyed], "keys": [n.key for n in keyed]}
        claims |= {"case_ids": [n.case_id for n in keyed], "fingerprints": [prints[n.case_id] for n in keyed]}
        claimed = {str(row.case_id) for row in await session.execute(_CLAIM_KEYS, claims)}
    earlier: dict[tuple[str, str], tuple[str, str | None]] = {}
    # What the key holds: an earlier transaction's claim, or one this statement just made.
    if repeated := [n for n in keyed if n.case_id not in claimed]:
        found = await session.execute(
            _EARLIER_CASES, {"sources": [n.source for n in repeated], "keys": [n.key for n in repeated]}
        )
        earlier = {(row.source, row.key): (str(row.case_id), row.fingerprint) for row in found}
    accepted: list[Accepted | SubmissionInvalid] = []
    case_rows: list[dict[str, Any]] = []
    events: list[tuple[str, dict[str, Any]]] = []
    for n in new:
        if n.key is not None and n.case_id not in claimed:
            case_id, fingerprint = earlier[(n.source, n.key)]
            if says_another_referral(fingerprint, prints[n.case_id]):
                accepted.append(key_reused(n.key_field, submission_id=n.key))
            else:
                accepted.append(Accepted(case_id=case_id, created=False))
            continue
        ref = resident_ref(n.submission.resident, key=resident_key)
        where = {"case_id": n.case_id, "room_id": n.room.id, "tier": n.room.tier, "submitted_by": n.submitted_by}
        case_rows.append(_case_row(n.submission, **where, ref=ref))
        events.append(("received", _received_data(n.submission, **where, ref=ref)))
        accepted.append(Accepted(case_id=n.case_id, created=True))
        log.debug("intake.case_received", case_id=n.case_id, category=str(n.submission.category))
    if case_rows:
        await session.execute(_INSERT_CASES, {column: [row[column] for row in case_rows] for column in _CASE_COLUMNS})
        await emit_case_events(session, events, source=SOURCE)
    return accepted


@dataclass(frozen=True)
class Refusal:
    """A Kafka submission intake will not accept, with the key its rejection is published under."""

    invalid: SubmissionInvalid
    key: str


async def accept_kafka_submissions(
    session: AsyncSession, submissions: list[KafkaReferralSubmission], *, resident_key: str
) -> tuple[list[Accepted], list[tuple[int, Refusal]]]:
    """`accept_submission` for a batch of Kafka submissions by their `submitted_by`, in bulk: the
    accepted cases (or the earlier case of a repeated submission id) and, by position, the refused.

    The same checks in the same order as one by one: submitter, room, then the idempotency key.
    """
    user_ids = sorted({s.submitted_by for s in submissions})
    room_ids = sorted({s.room_id for s in submissions})
    submitters = {
        row.id: User(id=row.id, role=row.role, station_id=row.station_id, name=row.name)
        for row in await session.execute(_USERS, {"ids": user_ids})
    }
    rooms = {
        row.id: StationRow(row.id, row.name, row.tier, row.parent_id)
        for row in await session.execute(_STATIONS, {"ids": room_ids})
    }
    refused: list[tuple[int, Refusal]] = []
    # (submission id, fingerprint) -> the position of its first submission in the batch: a resend of
    # the same one adds nothing; another referral under the same id is judged by store_new_cases.
    fresh: dict[tuple[str, str], int] = {}
    for position, submission in enumerate(submissions):
        key = str(submission.submission_id)
        if problems := kafka_submission_problems(
            submission.submitted_by,
            submission.room_id,
            submitter=submitters.get(submission.submitted_by),
            room=rooms.get(submission.room_id),
        ):
            refused.append((position, Refusal(SubmissionInvalid(problems, submission_id=key), key)))
        else:
            fresh.setdefault((key, submission_fingerprint(submission)), position)
    if not fresh:
        return [], refused
    new = [
        NewCase(
            submissions[p], submissions[p].submitted_by, rooms[submissions[p].room_id], "kafka", key, fingerprint=said
        )
        for (key, said), p in fresh.items()
    ]
    accepted: list[Accepted] = []
    for ((key, _), position), outcome in zip(
        fresh.items(), await store_new_cases(session, new, resident_key=resident_key), strict=True
    ):
        if isinstance(outcome, SubmissionInvalid):
            refused.append((position, Refusal(outcome, key)))
        else:
            accepted.append(outcome)
    return accepted, sorted(refused, key=lambda refusal: refusal[0])


async def accept_http_submissions(
    session: AsyncSession, items: Sequence[HttpSubmission], *, resident_key: str
) -> list[Accepted | referral_batch.Refusal]:
    """`accept_submission` for a batch of HTTP referrals, in one transaction and a constant number
    of statements; by position, each one's case or refusal.

    The tokens are looked up again here, in the transaction that writes: a token revoked before it
    began is refused even if the route found it in its cache. Items with the same key from the
    same user get one case, the first one's; a refused item stores nothing.
    """
    room_ids, token_hashes = referral_batch.rooms_and_tokens(items)
    live = await live_token_users(session, token_hashes)
    rooms = {
        row.id: StationRow(row.id, row.name, row.tier, row.parent_id)
        for row in await session.execute(_STATIONS, {"ids": room_ids})
    }
    refused = referral_batch.judge_batch(items, live, rooms)
    owner = referral_batch.share_cases(items, [p for p in range(len(items)) if p not in refused])
    owners = sorted(set(owner.values()))
    new = [
        NewCase(
            items[p].as_stored,
            str(items[p].as_stored.submitted_by),
            rooms[items[p].submission.room_id],
            items[p].source,
            items[p].key,
            key_field=items[p].key_field,
            fingerprint=items[p].fingerprint,
        )
        for p in owners
    ]
    stored = dict(zip(owners, await store_new_cases(session, new, resident_key=resident_key), strict=True))
    outcomes: list[Accepted | referral_batch.Refusal] = []
    for position in range(len(items)):
        if position in refused:
            outcomes.append(refused[position])
        elif owner[position] == position:
            outcomes.append(stored[position])
        elif isinstance(earlier := stored[owner[position]], Accepted):
            # The same referral under the same key earlier in this batch: its case, created by that
            # request (or found by it), not this one.
            outcomes.append(Accepted(case_id=earlier.case_id, created=False))
        else:  # the same referral as that one, whose key holds another
            outcomes.append(earlier)
    return outcomes


async def write_http_batch(
    sessions: async_sessionmaker[AsyncSession], items: Sequence[HttpSubmission], *, resident_key: str
) -> list[Accepted | referral_batch.Refusal]:
    """`accept_http_submissions` in a transaction of its own, committed before it returns."""
    async with transaction(sessions) as session:
        return await accept_http_submissions(session, items, resident_key=resident_key)


def http_referral_writer(
    sessions: async_sessionmaker[AsyncSession], *, resident_key: str
) -> GroupCommit[HttpSubmission, Accepted | referral_batch.Refusal]:
    """The group-commit writer of POST /v1/referrals (the app starts and stops it)."""
    return GroupCommit(
        lambda items: write_http_batch(sessions, items, resident_key=resident_key),
        retry_alone=worth_writing_alone,
        name="intake-referrals",
    )


def worth_writing_alone(error: BaseException) -> bool:
    """Whether the items of a batch that failed with `error` should be written again one by one:
    yes, to find the one at fault, unless the database is unreachable (nobody's fault; each would
    only wait for the same failure). A deadlock or serialization failure is retried alone."""
    return not is_transient_db_error(error) or is_conflict(error)


_CASE_COLUMNS = {
    "case_id": "text",
    "room_id": "text",
    "submitted_by": "text",
    "category": "text",
    "risk_level": "text",
    "summary": "text",
    "resident": "jsonb",
    "consent": "jsonb",
    "resident_ref": "text",
    "occurred_at": "timestamptz",
    "status": "text",
    "tier": "text",
    "station_id": "text",
    "last_sequence": "integer",
}
# JSON columns travel as text and are cast in the database: one statement text for any batch size.
_INSERT_CASES = text(
    f"INSERT INTO intake.cases ({', '.join(_CASE_COLUMNS)}) SELECT "
    + ", ".join(f"CAST(c.{name} AS {kind})" for name, kind in _CASE_COLUMNS.items())
    + " FROM unnest("
    + ", ".join(f"CAST(:{name} AS {'text' if kind == 'jsonb' else kind}[])" for name, kind in _CASE_COLUMNS.items())
    + f") AS c({', '.join(_CASE_COLUMNS)})"
)


def _case_row(
    submission: ReferralSubmission, *, case_id: str, room_id: str, tier: str, submitted_by: str, ref: str
) -> dict[str, Any]:
    """A new case's intake.cases row (JSON columns as text), as the insert statements bind it."""
    return {
        "case_id": case_id,
        "room_id": room_id,
        "submitted_by": submitted_by,
        "category": str(submission.category),
        "risk_level": str(submission.risk_level),
        "summary": submission.summary,
        "resident": submission.resident.model_dump_json(),
        "consent": submission.consent.model_dump_json(),
        "resident_ref": ref,
        "occurred_at": submission.occurred_at,
        "status": "received",
        "tier": tier,
        "station_id": room_id,
        "last_sequence": 1,  # as the read model has it after `received`, which is written with it
    }


def _received_data(
    submission: ReferralSubmission, *, case_id: str, room_id: str, tier: str, submitted_by: str, ref: str
) -> dict[str, Any]:
    """The data of a new case's `received` event."""
    return {
        "case_id": case_id,
        "status": "received",
        "tier": tier,
        "station_id": room_id,
        "category": str(submission.category),
        "risk_level": str(submission.risk_level),
        "resident_ref": ref,
        "room_id": room_id,
        "submitted_by": submitted_by,
    }
