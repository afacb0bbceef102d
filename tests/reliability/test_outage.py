"""Infrastructure outages while referrals keep arriving: the broker frozen (SIGSTOP … SIGCONT) and
PostgreSQL shut down and started again. Nothing submitted is lost or handled twice, intake says
it is not ready while a dependency is gone, and no consumer commits past what it processed.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.topics import REFERRALS_SUBMITTED, TOPIC_PARTITIONS
from tests.reliability.bench import CATEGORIES, RISKS, ReliabilityBench, wait_until
from tests.support.faults import committed_offsets, end_offsets, frozen, start_postgres_again, stop_postgres

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(240)]

SEED = 20260614
BROKER_OUTAGE_REFERRALS = 30
BROKER_FROZEN_FOR = 12.0  # longer than the consumers' 10 s session timeout
DATABASE_REFERRALS = 60
DATABASE_DOWN_FOR = 8.0


def _referrals(rooms: list[str], count: int, seed: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    return [(rng.choice(rooms), rng.choice(CATEGORIES), rng.choice(RISKS)) for _ in range(count)]


async def test_broker_frozen_intake_still_accepts_and_every_case_is_placed_exactly_once_after(
    bench: ReliabilityBench,
) -> None:
    await bench.ensure_running("intake", "router")
    referrals = _referrals(bench.trees["BO"].all_rooms, BROKER_OUTAGE_REFERRALS + 5, SEED)
    tansu = bench.server("tansu")
    answers = []
    async with bench.client(seconds=10.0) as client:
        with frozen(tansu.proc.pid):
            frozen_at = time.monotonic()
            for room, category, risk in referrals[:BROKER_OUTAGE_REFERRALS]:
                answers.append(await bench.post_referral(client, room, category, risk))
            # The outage is real: every `received` waits in the outbox and the readiness probe sees no broker.
            pending_during = await bench.outbox_size()
            readiness_during = await bench.readyz()
            accepted_in = time.monotonic() - frozen_at
            await asyncio.sleep(max(0.0, BROKER_FROZEN_FOR - accepted_in))
        thawed_at = time.monotonic()
        for room, category, risk in referrals[BROKER_OUTAGE_REFERRALS:]:
            answers.append(await bench.post_referral(client, room, category, risk))

    assert [a.status_code for a in answers] == [202] * len(referrals), [a.text for a in answers if a.status_code != 202]
    assert pending_during >= BROKER_OUTAGE_REFERRALS, f"only {pending_during} messages waited in the outbox"
    assert readiness_during == 503, f"/readyz answered {readiness_during} while the broker was frozen"
    cases = [a.json()["case_id"] for a in answers]
    assert len(set(cases)) == len(cases)
    await bench.wait_placed(cases, within=90)
    recovered_in = time.monotonic() - thawed_at
    print(
        f"\nbroker frozen {BROKER_FROZEN_FOR:.0f}s: {BROKER_OUTAGE_REFERRALS} referrals answered 202 in "
        f"{accepted_in:.1f}s, {pending_during} outbox rows waiting; all {len(cases)} cases placed "
        f"{recovered_in:.1f}s after the thaw"
    )
    problems = await bench.placed_once_problems(cases)
    assert not problems, f"{len(problems)} cases: {dict(list(problems.items())[:5])}\n{bench.explain(problems)}"
    assert await bench.load_discrepancies() == []
    assert await bench.readyz() == 200


async def _submission_ids_by_offset(bootstrap: str, topic: str) -> dict[tuple[int, int], str]:
    """(partition, offset) → submission id of every record on the submissions topic so far."""
    ends = await end_offsets(bootstrap, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: dict[tuple[int, int], str] = {}
    try:
        assignment = [TopicPartition(topic, p) for p in ends]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        deadline = time.monotonic() + 30
        while sum(1 for _ in found) < sum(ends.values()) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    found[record.partition, record.offset] = json.loads(record.value)["submission_id"]
    finally:
        await consumer.stop()
    return found


async def test_database_down_mid_stream_intake_not_ready_no_offset_committed_past_unprocessed_and_nothing_lost(
    bench: ReliabilityBench,
) -> None:
    await bench.ensure_running("intake", "router")
    referrals = _referrals(bench.trees["DB"].all_rooms, DATABASE_REFERRALS, SEED + 1)
    postgres = bench.server("postgres")
    submitted: list[str] = []
    counted_before = _counted_failures(bench)

    async def stream(part: list[tuple[str, str, str]], pause: float) -> None:
        for room, category, risk in part:
            submitted.append(await bench.submit(room, category, risk))
            await asyncio.sleep(pause)

    third = len(referrals) // 3
    await stream(referrals[:third], 0.05)
    # Mid-stream: the database goes away while the rest keeps arriving on Kafka.
    producing = asyncio.create_task(stream(referrals[third:], 0.1))
    stop_postgres(postgres)
    stopped_at = time.monotonic()
    stopped_wall_ms = time.time() * 1000
    ends_at_stop = await end_offsets(bench.kafka_bootstrap, REFERRALS_SUBMITTED)
    try:
        await wait_until(_is(bench.readyz, 503), within=15, what="/readyz 503 with the database down")
        await wait_until(_router_ready_is(bench, False), within=20, what="the router's ready file saying not ready")
        await producing
        await asyncio.sleep(max(0.0, DATABASE_DOWN_FOR - (time.monotonic() - stopped_at)))
        committed_during = await committed_offsets(
            bench.kafka_bootstrap, "caselink-intake", REFERRALS_SUBMITTED, TOPIC_PARTITIONS[REFERRALS_SUBMITTED]
        )
        ends_during = await end_offsets(bench.kafka_bootstrap, REFERRALS_SUBMITTED)
        unavailable = bench.log_count("intake", "consumer.database_unavailable")
    finally:
        start_postgres_again(postgres)
    restarted_at = time.monotonic()

    # Nothing produced after the stop can have been processed, so nothing beyond it may be committed.
    assert sum(ends_during.values()) - sum(ends_at_stop.values()) > 0, "no submission arrived during the outage"
    beyond = {p: (c, ends_at_stop[p]) for p, c in committed_during.items() if c > ends_at_stop[p]}
    assert not beyond, (
        f"committed past the end of the log at the stop (committed, end): {beyond}; "
        f"{await _records_after(bench, beyond, stopped_wall_ms)}"
    )
    assert unavailable > 0, "intake never noticed the outage"

    await wait_until(_is(bench.readyz, 200), within=30, what="/readyz 200 after the database came back")
    await wait_until(_router_ready_is(bench, True), within=30, what="the router's ready file saying ready again")
    try:
        case_of = await bench.cases_of(submitted, within=90)
    except AssertionError as lost:
        raise AssertionError(f"{await _where_are(bench, submitted)}\n{lost}") from None
    cases = list(case_of.values())
    await bench.wait_placed(cases, within=90)
    print(
        f"\ndatabase down {restarted_at - stopped_at:.1f}s mid-stream: {len(submitted)} submissions, "
        f"{sum(ends_during.values()) - sum(ends_at_stop.values())} during the outage; intake retried "
        f"{unavailable} times; all placed {time.monotonic() - restarted_at:.1f}s after the restart"
    )

    # What was committed during the outage had been processed before it (the rows predate the restart).
    records = await _submission_ids_by_offset(bench.kafka_bootstrap, REFERRALS_SUBMITTED)
    before_restart = {
        row["key"]
        for row in await bench.sql(
            "SELECT key FROM intake.submission_keys WHERE source = 'kafka' AND created_at < pg_postmaster_start_time()"
        )
    }
    committed_unprocessed = [
        (p, o)
        for (p, o), submission in records.items()
        if o < committed_during.get(p, 0) and submission not in before_restart
    ]
    assert not committed_unprocessed, f"offsets committed for messages not processed: {committed_unprocessed[:10]}"

    assert len(set(cases)) == len(submitted), "two submissions share a case, or one made two"
    problems = await bench.placed_once_problems(cases)
    assert not problems, f"{len(problems)} cases: {dict(list(problems.items())[:5])}\n{bench.explain(problems)}"
    assert await bench.load_discrepancies() == []
    # An outage is waited out, never counted against a message (which would end in the dead-letter topic).
    counted = {event: n - counted_before[event] for event, n in _counted_failures(bench).items()}
    assert counted == {"consumer.retry": 0, "consumer.dead_letter": 0}, counted


async def _records_after(bench: ReliabilityBench, beyond: dict[int, tuple[int, int]], stopped_ms: float) -> str:
    """Diagnostics: when the records past the stop's end were produced (ms after the stop) and by whom."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bench.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    seen = []
    try:
        for partition, (committed, end) in beyond.items():
            tp = TopicPartition(REFERRALS_SUBMITTED, partition)
            consumer.assign([tp])
            consumer.seek(tp, max(0, end - 2))
            for record in (await consumer.getmany(tp, timeout_ms=2000, max_records=committed - end + 2)).get(tp, []):
                seen.append((partition, record.offset, round(record.timestamp - stopped_ms), record.key))
    finally:
        await consumer.stop()
    return f"(partition, offset, ms after the stop, key): {seen}"


