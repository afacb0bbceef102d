"""caselink's Kafka pipeline under load: submissions in on caselink.referrals.submitted, case events
out on caselink.case.events, watched by a plain aiokafka consumer exactly as a downstream system would.

A phase publishes its submissions (at a fixed rate, or as fast as the producer takes them, which
is pipelined: one `send()` per message and a single wait for all acknowledgements at the end), then
waits until as many cases settled (CaseLedger) as it submitted, or until nothing settled for
`stall_seconds`. Which case belongs to which submission is read from intake's own record
(`intake.submission_keys`) afterwards, so latency is per submission: from the moment the bench
handed it to the producer to the moment the bench saw the case's first `notified` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy import text

from schemas.topics import CASE_EVENTS, REFERRALS_REJECTED, REFERRALS_SUBMITTED, TOPIC_PARTITIONS
from services.bench.cpu import CORES, CpuCost, Meter, cost_between
from services.bench.ledger import CaseLedger
from services.bench.stats import LatencySummary, Throughput, per_second, throughput
from services.bench.workload import Submission
from services.shared.db import create_engine
from services.shared.kafka import consumer_options
from services.shared.settings import Settings

Progress = Callable[[int, int], None]  # (published, settled)
# Where a case's time goes, as the bench sees it on caselink.case.events: submission → `received`
# (intake, including its outbox relay), `received` → first decision (router), decision → push outcome (notifier).
STAGES = ("intake", "router", "notifier")


class EventWatcher:
    """Everything published on caselink.case.events (into a CaseLedger) and the submission ids on
    caselink.referrals.rejected, from the moment `start()` returns."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.ledger = CaseLedger()
        self.rejected: set[str] = set()
        self._settings = settings
        self._bootstrap = bootstrap
        self._consumers: list[AIOKafkaConsumer] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Subscribe at the current end of both topics (resolved before returning)."""
        await self._watch(CASE_EVENTS, lambda event, at: self.ledger.observe(event, at))
        await self._watch(
            REFERRALS_REJECTED, lambda rejection, _: self.rejected.add(str(rejection.get("submission_id")))
        )

    async def _watch(self, topic: str, handle: Callable[[dict[str, Any], float], None]) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            client_id="caselink-bench-watch",
            enable_auto_commit=False,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **consumer_options(self._settings),
        )
        await consumer.start()
        partitions = [TopicPartition(topic, p) for p in range(TOPIC_PARTITIONS[topic])]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for partition in partitions:
            await consumer.position(partition)
        self._consumers.append(consumer)
        self._tasks.append(asyncio.create_task(_consume(consumer, handle)))

    async def stop(self) -> None:
        """Stop watching."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for consumer in self._consumers:
            await consumer.stop()


async def _consume(consumer: AIOKafkaConsumer, handle: Callable[[dict[str, Any], float], None]) -> None:
    while True:
        batches = await consumer.getmany(timeout_ms=100)
        at = time.time()
        for records in batches.values():
            for record in records:
                with contextlib.suppress(ValueError, TypeError):
                    handle(json.loads(record.value or b"null") or {}, at)


@dataclass
class PhaseResult:
    """One load phase: how fast it was published, how fast its cases settled, and their latency."""

    name: str
    replicas: int
    cases: int
    requested_rate: float | None
    publish_seconds: float
    settled: Throughput
    latency: LatencySummary
    stages: dict[str, LatencySummary] = field(default_factory=dict)
    submissions: list[str] = field(default_factory=list, repr=False)
    cpu: CpuCost | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "phase": self.name,
            "replicas": self.replicas,
            "cases": self.cases,
            "requested_rate": self.requested_rate,
            "publish_seconds": round(self.publish_seconds, 3),
            "offered_per_s": per_second(self.cases, self.publish_seconds),
            "settled": self.settled.items,
            "seconds": self.settled.seconds,
            "cases_per_s": self.settled.per_s,
            "steady_cases_per_s": self.settled.steady_per_s,
            "latency_ms": self.latency.to_dict(),
            "stages_ms": {stage: summary.to_dict() for stage, summary in self.stages.items()},
            "cpu": self.cpu.to_dict(CORES) if self.cpu else None,
        }


