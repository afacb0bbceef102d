"""The baseline: the same payloads through the same broker with raw aiokafka, three hops.

produce → topic 1 → consume + forward → topic 2 → consume + forward → topic 3 → consume. Every
hop is pipelined the way a fast service would be: a forwarder sends a whole poll's records
without awaiting each one and waits for the acknowledgements once per poll (at-least-once, as
caselink commits after its work). No database, no decoding: this is what the broker and the
client library allow on this machine, the ceiling for caselink's intake → router → notifier.

The two forwarders run as child processes (`python -m services.bench.baseline FROM TO COUNT`), as
caselink's services do; the producer and the last consumer run in the bench's process, where the
bench also publishes submissions and watches case events.
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

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.bench.stats import LatencySummary, Throughput, throughput
from services.shared.embedded import die_with_parent
from services.shared.kafka import client_security, consumer_options, make_producer
from services.shared.settings import Settings, get_settings

PARTITIONS = 12  # as caselink.referrals.submitted and caselink.case.events
HOPS = 3


@dataclass(frozen=True)
class BaselineResult:
    """Raw broker throughput and latency over three hops."""

    messages: int
    hops: int
    partitions: int
    produce_seconds: float
    throughput: Throughput
    latency: LatencySummary

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "messages": self.messages,
            "hops": self.hops,
            "partitions": self.partitions,
            "produce_seconds": round(self.produce_seconds, 3),
            **self.throughput.to_dict(),
            "latency_ms": self.latency.to_dict(),
        }


async def run_baseline(
    settings: Settings,
    bootstrap: str,
    messages: Sequence[tuple[bytes, bytes]],
    *,
    limit_seconds: float,
    progress: Callable[[int], None] = lambda _: None,
) -> BaselineResult:
    """Push `messages` (key, value) through three hops on fresh topics within `limit_seconds`;
    remove the topics afterwards."""
    topics = [f"caselink.bench.{uuid.uuid4().hex[:8]}.hop-{i}" for i in range(1, HOPS + 1)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="caselink-bench", **client_security(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, PARTITIONS, settings.kafka_replication_factor) for t in topics])
        return await asyncio.wait_for(_three_hops(settings, bootstrap, topics, messages, progress), limit_seconds)
    finally:
        with contextlib.suppress(Exception):  # Tansu may not delete topics; they are small
            await admin.delete_topics(topics)
        await admin.close()


async def _three_hops(
    settings: Settings,
    bootstrap: str,
    topics: list[str],
    messages: Sequence[tuple[bytes, bytes]],
    progress: Callable[[int], None],
) -> BaselineResult:
    total = len(messages)
    forwarders = list(
        await asyncio.gather(
            *(_start_forwarder(settings, bootstrap, topics[i], topics[i + 1], total) for i in range(HOPS - 1))
        )
    )
    sink_consumer = _consumer(settings, bootstrap)
    producer = make_producer(settings, bootstrap, client_id="caselink-bench-baseline")
    await sink_consumer.start()
    await producer.start()
    try:
        sink_consumer.assign([TopicPartition(topics[-1], p) for p in range(PARTITIONS)])
        latencies: list[float] = []
        finished: list[float] = []
        sink = asyncio.create_task(_sink(sink_consumer, total, latencies, finished, progress))
        started = time.time()
        pending = [await producer.send(topics[0], value, key=key) for key, value in messages]
        await asyncio.gather(*pending)
        produced = time.time() - started
        await sink
        for forwarder in forwarders:
            await forwarder.wait()
        return BaselineResult(
            total, HOPS, PARTITIONS, produced, throughput(started, finished), LatencySummary.of_seconds(latencies)
        )
    finally:
        for forwarder in forwarders:
            if forwarder.returncode is None:
                forwarder.kill()
                await forwarder.wait()
        await producer.stop()
        await sink_consumer.stop()


async def _start_forwarder(
    settings: Settings, bootstrap: str, source: str, target: str, total: int
) -> asyncio.subprocess.Process:
    """A forwarder child process; returns once it consumes (it prints `ready`)."""
    env = {
        **os.environ,
        "CASELINK_KAFKA_ENABLE_IDEMPOTENCE": str(settings.kafka_enable_idempotence).lower(),
        "CASELINK_KAFKA_FETCH_MAX_WAIT_MS": str(settings.kafka_fetch_max_wait_ms),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.bench.baseline", bootstrap, source, target, str(total),
        env=env, stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"baseline forwarder {source} -> {target} failed to start")
    return proc


async def forward(settings: Settings, bootstrap: str, source: str, target: str, total: int) -> None:
    """Forward `total` records from `source` to `target`, keeping keys and timestamps; one wait for
    acknowledgements per poll."""
    consumer = _consumer(settings, bootstrap)
    producer = make_producer(settings, bootstrap, client_id="caselink-bench-forwarder")
    await consumer.start()
    await producer.start()
    try:
        consumer.assign([TopicPartition(source, p) for p in range(PARTITIONS)])
        print("ready", flush=True)
        forwarded = 0
        while forwarded < total:
            batches = await consumer.getmany(timeout_ms=100)
            sent = [
                await producer.send(target, record.value, key=record.key, timestamp_ms=record.timestamp)
                for records in batches.values()
                for record in records
            ]
            await asyncio.gather(*sent)
            forwarded += len(sent)
    finally:
        await producer.stop()
        await consumer.stop()


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
    bootstrap_arg, source_arg, target_arg, total_arg = sys.argv[1:5]
    asyncio.run(forward(get_settings(), bootstrap_arg, source_arg, target_arg, int(total_arg)))
