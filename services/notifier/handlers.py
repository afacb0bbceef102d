"""The notifier's unit of work: push an event to the people it concerns, then record each delivery
and emit notified / notification_failed.

Pushes go out before the recording transaction: if the process dies in between, the event is
redelivered and pushed again with the same X-Caselink-Delivery id (receivers dedupe on it);
deliveries already recorded are never pushed again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.events import CaseEvent, EventSource
from services.notifier import tables
from services.notifier.channels import Channel, DeliveryResult, channel_for, deliver_with_retries
from services.notifier.domain import (
    ChannelConfig,
    Push,
    Recipient,
    RecipientQuery,
    RetryPolicy,
    plan_pushes,
    purpose_of,
    recipients_needed,
)
from services.shared.logging import get_logger
from services.shared.outbox import emit_case_event
from services.shared.tables import stations, users

log = get_logger(__name__)
SOURCE: EventSource = "caselink/notifier"
Outcome = tuple[Push, DeliveryResult, int]


def _channels(raw: list[dict[str, Any]] | None) -> list[ChannelConfig]:
    fields = ("url", "secret", "address", "phone", "template_id")
    return [ChannelConfig(channel=c["channel"], **{k: c.get(k) for k in fields}) for c in raw or []]


async def find_recipients(session: AsyncSession, query: RecipientQuery) -> list[Recipient]:
    """The users and station channels a push must reach, with their configured channels."""
    found: list[Recipient] = []
    if query.user_ids:
        rows = await session.execute(select(users.c.id, users.c.notify).where(users.c.id.in_(query.user_ids)))
        found += [Recipient(row.id, "user", _channels(row.notify)) for row in rows]
    if query.supervisors_of:
        rows = await session.execute(
            select(users.c.id, users.c.notify).where(
                users.c.station_id.in_(query.supervisors_of), users.c.role == "supervisor"
            )
        )
        found += [Recipient(row.id, "user", _channels(row.notify)) for row in rows]
    if query.station_channels_of:
        rows = await session.execute(
            select(stations.c.id, stations.c.notify).where(stations.c.id == query.station_channels_of)
        )
        found += [Recipient(f"station-{row.id}", "station", _channels(row.notify)) for row in rows if row.notify]
    return found


async def deliver_event(
    event: CaseEvent,
    *,
    sessions: async_sessionmaker[AsyncSession],
    channels: Mapping[str, Channel],
    retry: RetryPolicy,
) -> tuple[list[Outcome], list[Recipient]]:
    """Push an event to everyone it concerns, in parallel; return the outcomes not recorded before,
    and the recipients who have no channel at all."""
    data = event.data.model_dump(mode="json")
    query = recipients_needed(event.type, data)
    if query.is_empty:
        return [], []
    async with sessions() as session:
        recipients = await find_recipients(session, query)
        recorded = set(
            (
                await session.execute(
                    select(tables.deliveries.c.delivery_id).where(tables.deliveries.c.event_id == str(event.id))
                )
            ).scalars()
        )
    pushes = [p for p in plan_pushes(event.type, data, str(event.id), recipients) if str(p.delivery_id) not in recorded]
    # Concurrent, so one slow endpoint does not hold up the other recipients of the same event.
    results = await asyncio.gather(
        *(deliver_with_retries(channel_for(channels, p.channel.channel), p, retry) for p in pushes)
    )
    unreachable = [r for r in recipients if r.kind == "user" and not r.channels]
    return [(push, result, attempts) for push, (result, attempts) in zip(pushes, results, strict=True)], unreachable


async def record_deliveries(
    session: AsyncSession, event: CaseEvent, outcomes: list[Outcome], unreachable: list[Recipient]
) -> None:
    """Log each delivery once and emit notified / notification_failed for it."""
    data = event.data
    common = {
        "case_id": data.case_id,
        "category": str(data.category),
        "risk_level": str(data.risk_level),
        "resident_ref": data.resident_ref,
    }
    for push, result, attempts in outcomes:
        inserted = (
            await session.execute(
                pg_insert(tables.deliveries)
                .values(
                    delivery_id=str(push.delivery_id),
                    event_id=str(event.id),
                    case_id=data.case_id,
                    purpose=push.purpose,
                    recipient=push.recipient,
                    channel=push.channel.channel,
                    status="delivered" if result.ok else "failed",
                    attempts=attempts,
                    last_error=result.error,
                )
                .on_conflict_do_nothing()
                .returning(tables.deliveries.c.delivery_id)
            )
        ).first()
        if inserted is None:
            continue
        fields = {"channel": push.channel.channel, "recipient": push.recipient, "attempts": attempts}
        if result.ok:
            await emit_case_event(
                session, "notified", source=SOURCE, data={**common, **fields, "purpose": push.purpose}
            )
        else:
            log.warning("notifier.delivery_failed", channel=push.channel.channel, attempts=attempts, error=result.error)
            await emit_case_event(
                session,
                "notification_failed",
                source=SOURCE,
                data={**common, **fields, "purpose": push.purpose, "error": result.error},
            )
    for recipient in unreachable:
        purpose = purpose_of(event.type)
        await emit_case_event(
            session,
            "notification_failed",
            source=SOURCE,
            data={
                **common,
                "channel": "none",
                "recipient": recipient.id,
                "attempts": 0,
                "purpose": purpose,
                "error": "no notify channel configured for this recipient",
            },
        )
