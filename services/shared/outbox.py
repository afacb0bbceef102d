"""The transactional outbox: events are written in the same transaction as the state they describe,
and one relay publishes them to Kafka after commit.

Exactly one relay is active per database (a session-level advisory lock elects it); the others
stand by and take over within one poll interval if it dies. A single relay publishing in id order
through one producer keeps each case's events in `sequence` order on its partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.events import STATUS_AFTER, CaseEvent, EventSource, new_event
from schemas.topics import CASE_EVENTS
from services.shared.case_view import record_case_events
from services.shared.db import asyncpg_dsn
from services.shared.logging import get_logger
from services.shared.tables import outbox

log = get_logger(__name__)

NOTIFY_CHANNEL = "caselink_outbox"
# Any constant shared by every relay process; the value only has to be unique within this database.
RELAY_LOCK_KEY = 0x0CA5E11
STATS_INTERVAL = 10.0  # seconds between the relay's INFO summaries


async def enqueue(
    session: AsyncSession,
    *,
    topic: str,
    key: str | bytes | None,
    payload: bytes,
    headers: dict[str, str] | None = None,
) -> None:
    """Add one message to the outbox; it is published only if the surrounding transaction commits."""
    await enqueue_many(session, [OutboxMessage(topic, key, payload, headers or {})])


# One statement text whatever the batch size, so asyncpg prepares it once per connection. It also
# wakes the relay: a notification is delivered at commit, and those of one transaction are folded
# into one.
_ENQUEUE_MANY = text(
    "WITH added AS (INSERT INTO shared.outbox (topic, key, payload, headers) "
    "SELECT m.topic, m.key, m.payload, CAST(m.headers AS jsonb) FROM unnest("
    "CAST(:topics AS text[]), CAST(:keys AS bytea[]), CAST(:payloads AS bytea[]), CAST(:headers AS text[])"
    ") WITH ORDINALITY AS m(topic, key, payload, headers, position) ORDER BY m.position RETURNING 1) "
    f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"
)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One message for `enqueue_many`."""

    topic: str
    key: str | bytes | None
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)


def case_event_message(event: CaseEvent) -> OutboxMessage:
    """A case event as the outbox publishes it: keyed by its case, its type and id in headers."""
    return OutboxMessage(
        CASE_EVENTS, event.subject, event.model_dump_json().encode(), {"ce_type": event.type, "ce_id": str(event.id)}
    )


async def enqueue_many(session: AsyncSession, messages: Sequence[OutboxMessage]) -> None:
    """`enqueue` for many messages in one statement; they are published in the order given."""
    if not messages:
        return
    await session.execute(
        _ENQUEUE_MANY,
        {
            "topics": [m.topic for m in messages],
            "keys": [m.key.encode() if isinstance(m.key, str) else m.key for m in messages],
            "payloads": [m.payload for m in messages],
            "headers": [json.dumps(m.headers) for m in messages],
        },
    )


_ADVANCE_HEADS = text(
    "INSERT INTO shared.case_heads (case_id, last_sequence, status, tier, station_id) "
    "SELECT * FROM unnest(CAST(:case_ids AS text[]), CAST(:counts AS integer[]), CAST(:statuses AS text[]), "
    "CAST(:tiers AS text[]), CAST(:stations AS text[])) ORDER BY 1 "
    "ON CONFLICT (case_id) DO UPDATE SET last_sequence = shared.case_heads.last_sequence + EXCLUDED.last_sequence, "
    "status = EXCLUDED.status, tier = EXCLUDED.tier, station_id = EXCLUDED.station_id "
    "RETURNING case_id, last_sequence"
)


_LOCK_HEADS = text("SELECT case_id FROM shared.case_heads WHERE case_id = ANY(:case_ids) ORDER BY case_id FOR UPDATE")
_ADVANCE_KEPT_HEADS = text(
    "UPDATE shared.case_heads AS h SET last_sequence = h.last_sequence + m.n "
    "FROM unnest(CAST(:case_ids AS text[]), CAST(:counts AS integer[])) AS m(case_id, n) "
    "WHERE h.case_id = m.case_id RETURNING h.case_id, h.last_sequence, h.status, h.tier, h.station_id"
)


