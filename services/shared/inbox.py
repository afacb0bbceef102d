"""The inbox: a consumer records each message id in the same transaction as the message's effects,
so a redelivered message (at-least-once delivery) changes nothing the second time."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.tables import inbox


async def claim(session: AsyncSession, *, consumer: str, message_id: str) -> bool:
    """Record that `consumer` handles `message_id`; False if it already did (skip the effects).

    A concurrent duplicate blocks on the primary key until the first transaction ends, then
    sees the row: two replicas can never both apply the same message.
    """
    statement = (
        pg_insert(inbox)
        .values(consumer=consumer, message_id=message_id)
        .on_conflict_do_nothing()
        .returning(inbox.c.message_id)
    )
    return (await session.execute(statement)).first() is not None


_CLAIM_MANY = text(
    "INSERT INTO shared.inbox (consumer, message_id) SELECT CAST(:consumer AS text), unnest(CAST(:ids AS text[])) "
    "ON CONFLICT DO NOTHING RETURNING message_id"
)


async def claim_many(session: AsyncSession, *, consumer: str, message_ids: Sequence[str]) -> set[str]:
    """`claim` for a whole poll batch in one statement; returns the ids not handled before.

    Ids are claimed in sorted order, so two replicas claiming overlapping batches (a rebalance)
    take the primary-key locks in the same order and queue instead of deadlocking.
    """
    if not message_ids:
        return set()
    rows = await session.execute(_CLAIM_MANY, {"consumer": consumer, "ids": sorted(set(message_ids))})
    return set(rows.scalars())
