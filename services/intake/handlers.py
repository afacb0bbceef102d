"""Intake's unit of work: store an accepted referral and emit `received`; reject the rest; keep the
case read model (status, timeline) current from caselink.case.events."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.commands import CommandResult
from schemas.events import CaseEvent, EventSource, event_name
from schemas.referral import FieldError, ReferralSubmission, RejectedSubmission
from schemas.topics import REFERRALS_REJECTED
from services.intake import tables
from services.intake.domain import QueueEntry, SubmissionInvalid, next_queue_entry, resident_ref, room_problems
from services.shared.directory import get_station
from services.shared.logging import bind_message_context, get_logger
from services.shared.outbox import emit_case_event, enqueue
from services.shared.time import utc_now

log = get_logger(__name__)
SOURCE: EventSource = "caselink/intake"


@dataclass(frozen=True)
class Accepted:
    """The case a submission created, or the one an earlier submission with the same key created."""

    case_id: str
    created: bool
    errors: list[FieldError] = field(default_factory=list)


async def accept_submission(
    session: AsyncSession,
    submission: ReferralSubmission,
    *,
    submitted_by: str,
    idempotency_source: str,
    idempotency_key: str | None,
    resident_key: str,
) -> Accepted:
    """Store a validated submission and emit `received`, or return the case of an earlier one.

    Raises SubmissionInvalid when the room cannot take referrals; nothing is written then.
    """
    room = await get_station(session, submission.room_id)
    if problems := room_problems(submission.room_id, room):
        raise SubmissionInvalid(problems, submission_id=idempotency_key)
    assert room is not None
    case_id = str(uuid.uuid4())
    if idempotency_key is not None:
        # Claiming the key first means a concurrent duplicate waits on this row and then finds it.
        claimed = (
            await session.execute(
                pg_insert(tables.submission_keys)
                .values(source=idempotency_source, key=idempotency_key, case_id=case_id)
                .on_conflict_do_nothing()
                .returning(tables.submission_keys.c.case_id)
            )
        ).first()
        if claimed is None:
            existing = await session.scalar(
                select(tables.submission_keys.c.case_id).where(
                    tables.submission_keys.c.source == idempotency_source,
                    tables.submission_keys.c.key == idempotency_key,
                )
            )
            return Accepted(case_id=str(existing), created=False)
    bind_message_context(case_id=case_id)
    ref = resident_ref(submission.resident, key=resident_key)
    await session.execute(
        tables.cases.insert().values(
            case_id=case_id,
            room_id=room.id,
            submitted_by=submitted_by,
            category=str(submission.category),
            risk_level=str(submission.risk_level),
            summary=submission.summary,
            resident=submission.resident.model_dump(mode="json"),
            consent=submission.consent.model_dump(mode="json"),
            resident_ref=ref,
            occurred_at=submission.occurred_at,
            status="received",
            tier=room.tier,
            station_id=room.id,
        )
    )
    await emit_case_event(
        session,
        "received",
        source=SOURCE,
        data={
            "case_id": case_id,
            "status": "received",
            "tier": room.tier,
            "station_id": room.id,
            "category": str(submission.category),
            "risk_level": str(submission.risk_level),
            "resident_ref": ref,
            "room_id": room.id,
            "submitted_by": submitted_by,
        },
    )
    log.info("intake.case_received", category=str(submission.category), risk=str(submission.risk_level))
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


async def project_case_event(session: AsyncSession, event: CaseEvent) -> None:
    """Add an event to the case timeline and advance the read model and the escalation queue
    (events may arrive out of order; only a newer one moves the case)."""
    data = event.data
    inserted = (
        await session.execute(
            pg_insert(tables.case_events)
            .values(
                case_id=data.case_id,
                sequence=data.sequence,
                event_id=str(event.id),
                type=event.type,
                time=event.time,
                event=event.model_dump(mode="json"),
            )
            .on_conflict_do_nothing()
            .returning(tables.case_events.c.sequence)
        )
    ).first()
    if inserted is None:
        return
    cases = tables.cases.c
    # Locked so two projections of the same case (a redelivery racing a replica) apply in turn.
    current = (
        await session.execute(select(tables.cases).where(cases.case_id == data.case_id).with_for_update())
    ).first()
    if current is None or current.last_sequence >= data.sequence:
        return
    changes: dict[str, object] = {
        "status": str(data.status),
        "tier": str(data.tier),
        "station_id": data.station_id,
        "last_sequence": data.sequence,
        "updated_at": utc_now(),
    }
    name = event_name(event.type)
    fields = data.model_dump()
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
        current.escalation_reason, current.escalation_station_id, current.escalated_at, current.escalation_closed_at
    )
    after = next_queue_entry(name, fields, event.time, entry)
    if after != entry:
        changes |= {
            "escalation_reason": after.reason,
            "escalation_station_id": after.station_id,
            "escalated_at": after.since,
            "escalation_closed_at": after.closed_at,
        }
    await session.execute(update(tables.cases).where(cases.case_id == data.case_id).values(changes))


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