async def emit_case_events(
    session: AsyncSession, events: Sequence[tuple[str, dict[str, Any]]], *, source: EventSource
) -> list[CaseEvent]:
    """Build the next events of cases, in a few statements, and put them in the outbox and in the
    case read model (`case_view`); a case's events get consecutive sequences in the order given.
    Either every event moves its case (STATUS_AFTER is not None), or none does (notified, sla_*:
    status, tier and station are then taken from the case's head and need not be given).

    The heads are locked in case-id order, so two such batches lock shared heads in the same
    order; the row locks keep sequences gap-free and in commit order, as for one event.
    """
    if not events:
        return []
    counts: dict[str, int] = {}
    last: dict[str, dict[str, Any]] = {}
    for _, data in events:
        counts[data["case_id"]] = counts.get(data["case_id"], 0) + 1
        last[data["case_id"]] = data
    case_ids = sorted(counts)
    moving = {STATUS_AFTER[name] is not None for name, _ in events}
    if len(moving) > 1:
        raise ValueError("emit events that move their case and events that keep it in separate calls")
    place: dict[str, dict[str, Any]] = {}
    if moving == {True}:
        statement, parameters = (
            _ADVANCE_HEADS,
            {
                "case_ids": case_ids,
                "counts": [counts[c] for c in case_ids],
                "statuses": [str(last[c]["status"]) for c in case_ids],
                "tiers": [str(last[c]["tier"]) for c in case_ids],
                "stations": [last[c]["station_id"] for c in case_ids],
            },
        )
    else:
        await session.execute(_LOCK_HEADS, {"case_ids": case_ids})
        statement, parameters = _ADVANCE_KEPT_HEADS, {"case_ids": case_ids, "counts": [counts[c] for c in case_ids]}
    rows = (await session.execute(statement, parameters)).all()
    if moving == {False}:
        place = {row.case_id: {"status": row.status, "tier": row.tier, "station_id": row.station_id} for row in rows}
    next_sequence = {row.case_id: row.last_sequence - counts[row.case_id] + 1 for row in rows}
    built: list[CaseEvent] = []
    for name, data in events:
        case_id = data["case_id"]
        if case_id not in next_sequence:
            raise LookupError(f"case {case_id} has no events yet: {name} cannot be its first")
        sequence = next_sequence[case_id]
        next_sequence[case_id] = sequence + 1
        built.append(new_event(name, source=source, data={**data, **place.get(case_id, {}), "sequence": sequence}))
    messages = [case_event_message(event) for event in built]
    await enqueue_many(session, messages)
    await record_case_events(
        session, [(event, message.payload) for event, message in zip(built, messages, strict=True)]
    )
    return built


async def pending_count(session: AsyncSession) -> int:
    """How many messages wait in the outbox (for metrics and tests)."""
    return int((await session.execute(select(func.count()).select_from(outbox))).scalar_one())


