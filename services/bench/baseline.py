"""The baselines: the same payloads through the same broker, without caselink's own work.

**Raw** (`run_baseline`): produce → topic 1 → consume + forward → topic 2 → consume + forward →
topic 3 → consume, with raw aiokafka. Every hop is pipelined the way a fast service would be: a
forwarder sends a whole poll's records without awaiting each one and waits for the
acknowledgements once per poll (at-least-once, as caselink commits after its work). No database,
no decoding: what the broker and the client library allow on this machine.

**Durable** (`run_baseline(..., database_url=...)`): three forwarders, one per caselink service,
each handing every record over the way caselink's services must so that none is lost or applied
twice, and doing nothing else: per poll, one PostgreSQL transaction claims the records' ids in an
inbox table and writes them to an outbox table (one statement each), then the offsets are
committed (consumer group, as the services); a relay in the same process reads the outbox in id
order, sends the rows pipelined and deletes them. No decoding, no business tables, no events of
its own: the ceiling of the transactional inbox/outbox design on this machine, which caselink's
intake → router → notifier cannot beat.

Forwarders run as child processes (`python -m services.bench.baseline BOOTSTRAP FROM TO COUNT
[DATABASE_URL HOP]`), as caselink's services do; the producer and the last consumer run in the
bench's process, where the bench also publishes submissions and watches case events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.bench.cpu import CORES, Meter, cost_between, cpu_seconds
from services.bench.stats import LatencySummary, Throughput, throughput
from services.shared.db import asyncpg_dsn
from services.shared.embedded import die_with_parent
from services.shared.kafka import client_security, consumer_options, make_producer
from services.shared.settings import Settings, get_settings

PARTITIONS = 12  # as caselink.referrals.submitted and caselink.case.events
HOPS = 3  # topics of the raw baseline: two forwarders
DURABLE_FORWARDERS = 3  # intake, router, notifier
RELAY_BATCH = 2000
FLOOR_SCHEMA = "bench_floor"


@dataclass(frozen=True)
class BaselineResult:
    """Throughput, latency and CPU of records through a chain of forwarders."""

    messages: int
    hops: int  # topics in the chain
    forwarders: int
    durable: bool
    partitions: int
    produce_seconds: float
    throughput: Throughput
    latency: LatencySummary
    cpu: dict[str, object] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "messages": self.messages,
            "hops": self.hops,
            "forwarders": self.forwarders,
            "durable": self.durable,
            "partitions": self.partitions,
            "produce_seconds": round(self.produce_seconds, 3),
            **self.throughput.to_dict(),
            "latency_ms": self.latency.to_dict(),
            "cpu": self.cpu,
        }


async def run_baseline(
    settings: Settings,
    bootstrap: str,
    messages: Sequence[tuple[bytes, bytes]],
    *,
    limit_seconds: float,
    progress: Callable[[int], None] = lambda _: None,
    database_url: str | None = None,
    meter: Meter | None = None,
) -> BaselineResult:
    """Push `messages` (key, value) through the chain on fresh topics within `limit_seconds`, raw
    or (with `database_url`) durable; remove the topics and the durable tables afterwards.

    `meter` reads the CPU seconds of the infrastructure's parts; the forwarders' and the bench's
    own are added, and the result says what each cost per message.
    """
    forwarders = DURABLE_FORWARDERS if database_url else HOPS - 1
    label = "durable" if database_url else "raw"
    topics = [f"caselink.bench.{uuid.uuid4().hex[:8]}.{label}-{i}" for i in range(1, forwarders + 2)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="caselink-bench", **client_security(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, PARTITIONS, settings.kafka_replication_factor) for t in topics])
        chain = _chain(settings, bootstrap, topics, messages, progress, database_url, meter)
        return await asyncio.wait_for(chain, limit_seconds)
    finally:
        with contextlib.suppress(Exception):  # Tansu may not delete topics; they are small
            await admin.delete_topics(topics)
        await admin.close()
        if database_url:
            await _drop_floor_schema(database_url)


async def _chain(
    settings: Settings,
    bootstrap: str,
    topics: list[str],
    messages: Sequence[tuple[bytes, bytes]],
    progress: Callable[[int], None],
    database_url: str | None,
    meter: Meter | None,
) -> BaselineResult:
    total = len(messages)
    if database_url:
        await _create_floor_schema(database_url, hops=len(topics) - 1)
    forwarders = list(
        await asyncio.gather(
            *(
                _start_forwarder(settings, bootstrap, topics[i], topics[i + 1], database_url=database_url, hop=i)
                for i in range(len(topics) - 1)
            )
        )
    )

    def cpu_now() -> dict[str, float]:
        used = dict(meter()) if meter else {}
        return used | cpu_seconds({"forwarders": [proc.pid for proc in forwarders]})

    sink_consumer = _consumer(settings, bootstrap)
    producer = make_producer(settings, bootstrap, client_id="caselink-bench-baseline")
    await sink_consumer.start()
    await producer.start()
    try:
        sink_consumer.assign([TopicPartition(topics[-1], p) for p in range(PARTITIONS)])
        latencies: list[float] = []
        finished: list[float] = []
        sink = asyncio.create_task(_sink(sink_consumer, total, latencies, finished, progress))
        before = cpu_now()
        started = time.time()
        pending = [await producer.send(topics[0], value, key=key) for key, value in messages]
        await asyncio.gather(*pending)
        produced = time.time() - started
        await sink
        # Before the forwarders exit: a reaped child's CPU time is no longer its own.
        cost = cost_between(before, cpu_now(), cases=total, seconds=time.time() - started)
        return BaselineResult(
            messages=total,
            hops=len(topics),
            forwarders=len(forwarders),
            durable=database_url is not None,
            partitions=PARTITIONS,
            produce_seconds=produced,
            throughput=throughput(started, finished),
            latency=LatencySummary.of_seconds(latencies),
            cpu=cost.to_dict(CORES) if cost else None,
        )
    finally:
        for forwarder in forwarders:
            if forwarder.returncode is None:
                forwarder.kill()
                await forwarder.wait()
        await producer.stop()
        await sink_consumer.stop()


async def _start_forwarder(
    settings: Settings, bootstrap: str, source: str, target: str, *, database_url: str | None, hop: int
) -> asyncio.subprocess.Process:
    """A forwarder child process; returns once it consumes (it prints `ready`). It runs until it
    is killed."""
    env = {
        **os.environ,
        "CASELINK_KAFKA_ENABLE_IDEMPOTENCE": str(settings.kafka_enable_idempotence).lower(),
        "CASELINK_KAFKA_FETCH_MAX_WAIT_MS": str(settings.kafka_fetch_max_wait_ms),
    }
    durable = [database_url, str(hop)] if database_url else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.bench.baseline", bootstrap, source, target, *durable,
        env=env, stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"baseline forwarder {source} -> {target} failed to start")
    return proc


async def forward(settings: Settings, bootstrap: str, source: str, target: str) -> None:
    """Forward every record from `source` to `target`, keeping keys and timestamps; one wait for
    acknowledgements per poll."""
    consumer = _consumer(settings, bootstrap)
    producer = make_producer(settings, bootstrap, client_id="caselink-bench-forwarder")
    await consumer.start()
    await producer.start()
    try:
        consumer.assign([TopicPartition(source, p) for p in range(PARTITIONS)])
        print("ready", flush=True)
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            sent = [
                await producer.send(target, record.value, key=record.key, timestamp_ms=record.timestamp)
                for records in batches.values()
                for record in records
            ]
            await asyncio.gather(*sent)
    finally:
        await producer.stop()
        await consumer.stop()


def _floor_tables(hop: int) -> tuple[str, str]:
    return f"{FLOOR_SCHEMA}.inbox_{hop}", f"{FLOOR_SCHEMA}.outbox_{hop}"


async def _create_floor_schema(database_url: str, *, hops: int) -> None:
    """An inbox and an outbox per forwarder, shaped as caselink's `shared.inbox` and `shared.outbox`."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {FLOOR_SCHEMA} CASCADE; CREATE SCHEMA {FLOOR_SCHEMA}")
        for hop in range(hops):
            inbox, outbox = _floor_tables(hop)
            await conn.execute(
                f"CREATE TABLE {inbox} (consumer text NOT NULL, message_id text NOT NULL, "
                "processed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (consumer, message_id));"
                f"CREATE TABLE {outbox} (id bigserial PRIMARY KEY, topic text NOT NULL, key bytea, "
                "payload bytea NOT NULL, timestamp_ms bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
            )
    finally:
        await conn.close()