async def publish(
    producer: AIOKafkaProducer,
    submissions: Sequence[Submission],
    *,
    rate: float | None,
    sent_at: dict[str, float],
    progress: Callable[[int], None],
) -> float:
    """Publish on caselink.referrals.submitted, at `rate` per second or flat out; return the seconds taken."""
    encoded = [(s.submission_id, s.room_id.encode(), s.kafka_value()) for s in submissions]
    started = time.time()
    pending = []
    for i, (submission_id, key, value) in enumerate(encoded):
        if rate:
            delay = started + i / rate - time.time()
            if delay > 0.002:
                progress(i)
                await asyncio.sleep(delay)
        elif i % 1000 == 0:
            progress(i)
        sent_at[submission_id] = time.time()
        pending.append(await producer.send(REFERRALS_SUBMITTED, value, key=key))
    await asyncio.gather(*pending)
    progress(len(encoded))
    return time.time() - started


async def run_phase(
    name: str,
    *,
    replicas: int,
    producer: AIOKafkaProducer,
    watcher: EventWatcher,
    submissions: Sequence[Submission],
    rate: float | None,
    stall_seconds: float,
    case_of: Callable[[list[str]], Awaitable[dict[str, str]]],
    progress: Progress,
    alive: Callable[[], None],
    cpu: Meter | None = None,
) -> PhaseResult:
    """Publish the phase's submissions and wait for their cases to settle; measure both, and the
    CPU each part of the stack spent meanwhile (`cpu`, read before and after)."""
    ledger = watcher.ledger
    cpu_before, began = (cpu() if cpu else {}), time.monotonic()
    settled_before = ledger.settled
    sent_at: dict[str, float] = {}
    published = [0]

    def report_published(n: int) -> None:
        published[0] = n
        progress(n, ledger.settled - settled_before)

    publish_seconds = await publish(producer, submissions, rate=rate, sent_at=sent_at, progress=report_published)
    last_change, last_settled = time.monotonic(), ledger.settled
    while ledger.settled - settled_before < len(submissions):
        alive()
        progress(published[0], ledger.settled - settled_before)
        if ledger.settled != last_settled:
            last_change, last_settled = time.monotonic(), ledger.settled
        elif time.monotonic() - last_change > stall_seconds:
            break
        await asyncio.sleep(0.2)
    progress(published[0], ledger.settled - settled_before)
    cost = (
        cost_between(cpu_before, cpu(), cases=ledger.settled - settled_before, seconds=time.monotonic() - began)
        if cpu
        else None
    )
    ids = [s.submission_id for s in submissions]
    mapping = await case_of(ids)
    latencies, settled_times = [], []
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for submission_id in ids:
        track = ledger.cases.get(mapping.get(submission_id, ""))
        if track is None or track.settled_at is None:
            continue
        settled_times.append(track.settled_at)
        if track.first_notified_at is not None:
            latencies.append(track.first_notified_at - sent_at[submission_id])
        if track.received_at is not None and track.decided_at is not None:
            stages["intake"].append(track.received_at - sent_at[submission_id])
            stages["router"].append(track.decided_at - track.received_at)
            stages["notifier"].append(track.settled_at - track.decided_at)
    first_sent = min(sent_at.values(), default=time.time())
    return PhaseResult(
        name,
        replicas,
        len(submissions),
        rate,
        publish_seconds,
        throughput(first_sent, settled_times),
        LatencySummary.of_seconds(latencies),
        {stage: LatencySummary.of_seconds(values) for stage, values in stages.items()},
        ids,
        cost,
    )


class CaseDirectory:
    """Which case intake created for which Kafka submission (intake.submission_keys)."""

    def __init__(self, settings: Settings, database_url: str) -> None:
        self._engine = create_engine(settings, url=database_url)

    async def case_of(self, submission_ids: list[str]) -> dict[str, str]:
        """submission id -> case id, for those intake accepted."""
        mapping: dict[str, str] = {}
        async with self._engine.connect() as conn:
            for start in range(0, len(submission_ids), 5000):
                rows = await conn.execute(
                    text("SELECT key, case_id FROM intake.submission_keys WHERE source = 'kafka' AND key = ANY(:keys)"),
                    {"keys": submission_ids[start : start + 5000]},
                )
                mapping.update({row.key: row.case_id for row in rows})
        return mapping

    async def backlog(self) -> int:
        """Work the services have not finished: outbox rows not yet published."""
        async with self._engine.connect() as conn:
            return int(await conn.scalar(_BACKLOG) or 0)

    async def close(self) -> None:
        """Release the connections."""
        await self._engine.dispose()


_BACKLOG = text("SELECT count(*) FROM shared.outbox")


async def drain(directory: CaseDirectory, *, limit_seconds: float, poll: float = 0.5) -> float | None:
    """Wait until the services' backlog is empty: the seconds it took, or None after `limit_seconds`."""
    started = time.monotonic()
    while await directory.backlog():
        if time.monotonic() - started > limit_seconds:
            return None
        await asyncio.sleep(poll)
    return round(time.monotonic() - started, 1)