class OutboxRelay:
    """Publishes committed outbox rows to Kafka in id order, deleting them once the broker acked."""

    def __init__(
        self,
        database_url: str,
        make_producer: Callable[[], AIOKafkaProducer],
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        connect_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._connect_kwargs = connect_kwargs or {}
        self._make_producer = make_producer
        self.producer: AIOKafkaProducer | None = None
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.is_leader = False
        self.published = 0
        self._stats: list[float] = [0, 0, 0.0]  # batches, messages, seconds publishing
        self._phases = {"read": 0.0, "send": 0.0, "delete": 0.0}  # seconds in each step of a batch
        self._stats_since = time.monotonic()

    async def start(self) -> None:
        """Connect the producer (aiokafka wants a running loop for that) and relay in the background."""
        self.producer = self._make_producer()
        await self.producer.start()
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Stop after the batch in flight (unpublished rows stay for the next relay)."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()

    async def _run(self) -> None:
        backoff = self._poll_interval
        while True:
            try:
                await self._lead_or_stand_by()
                backoff = self._poll_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database or broker gone: retry, never give up on the outbox
                self.is_leader = False
                log.warning("outbox.relay_error", error=repr(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _lead_or_stand_by(self) -> None:
        conn: asyncpg.Connection = await asyncpg.connect(self._dsn, **self._connect_kwargs)
        try:
            # Stand by until the active relay's session ends (its lock is released with it).
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):  # noqa: ASYNC110
                await asyncio.sleep(self._poll_interval)
            self.is_leader = True
            log.info("outbox.relay_leading")
            await conn.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())
            while True:
                self._wake.clear()
                started = time.monotonic()
                published = await self._publish_batch(conn)
                self._note(published, time.monotonic() - started)
                if published < self._batch_size:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._poll_interval)
        finally:
            self.is_leader = False
            with contextlib.suppress(Exception):
                await asyncio.shield(conn.close(timeout=2))

    def _note(self, published: int, busy: float) -> None:
        """Count a batch; one INFO summary every STATS_INTERVAL seconds instead of a line per batch."""
        if published:
            self._stats[0] += 1
            self._stats[1] += published
            self._stats[2] += busy
        now = time.monotonic()
        if now - self._stats_since >= STATS_INTERVAL and self._stats[0]:
            batches, messages, spent = self._stats
            log.info(
                "outbox.relayed",
                batches=int(batches),
                messages=int(messages),
                mean_size=round(messages / batches, 1),
                busy_share=round(spent / (now - self._stats_since), 3),
                **{f"{step}_ms_per_batch": round(1000 * s / batches, 1) for step, s in self._phases.items()},
            )
            self._phases = dict.fromkeys(self._phases, 0.0)
            self._stats, self._stats_since = [0, 0, 0.0], now

    async def _publish_batch(self, conn: asyncpg.Connection) -> int:
        started = time.monotonic()
        rows = await conn.fetch(
            "SELECT id, topic, key, payload, headers FROM shared.outbox ORDER BY id LIMIT $1", self._batch_size
        )
        if not rows:
            return 0
        read = time.monotonic()
        assert self.producer is not None, "start() connects the producer"
        builders = await self._build_batches(rows)
        # If any batch fails, nothing is deleted and all rows go again: duplicates are possible
        # (consumers dedupe by event id), losses and reordering within a case are not.
        await asyncio.gather(*await self._hand_over(builders))
        sent = time.monotonic()
        await conn.execute("DELETE FROM shared.outbox WHERE id = ANY($1::bigint[])", [row["id"] for row in rows])
        for step, seconds in zip(self._phases, (read - started, sent - read, time.monotonic() - sent), strict=True):
            self._phases[step] += seconds
        self.published += len(rows)
        return len(rows)

    async def _build_batches(self, rows: Sequence[asyncpg.Record]) -> dict[tuple[str, int], list[BatchBuilder]]:
        """The rows as record batches per (topic, partition), each partition's in id order.

        aiokafka's batch API instead of one `send` per row: no future, partition lookup and
        accumulator round per message, which was most of the relay's CPU.
        """
        assert self.producer is not None
        producer = self.producer
        # Waits for the topics' metadata, as `send` would; `_partition_of` then finds it cached.
        unkeyed = {
            topic: random.choice(sorted(await producer.partitions_for(topic))) for topic in {r["topic"] for r in rows}
        }
        builders: dict[tuple[str, int], list[BatchBuilder]] = {}
        for row in rows:
            topic = row["topic"]
            key = bytes(row["key"]) if row["key"] is not None else None
            partition = self._partition_of(topic, key)
            # Unkeyed messages (dead letters of unkeyed records) of one pass share a partition, in order.
            tp = (topic, unkeyed[topic] if partition is None else partition)
            value = bytes(row["payload"])
            headers = [(k, str(v).encode()) for k, v in _headers(row["headers"]).items()]
            batches = builders.get(tp)
            if batches is None or batches[-1].append(key=key, value=value, timestamp=None, headers=headers) is None:
                # A new builder takes its first record whatever its size; a full one returned None.
                builder = producer.create_batch()
                builder.append(key=key, value=value, timestamp=None, headers=headers)
                builders.setdefault(tp, []).append(builder)
        return builders

    async def _hand_over(self, builders: dict[tuple[str, int], list[BatchBuilder]]) -> list[asyncio.Future[Any]]:
        """Queue every batch in the producer before any is awaited; return their delivery futures.

        Closed builders go out without lingering. The first batch of every partition is queued
        first, so one produce request can carry them all; a partition's next batch waits in
        `send_batch` until the one before it left (the producer's queue keeps them in order).
        """
        assert self.producer is not None
        futures: list[asyncio.Future[Any]] = []
        try:
            for round_ in itertools.zip_longest(*builders.values()):
                for (topic, partition), builder in zip(builders, round_, strict=True):
                    if builder is not None:
                        builder.close()
                        futures.append(await self.producer.send_batch(builder, topic, partition=partition))
        except BaseException:
            for future in futures:  # nobody will await them: retrieve their outcome quietly
                future.cancel()
            raise
        return futures

    def _partition_of(self, topic: str, key: bytes | None) -> int | None:
        """The partition aiokafka's default partitioner would pick for a key (None: let it pick).

        The same murmur2 formula over the same partition list, with the hash of a key cached:
        each case's key comes back for every one of its events, and murmur2 is pure Python.
        """
        assert self.producer is not None
        partitions = self.producer.client.cluster.partitions_for_topic(topic)
        if key is None or not partitions:
            return None
        all_partitions = list(partitions)
        return all_partitions[_key_hash(key) % len(all_partitions)]


@functools.lru_cache(maxsize=65536)
def _key_hash(key: bytes) -> int:
    return murmur2(key) & 0x7FFFFFFF


def _headers(raw: Any) -> dict[str, Any]:
    return json.loads(raw) if isinstance(raw, str) else dict(raw or {})
