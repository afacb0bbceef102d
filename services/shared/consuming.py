"""How every caselink consumer handles one Kafka message: inbox, transaction, retry, dead letter.

- Effects and the inbox row commit together, so a redelivered message is skipped.
- A transaction that lost a lock conflict with another (deadlock, lock timeout) is run again at once.
- A database outage is retried forever (raise → FastStream NACKs → the same offset is read
  again): a referral is never dropped because PostgreSQL was restarting.
- Any other failure is retried `max_attempts` times, then the message goes to `<topic>.dlq`
  with `x-error` / `x-origin` headers and the partition moves on.

Batch consumers (`process_batch`) apply a whole poll batch in one transaction and fall back to
the per-message path above when the batch fails, so one poison message is retried and
dead-lettered on its own while the rest of its batch goes through. Under load a batch is several
polls merged (`merged_polls`), so that a transaction's fixed cost is shared by more messages.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiokafka import TopicPartition
from aiokafka.errors import ConsumerStoppedError, IllegalStateError
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.events import EVENT_CLASSES, CaseEvent, CaseEventView, CloudEvent, event_type, parse_case_event
from schemas.referral import validation_errors
from schemas.topics import dlq
from services.shared.db import is_conflict, is_transient_db_error, retry_conflicts, transaction
from services.shared.inbox import claim, claim_many
from services.shared.logging import get_logger
from services.shared.outbox import enqueue

log = get_logger(__name__)

Work = Callable[[AsyncSession], Awaitable[object]]
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class Delivery(Generic[T]):
    """One message of a poll batch: its record, its inbox id and what it was decoded to."""

    record: Any
    message_id: str
    item: T


BatchWork = Callable[[AsyncSession, list[Delivery[T]]], Awaitable[object]]


class OneByOne(Exception):
    """Raised by batch work that cannot apply the batch as a whole (say, capacity another replica
    took meanwhile): the transaction rolls back and the messages are handled one by one."""


async def _records_only(message: Any) -> None:
    """Batch handlers decode the raw records themselves (`msg.raw_message`), so FastStream's own
    per-record message objects and JSON decoding of every body would be wasted work."""
    return None


def batch_subscriber(max_records: int = 1000) -> dict[str, Any]:
    """Options of a FastStream batch subscriber: up to `max_records` per poll (a busy consumer's
    batches grow towards it, an idle one's stay small), and after an empty poll at most
    `batch_timeout_ms` before the next message is seen (the latency an idle consumer adds)."""
    return {"batch": True, "max_records": max_records, "batch_timeout_ms": 20, "decoder": _records_only}


# A poll smaller than this comes from a slow stream: it is handled at once, as waiting for more
# would add latency where there is little batch cost to share. A busier stream's polls are bigger.
LINGER_FROM_RECORDS = 8


@asynccontextmanager
async def merged_polls(msg: Any, *, linger_ms: int, max_records: int) -> AsyncIterator[tuple[Any, ...]]:
    """The records of a batch subscriber's poll, plus those the next polls bring within `linger_ms`
    (up to `max_records` in all), to be handled as one batch in the `async with` block.

    A poll holds what reached the consumer since the last one: under a steady 500 cases/s that is
    a few dozen records, and each batch pays the same transaction, relay and commit costs. Waiting
    a little for more shares them: at 500 cases/s offered, 50 ms cut intake's CPU per case by 30 %
    and the whole stack's by 14 % (BENCHMARKS.md).

    Offsets: FastStream commits the consumer's positions after the handler returns, which covers
    the merged records, handled by then. If the block raises, FastStream rewinds only the
    partitions of its own poll, so the partitions of the merged records are rewound here first:
    otherwise a later commit would pass records that were never handled.
    """
    records = tuple(msg.raw_message)
    consumer: Any = getattr(msg, "consumer", None)
    # The in-memory test broker's stand-in consumer cannot poll: its batches are taken as they come.
    if linger_ms <= 0 or len(records) < LINGER_FROM_RECORDS or not hasattr(consumer, "getmany"):
        yield records
        return
    merged = list(records)
    deadline = time.monotonic() + linger_ms / 1000
    try:
        while len(merged) < max_records and (left := deadline - time.monotonic()) > 0.001:
            wait = max(1, int(left * 1000))
            try:
                polled = await consumer.getmany(timeout_ms=wait, max_records=max_records - len(merged))
            except ConsumerStoppedError:
                break  # shutting down: handle what was taken; nothing is committed past it
            for batch in polled.values():
                merged.extend(batch)
        yield tuple(merged)
    except BaseException:  # a failed poll, a failed batch, or cancellation
        rewind(consumer, merged)
        raise


class GroupCatchUp:
    """Whether a consumer's group has handled every record its topic held when first asked: each
    partition's committed offset at or past the end it had then, whoever of the group's members
    consumed it. (Its own partitions alone would not do: with several replicas starting at once,
    the records sent while none ran are spread over all of them.)"""

    def __init__(self, topic: str) -> None:
        self._topic = topic
        self._ends: dict[TopicPartition, int] | None = None

    async def __call__(self, consumer: Any) -> bool:
        """True once the group committed past every end; False until then, or with no consumer yet."""
        if consumer is None:
            return False
        if self._ends is None:
            partitions = consumer.partitions_for_topic(self._topic)
            if not partitions:
                return False  # no metadata yet
            self._ends = await consumer.end_offsets([TopicPartition(self._topic, p) for p in sorted(partitions)])
        for partition, end in self._ends.items():
            if (await consumer.committed(partition) or 0) < end:
                return False
        return True


def rewind(consumer: Any, records: Sequence[Any]) -> None:
    """Seek each partition of `records` back to its earliest record there, so they are read again."""
    earliest: dict[TopicPartition, int] = {}
    for record in records:
        partition = TopicPartition(record.topic, record.partition)
        earliest[partition] = min(record.offset, earliest.get(partition, record.offset))
    for partition, offset in earliest.items():
        try:
            consumer.seek(partition, offset)
        except IllegalStateError:
            pass  # revoked meanwhile: its new owner reads on from the last committed offset


def event_type_header(record: Any) -> str | None:
    """The `ce_type` header the outbox puts on every case event, or None when it is missing."""
    for key, value in record.headers or ():
        if key == "ce_type":
            return bytes(value).decode(errors="replace")
    return None


def origin(record: Any) -> str:
    """`topic/partition/offset` of a consumer record."""
    return f"{record.topic}/{record.partition}/{record.offset}"


def record_id(record: Any) -> str:
    """What identifies a consumer record in an inbox when its payload has no id of its own: its
    position and the timestamp stored with it, `topic/partition/offset@timestamp`.

    The position alone comes back: a topic deleted and created again (a cluster rebuilt from its
    definitions, an in-memory broker restarted beside a kept database) numbers its records from 0,
    and a new message there would be taken for the one handled at that offset before, and skipped.
    A redelivered record carries the timestamp it was stored with, so it is still recognised.
    """
    return f"{origin(record)}@{record.timestamp}"


STATS_INTERVAL = 10.0  # seconds between a batch consumer's INFO summaries (instead of a line per message)


@dataclass
class BatchStats:
    """What a batch consumer did since its last summary line."""

    batches: int = 0
    messages: int = 0
    one_by_one: int = 0
    busy: float = 0.0
    since: float = field(default_factory=time.monotonic)

    def add(self, consumer: str, *, messages: int, busy: float, one_by_one: bool) -> None:
        """Count one batch; log and reset the summary once STATS_INTERVAL has passed."""
        self.batches += 1
        self.messages += messages
        self.one_by_one += one_by_one
        self.busy += busy
        now = time.monotonic()
        if now - self.since >= STATS_INTERVAL:
            log.info(
                "consumer.batches",
                consumer=consumer,
                batches=self.batches,
                messages=self.messages,
                mean_size=round(self.messages / self.batches, 1),
                one_by_one=self.one_by_one,
                busy_share=round(self.busy / (now - self.since), 3),
            )
            self.batches, self.messages, self.one_by_one, self.busy, self.since = 0, 0, 0, 0.0, now


class MessageConsumer:
    """Runs one consumer's work for each message with at-least-once, idempotent semantics."""

    def __init__(self, name: str, sessions: async_sessionmaker[AsyncSession], *, max_attempts: int = 5) -> None:
        self.name = name
        self._sessions = sessions
        self._max_attempts = max_attempts
        self._attempts: dict[str, int] = {}
        self.stats = BatchStats()

    async def process(self, record: Any, *, message_id: str, work: Work) -> bool:
        """Apply `work` once for `message_id`; False if it was a duplicate or dead-lettered."""
        return await self.guard(record, lambda: self.apply(message_id=message_id, work=work))

    async def apply(self, *, message_id: str, work: Work) -> bool:
        """The unguarded unit of work: inbox claim and effects in one transaction (use within `guard`),
        run again at once if it lost a lock conflict."""

        async def attempt() -> bool:
            async with transaction(self._sessions) as session:
                if not await claim(session, consumer=self.name, message_id=message_id):
                    log.debug("consumer.duplicate_skipped", consumer=self.name)
                    return False
                await work(session)
            return True

        return await retry_conflicts(attempt, what=self.name)

    async def process_batch(
        self, deliveries: Sequence[Delivery[T]], *, work: BatchWork[T], work_one: Callable[[Delivery[T]], Work]
    ) -> None:
        """Apply `work` to the messages of a poll batch not handled before, in one transaction with
        their inbox claims (one statement); the caller commits the offsets only after it returns.

        If the batch fails for any reason but the database being away, every message is handled
        on its own with `work_one` under the per-message policy (`process`), in batch order, so
        per-key order holds and a poison message is retried and dead-lettered alone.
        """
        if not deliveries:
            return
        started = time.monotonic()
        if await self._apply_batch(deliveries, work):
            self.stats.add(self.name, messages=len(deliveries), busy=time.monotonic() - started, one_by_one=False)
            return
        for delivery in deliveries:
            await self.process(delivery.record, message_id=delivery.message_id, work=work_one(delivery))
        self.stats.add(self.name, messages=len(deliveries), busy=time.monotonic() - started, one_by_one=True)

    async def _apply_batch(self, deliveries: Sequence[Delivery[T]], work: BatchWork[T]) -> bool:
        """The batch in one transaction (run again at once if it lost a lock conflict); False if it
        must go one by one instead."""

        async def attempt() -> None:
            async with transaction(self._sessions) as session:
                fresh = await claim_many(session, consumer=self.name, message_ids=[d.message_id for d in deliveries])
                todo: list[Delivery[T]] = []
                for delivery in deliveries:  # a message id twice in one batch is handled once
                    if delivery.message_id in fresh:
                        fresh.discard(delivery.message_id)
                        todo.append(delivery)
                if todo:
                    await work(session, todo)

        try:
            await retry_conflicts(attempt, what=self.name)
            return True
        except OneByOne as reason:
            log.debug("consumer.batch_one_by_one", consumer=self.name, reason=str(reason), size=len(deliveries))
        except Exception as exc:
            # A conflict lost every time: the one-by-one path's small transactions get through.
            if is_transient_db_error(exc) and not is_conflict(exc):
                log.warning("consumer.database_unavailable", consumer=self.name, error=type(exc).__name__)
                await asyncio.sleep(1.0)
                raise
            log.warning("consumer.batch_failed", consumer=self.name, size=len(deliveries), error=repr(exc)[:500])
        return False

    async def process_concurrently(
        self,
        deliveries: Sequence[Delivery[T]],
        *,
        key: Callable[[Delivery[T]], str],
        work_one: Callable[[Delivery[T]], Work],
        limit: int = 8,
    ) -> None:
        """Handle a poll batch message by message (each in its own transaction, as `process`), the
        messages of one key in order and up to `limit` keys at once: for work that must lock what
        it touches in its own order (so it cannot share one transaction with other messages'), yet
        should not wait for one database round trip after another.

        Every message is tried before any error is raised, so the redelivered batch (NACK) finds
        the others already in the inbox; the caller commits the offsets only after this returns.
        """
        groups: dict[str, list[Delivery[T]]] = {}
        for delivery in deliveries:
            groups.setdefault(key(delivery), []).append(delivery)
        gate = asyncio.Semaphore(limit)
        started = time.monotonic()

        async def in_order(group: list[Delivery[T]]) -> None:
            async with gate:
                for delivery in group:
                    await self.process(delivery.record, message_id=delivery.message_id, work=work_one(delivery))

        outcomes = await asyncio.gather(*(in_order(group) for group in groups.values()), return_exceptions=True)
        self.stats.add(self.name, messages=len(deliveries), busy=time.monotonic() - started, one_by_one=False)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

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
            if not await claim(session, consumer=self.name, message_id=f"dlq:{record_id(record)}"):
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
    return await _decode_case_event(consumer, record, parse_case_event)


async def read_case_event(consumer: MessageConsumer, record: Any, view: CaseEventView) -> CloudEvent | None:
    """`decode_case_event` for a consumer that reads only the fields of `view` (cheaper: the rest,
    a routing explanation say, is not built); it dead-letters and skips the same way."""
    return await _decode_case_event(consumer, record, view.parse)


async def _decode_case_event(consumer: MessageConsumer, record: Any, parse: Callable[[bytes], E]) -> E | None:
    try:
        return parse(record.value)
    except ValidationError as exc:
        try:
            type_ = json.loads(record.value).get("type")
        except (ValueError, AttributeError, TypeError):
            type_ = None
        if isinstance(type_, str) and type_.startswith("caselink.case.") and type_ not in _KNOWN_TYPES:
            log.debug("consumer.unknown_type_skipped", consumer=consumer.name, type=type_)
            return None
        # Where the event is wrong, never what it says (the fields' values could be anyone's data).
        where = "; ".join(f"{e.field}: {e.message}" for e in validation_errors(exc)[:5])
        await consumer.dead_letter(record, f"undecodable case event ({exc.error_count()} errors): {where}")
        return None
