"""The outbox relay publishes a pass's rows as record batches (one builder per partition, more when
one fills): every row arrives, each partition's rows in id order, and a pass that fails anywhere
deletes nothing, so the next pass publishes it all again."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from schemas.topics import CASE_EVENTS, REFERRALS_REJECTED
from services.shared.db import asyncpg_dsn
from services.shared.embedded import TANSU_SETTINGS, start_infrastructure
from services.shared.kafka import create_topics, make_producer
from services.shared.migrate import upgrade_async
from services.shared.outbox import NOTIFY_CHANNEL, OutboxMessage, OutboxRelay, enqueue, enqueue_many
from services.shared.settings import Settings

pytestmark = pytest.mark.integration

SETTINGS = Settings.model_validate(TANSU_SETTINGS)
# Large enough that a partition's share of a pass fills several 256 KiB record batches.
PAYLOAD_PADDING = "x" * 2_000


@dataclass
class Infra:
    database_url: str
    bootstrap: str


@pytest_asyncio.fixture(scope="module")
async def infra(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Infra]:
    started = start_infrastructure(Path(tmp_path_factory.mktemp("relay")))
    try:
        await upgrade_async(started.database_url)
        await create_topics(SETTINGS, started.kafka_bootstrap)
        yield Infra(started.database_url, started.kafka_bootstrap)
    finally:
        started.stop()


async def fill_outbox(conn: asyncpg.Connection, run: str, *, rows: int, cases: int) -> None:
    """`rows` case events of `cases` cases, round robin, plus a few unkeyed messages on another topic."""
    case_ids = [f"{run}-{i}" for i in range(cases)]
    messages: list[tuple[str, bytes | None, dict[str, Any]]] = []
    for n in range(rows):
        if n % 100 == 50:
            messages.append((REFERRALS_REJECTED, None, {"run": run, "n": n}))
        else:
            messages.append((CASE_EVENTS, case_ids[n % cases].encode(), {"run": run, "n": n, "pad": PAYLOAD_PADDING}))
    await conn.executemany(
        "INSERT INTO shared.outbox (topic, key, payload, headers) VALUES ($1, $2, $3, $4::jsonb)",
        [(topic, key, json.dumps(body).encode(), json.dumps({"n": str(body["n"])})) for topic, key, body in messages],
    )


async def drain(relay: OutboxRelay, conn: asyncpg.Connection) -> int:
    """Run passes until the outbox is empty; return how many rows were published."""
    published = 0
    while moved := await relay._publish_batch(conn):
        published += moved
    return published


async def published(bootstrap: str, run: str, *, expected: int) -> dict[tuple[str, int], list[Any]]:
    """This run's records per (topic, partition), in log order (waits until `expected` distinct rows arrived)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in (CASE_EVENTS, REFERRALS_REJECTED)
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: dict[tuple[str, int], list[Any]] = defaultdict(list)
        seen: set[int] = set()
        async with asyncio.timeout(60):
            while len(seen) < expected:
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    for record in records:
                        body = json.loads(record.value)
                        if body["run"] == run:
                            found[(tp.topic, tp.partition)].append(record)
                            seen.add(body["n"])
        return found
    finally:
        await consumer.stop()


def numbers(records: list[Any]) -> list[int]:
    return [json.loads(record.value)["n"] for record in records]