async def _drop_floor_schema(database_url: str) -> None:
    with contextlib.suppress(Exception):  # best effort: a scratch schema, dropped again by the next run
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {FLOOR_SCHEMA} CASCADE")
        finally:
            await conn.close()


async def forward_durably(
    settings: Settings, bootstrap: str, source: str, target: str, database_url: str, hop: int
) -> None:
    """Forward every record from `source` to `target` through an inbox and an outbox (module
    docstring): a poll's records are claimed and stored in one transaction before their offsets
    are committed, and a relay publishes the outbox in id order and deletes what was acknowledged."""
    inbox, outbox = _floor_tables(hop)
    claim = (
        f"INSERT INTO {inbox} (consumer, message_id) SELECT $1, unnest($2::text[]) "
        "ON CONFLICT DO NOTHING RETURNING message_id"
    )
    store = (
        f"INSERT INTO {outbox} (topic, key, payload, timestamp_ms) "
        "SELECT $1, * FROM unnest($2::bytea[], $3::bytea[], $4::bigint[])"
    )
    read = f"SELECT id, key, payload, timestamp_ms FROM {outbox} ORDER BY id LIMIT $1"
    delete = f"DELETE FROM {outbox} WHERE id = ANY($1::bigint[])"
    group = f"caselink-bench-floor-{hop}"
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    relay_conn = await asyncpg.connect(asyncpg_dsn(database_url))
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        client_id=group,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **consumer_options(settings),
    )
    producer = make_producer(settings, bootstrap, client_id=group)
    await consumer.start()
    await producer.start()
    wake = asyncio.Event()

    async def relay() -> None:
        while True:
            await wake.wait()
            wake.clear()
            while rows := await relay_conn.fetch(read, RELAY_BATCH):
                sent = [
                    await producer.send(target, row["payload"], key=row["key"], timestamp_ms=row["timestamp_ms"])
                    for row in rows
                ]
                await asyncio.gather(*sent)
                await relay_conn.execute(delete, [row["id"] for row in rows])

    relaying = asyncio.create_task(relay())
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)  # joins the group; nothing is produced before `ready`
        print("ready", flush=True)
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            records = [record for records in batches.values() for record in records]
            if not records:
                continue
            async with conn.transaction():
                ids = [f"{r.topic}:{r.partition}:{r.offset}" for r in records]
                fresh = {row[0] for row in await conn.fetch(claim, group, ids)}
                todo = [r for r, id_ in zip(records, ids, strict=True) if id_ in fresh]
                await conn.execute(
                    store, target, [r.key for r in todo], [r.value for r in todo], [r.timestamp for r in todo]
                )
            await consumer.commit()
            wake.set()
    finally:
        relaying.cancel()
        await producer.stop()
        await consumer.stop()
        await conn.close()
        await relay_conn.close()


def _consumer(settings: Settings, bootstrap: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id="caselink-bench",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **consumer_options(settings),
    )


async def _sink(
    consumer: AIOKafkaConsumer,
    total: int,
    latencies: list[float],
    finished: list[float],
    progress: Callable[[int], None],
) -> None:
    """Consume the last hop; the latency of a record is now minus its first hop's produce time."""
    while len(finished) < total:
        batches = await consumer.getmany(timeout_ms=100)
        now = time.time()
        for records in batches.values():
            for record in records:
                latencies.append(now - record.timestamp / 1000)
                finished.append(now)
        progress(len(finished))


if __name__ == "__main__":
    bootstrap_arg, source_arg, target_arg, *durable_args = sys.argv[1:]
    if durable_args:
        database_arg, hop_arg = durable_args
        asyncio.run(forward_durably(get_settings(), bootstrap_arg, source_arg, target_arg, database_arg, int(hop_arg)))
    else:
        asyncio.run(forward(get_settings(), bootstrap_arg, source_arg, target_arg))
