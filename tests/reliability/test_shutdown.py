"""Graceful shutdown: SIGTERM in the middle of a stream lets the work in hand finish and commit.

The proof is the agreement of two records kept by different systems: the offsets the consumer
group committed in Kafka, and the inbox rows the consumer wrote in PostgreSQL with each
message's effects. Every message below the committed offset must have its inbox row (nothing
committed unprocessed: no loss), and no message at or above it may have one (nothing processed
but uncommitted: the restarted service would read it again and skip it as a duplicate).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.topics import CASE_EVENTS, REFERRALS_SUBMITTED, TOPIC_PARTITIONS
from services.shared.consuming import record_id
from services.shared.kafka import log_ends
from tests.reliability.bench import CATEGORIES, RISKS, ReliabilityBench, wait_until
from tests.support.faults import committed_offsets

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(240)]

SEED = 20260615
BURST = 200
STREAM_SECONDS = 8.0
STOP_AFTER_ROUTED = 25


@dataclass(frozen=True)
class ConsumerOfTopic:
    """One consumer group on one topic, the inbox name it claims under, and the inbox message ids a
    record may be claimed under (none for records it reads but never claims, like the router's
    non-`received` events)."""

    group: str
    topic: str
    inbox: str
    message_ids: Callable[[Any, dict[str, Any]], set[str]]  # of a record and its decoded value


INTAKE_SUBMISSIONS = ConsumerOfTopic(
    "caselink-intake",
    REFERRALS_SUBMITTED,
    "intake.submissions",
    # Claimed per message (`topic/partition/offset@timestamp`); before that, per submission id.
    lambda r, v: {f"submission:{record_id(r)}", f"rejected:{record_id(r)}", f"submission:{v.get('submission_id')}"},
)
ROUTER_CASES = ConsumerOfTopic(
    "caselink-router",
    CASE_EVENTS,
    "router.cases",
    lambda _, v: {str(v["id"])} if v.get("type") == "caselink.case.received.v1" else set(),
)


async def _records(bootstrap: str, topic: str) -> list[tuple[Any, dict[str, Any]]]:
    """(record, decoded value) of every record on the topic up to its current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        assignment = [TopicPartition(topic, p) for p in range(TOPIC_PARTITIONS[topic])]
        consumer.assign(assignment)
        ends = await log_ends(consumer, assignment)
        await consumer.seek_to_beginning(*assignment)
        found: list[tuple[Any, dict[str, Any]]] = []
        deadline = time.monotonic() + 30
        while len(found) < sum(ends.values()) and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                found += [(r, json.loads(r.value)) for r in records if r.offset < ends[tp]]
        return found
    finally:
        await consumer.stop()


async def _offsets_disagreeing_with_inbox(bench: ReliabilityBench, of: ConsumerOfTopic) -> dict[str, list[Any]]:
    """Records committed but not processed, and processed but not committed (both empty when they agree)."""
    committed = await committed_offsets(bench.kafka_bootstrap, of.group, of.topic, TOPIC_PARTITIONS[of.topic])
    claimed = {
        row["message_id"]
        for row in await bench.sql("SELECT message_id FROM shared.inbox WHERE consumer = $1", of.inbox)
    }
    unprocessed, uncommitted = [], []
    for record, value in await _records(bench.kafka_bootstrap, of.topic):
        message_ids = of.message_ids(record, value)
        if not message_ids:
            continue
        below = record.offset < committed.get(record.partition, 0)
        if below and not message_ids & claimed:
            unprocessed.append((record.partition, record.offset))
        elif not below and message_ids & claimed:
            uncommitted.append((record.partition, record.offset))
    return {"committed but not processed": unprocessed, "processed but not committed": uncommitted}


async def _routed_at_least(bench: ReliabilityBench, rooms: list[str], count: int) -> bool:
    return await bench.routed_from(rooms) >= count


async def test_sigterm_mid_stream_finishes_and_commits_what_is_in_hand_so_a_restart_reprocesses_nothing(
    bench: ReliabilityBench,
) -> None:
    await bench.ensure_running("intake", "router")
    rng = random.Random(SEED)
    rooms = bench.trees["SD"].all_rooms
    routed_before = await bench.routed_from(rooms)
    referrals = [(rng.choice(rooms), rng.choice(CATEGORIES), rng.choice(RISKS)) for _ in range(BURST)]
    submissions: list[str] = []

    async def stream() -> None:
        """A steady stream, so the services are in the middle of work whenever the signal comes."""
        for i in range(0, BURST, 5):
            submissions.extend(await bench.submit_many(referrals[i : i + 5]))
            await asyncio.sleep(STREAM_SECONDS * 5 / BURST)

    streaming = asyncio.create_task(stream())
    await wait_until(
        lambda: _routed_at_least(bench, rooms, routed_before + STOP_AFTER_ROUTED),
        within=60,
        every=0.01,
        what="a busy router",
    )
    stopped_before = {name: bench.log_count(name, "service.stopped") for name in ("intake", "router")}
    # Both at once, while submissions keep arriving and the router is routing.
    try:
        routed_at_signal = await bench.routed_from(rooms) - routed_before
        took = await asyncio.gather(bench.terminate("intake"), bench.terminate("router"))
        routed_at_exit = await bench.routed_from(rooms) - routed_before
        print(f"\nSIGTERM with {routed_at_signal} of {BURST} routed, {routed_at_exit} at exit: intake exited in "
              f"{took[0]:.1f}s, router in {took[1]:.1f}s")  # fmt: skip
        await streaming
        assert routed_at_exit < BURST, "the router had routed the whole stream before it stopped: nothing was left"
        stopped = {name: bench.log_count(name, "service.stopped") - stopped_before[name] for name in stopped_before}
        assert stopped == {"intake": 1, "router": 1}, f"runtimes that logged service.stopped: {stopped}"
        disagreements = {
            consumer.group: found
            for consumer in (INTAKE_SUBMISSIONS, ROUTER_CASES)
            if any((found := await _offsets_disagreeing_with_inbox(bench, consumer)).values())
        }
    finally:
        await bench.ensure_running("intake", "router")
    assert not disagreements, f"committed offsets and the inbox disagree after SIGTERM: {disagreements}"

    cases = list((await bench.cases_of(submissions, within=60)).values())
    await bench.wait_placed(cases, within=90)
    problems = await bench.placed_once_problems(cases)
    assert not problems, f"{len(problems)} cases: {dict(list(problems.items())[:5])}\n{bench.explain(problems)}"
    assert await bench.load_discrepancies() == []
