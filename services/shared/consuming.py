"""How every caselink consumer handles one Kafka message: inbox, transaction, retry, dead letter.

- Effects and the inbox row commit together, so a redelivered message is skipped.
- A database outage is retried forever (raise → FastStream NACKs → the same offset is read
  again): a referral is never dropped because PostgreSQL was restarting.
- Any other failure is retried `max_attempts` times, then the message goes to `<topic>.dlq`
  with `x-error` / `x-origin` headers and the partition moves on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.events import EVENT_CLASSES, CaseEvent, event_type, parse_case_event
from schemas.topics import dlq
from services.shared.db import is_transient_db_error, transaction
from services.shared.inbox import claim
from services.shared.logging import get_logger
from services.shared.outbox import enqueue

log = get_logger(__name__)

Work = Callable[[AsyncSession], Awaitable[object]]
M = TypeVar("M", bound=BaseModel)


def origin(record: Any) -> str:
    """`topic/partition/offset` of a consumer record."""
    return f"{record.topic}/{record.partition}/{record.offset}"


class MessageConsumer:
    """Runs one consumer's work for each message with at-least-once, idempotent semantics."""

    def __init__(self, name: str, sessions: async_sessionmaker[AsyncSession], *, max_attempts: int = 5) -> None:
        self.name = name
        self._sessions = sessions
        self._max_attempts = max_attempts
        self._attempts: dict[str, int] = {}

    async def process(self, record: Any, *, message_id: str, work: Work) -> bool:
        """Apply `work` once for `message_id`; False if it was a duplicate or dead-lettered."""
        return await self.guard(record, lambda: self.apply(message_id=message_id, work=work))

    async def apply(self, *, message_id: str, work: Work) -> bool:
        """The unguarded unit of work: inbox claim and effects in one transaction (use within `guard`)."""
        async with transaction(self._sessions) as session:
            if not await claim(session, consumer=self.name, message_id=message_id):
                log.debug("consumer.duplicate_skipped", consumer=self.name)
                return False
            await work(session)
        return True

    async def guard(self, record: Any, step: Callable[[], Awaitable[bool]]) -> bool:
        """Run a message's whole handling under the retry / dead-letter policy of this module."""
        key = origin(record)
        try:
            done = await step()
        except Exception as exc:
            if is_transient_db_error(exc):
                log.warning("consumer.database_unavailable", consumer=self.name, error=type(exc).__name__)
                await asyncio.sleep(1.0)
                raise
            attempts = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempts
            if attempts < self._max_attempts:
                log.warning("consumer.retry", consumer=self.name, attempt=attempts, error=repr(exc))
                await asyncio.sleep(min(0.1 * 2**attempts, 5.0))
                raise
            log.error("consumer.dead_letter", consumer=self.name, attempts=attempts, error=repr(exc))
            self._attempts.pop(key, None)
            await self.dead_letter(record, f"{type(exc).__name__}: {exc}")
            return False
        self._attempts.pop(key, None)
        return done

    async def dead_letter(self, record: Any, error: str) -> None:
        """Send the raw message to `<topic>.dlq` (once, even if this is itself redelivered)."""
        async with transaction(self._sessions) as session:
            if not await claim(session, consumer=self.name, message_id=f"dlq:{origin(record)}"):
                return
            await enqueue_dead_letter(session, record, consumer=self.name, error=error)


async def enqueue_dead_letter(session: AsyncSession, record: Any, *, consumer: str, error: str) -> None:
    """Add the raw message to `<topic>.dlq` in the caller's transaction (the caller guards duplicates)."""
    where = origin(record)
    await enqueue(
        session,
        topic=dlq(record.topic),
        key=record.key,
        payload=record.value or b"",
        headers={"x-error": error[:1000], "x-origin": where, "x-consumer": consumer},
    )
    log.warning("consumer.dead_lettered", consumer=consumer, origin=where)


async def decode_message(consumer: MessageConsumer, record: Any, model: type[M]) -> M | None:
    """The record's JSON as `model`, or None after dead-lettering a message that is not one."""
    try:
        return model.model_validate_json(record.value or b"")
    except ValidationError as exc:
        await consumer.dead_letter(record, f"invalid {model.__name__} ({exc.error_count()} errors)")
        return None


_KNOWN_TYPES = frozenset(event_type(name) for name in EVENT_CLASSES)


async def decode_case_event(consumer: MessageConsumer, record: Any) -> CaseEvent | None:
    """The case event in a record, or None: undecodable ones are dead-lettered, and types this
    version does not know (a newer producer's `.v2`) are skipped, as schema evolution allows."""
    try:
        return parse_case_event(record.value)
    except ValidationError as exc:
        try:
            type_ = json.loads(record.value).get("type")
        except (ValueError, AttributeError, TypeError):
            type_ = None
        if isinstance(type_, str) and type_.startswith("caselink.case.") and type_ not in _KNOWN_TYPES:
            log.debug("consumer.unknown_type_skipped", consumer=consumer.name, type=type_)
            return None
        await consumer.dead_letter(record, f"undecodable case event ({exc.error_count()} errors)")
        return None
