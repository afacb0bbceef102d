"""The inbox: a consumer records each message id in the same transaction as the message's effects,
so a redelivered message (at-least-once delivery) changes nothing the second time."""

from __future__ import annotations

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