async def test_every_row_arrives_once_in_id_order_on_its_keys_partition(infra: Infra) -> None:
    run = uuid.uuid4().hex[:8]
    relay = OutboxRelay(
        infra.database_url, lambda: make_producer(SETTINGS, infra.bootstrap, client_id="relay-test"), batch_size=2_000
    )
    relay.producer = relay._make_producer()
    await relay.producer.start()
    conn = await asyncpg.connect(asyncpg_dsn(infra.database_url))
    try:
        await fill_outbox(conn, run, rows=2_000, cases=97)
        assert await drain(relay, conn) == 2_000
        by_partition = await published(infra.bootstrap, run, expected=2_000)
    finally:
        await conn.close()
        await relay.producer.stop()

    assert sorted(n for records in by_partition.values() for n in numbers(records)) == list(range(2_000)), "not once"
    case_partitions = [tp for tp in by_partition if tp[0] == CASE_EVENTS]
    assert len(case_partitions) > 6, "the cases should spread over most partitions"
    for tp, records in by_partition.items():
        assert numbers(records) == sorted(numbers(records)), f"{tp} is out of id order"
        headers = [dict(record.headers)["n"] for record in records]
        assert headers == [str(n).encode() for n in numbers(records)], f"{tp}: headers do not match their rows"
    partitions_of_key: dict[bytes, set[int]] = defaultdict(set)
    for (topic, partition), records in by_partition.items():
        for record in records:
            if topic == CASE_EVENTS:
                partitions_of_key[record.key].add(partition)
    assert all(len(p) == 1 for p in partitions_of_key.values()), "a case's events were split across partitions"
    largest = max(len(records) for records in by_partition.values())
    assert largest * len(PAYLOAD_PADDING) > 256 * 1024, "no partition needed a second record batch"


class FailingOnce(AIOKafkaProducer):
    """A producer whose third `send_batch` of its life fails, as a full queue would."""

    calls = 0

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        FailingOnce.calls += 1
        if FailingOnce.calls == 3:
            raise KafkaTimeoutError()
        return await super().send_batch(batch, topic, partition=partition)


async def test_a_pass_that_fails_midway_deletes_nothing_and_the_next_publishes_everything(infra: Infra) -> None:
    run = uuid.uuid4().hex[:8]
    relay = OutboxRelay(
        infra.database_url,
        lambda: FailingOnce(bootstrap_servers=infra.bootstrap, enable_idempotence=False, acks="all"),
        batch_size=2_000,
    )
    relay.producer = relay._make_producer()
    await relay.producer.start()
    conn = await asyncpg.connect(asyncpg_dsn(infra.database_url))
    try:
        await fill_outbox(conn, run, rows=600, cases=40)
        with pytest.raises(KafkaTimeoutError):
            await relay._publish_batch(conn)
        assert await conn.fetchval("SELECT count(*) FROM shared.outbox") == 600
        assert await drain(relay, conn) == 600
        assert await conn.fetchval("SELECT count(*) FROM shared.outbox") == 0
        by_partition = await published(infra.bootstrap, run, expected=600)
    finally:
        await conn.close()
        await relay.producer.stop()

    # The failed pass may have delivered some batches already: those come twice, never missing.
    assert set(n for records in by_partition.values() for n in numbers(records)) == set(range(600))


@pytest.mark.parametrize("how", ["one", "many"])
async def test_the_relay_is_woken_by_the_commit_that_fills_the_outbox_and_not_before(infra: Infra, how: str) -> None:
    """The relay waits for a notification rather than polling (1 s by default): the statement that
    adds to the outbox sends it, delivered when the transaction commits, never on a rollback."""
    listener = await asyncpg.connect(asyncpg_dsn(infra.database_url))
    woken: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(NOTIFY_CHANNEL, lambda *args: woken.put_nowait(args[2]))
    engine = create_async_engine(infra.database_url)
    try:
        message = OutboxMessage(CASE_EVENTS, f"wake-{how}", b"{}", {"ce_type": "test"})
        for commit in (False, True):
            async with engine.connect() as conn, AsyncSession(bind=conn) as session:
                async with session.begin() as transaction:
                    if how == "one":
                        await enqueue(session, topic=message.topic, key=message.key, payload=message.payload)
                    else:
                        await enqueue_many(session, [message, message])
                    await asyncio.sleep(0.2)
                    assert woken.empty()  # not before the commit
                    if not commit:
                        await transaction.rollback()
            if commit:
                assert await asyncio.wait_for(woken.get(), 5) == NOTIFY_CHANNEL
            else:
                await asyncio.sleep(0.2)
                assert woken.empty()
        await asyncio.sleep(0.2)
        assert woken.empty()  # one notification per transaction
    finally:
        await listener.execute("DELETE FROM shared.outbox WHERE key = $1", f"wake-{how}".encode())
        await listener.close()
        await engine.dispose()