def _is(probe: Callable[[], Awaitable[int]], status: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await probe() == status

    return check


def _router_ready_is(bench: ReliabilityBench, ready: bool) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bench.consumer_readiness("router") is ready

    return check


async def _where_are(bench: ReliabilityBench, submitted: list[str]) -> str:
    """Where the submissions intake has not recorded sit on the topic, and how far the group committed."""
    recorded = {row["key"] for row in await bench.sql("SELECT key FROM intake.submission_keys WHERE source = 'kafka'")}
    records = await _submission_ids_by_offset(bench.kafka_bootstrap, REFERRALS_SUBMITTED)
    missing = sorted((where, s) for where, s in records.items() if s in set(submitted) - recorded)
    committed = await committed_offsets(
        bench.kafka_bootstrap, "caselink-intake", REFERRALS_SUBMITTED, TOPIC_PARTITIONS[REFERRALS_SUBMITTED]
    )
    ends = await end_offsets(bench.kafka_bootstrap, REFERRALS_SUBMITTED)
    return f"not recorded (partition, offset): {missing}; committed {committed}; ends {ends}"


def _counted_failures(bench: ReliabilityBench) -> dict[str, int]:
    """How often intake and the router counted a failure against a message, or gave one up."""
    return {
        event: sum(bench.log_count(name, event) for name in ("intake", "router"))
        for event in ("consumer.retry", "consumer.dead_letter")
    }
