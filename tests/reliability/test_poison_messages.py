"""Poison messages on every consumed topic, on the real stack: each consumer group dead-letters
what it cannot decode or validate to `<topic>.dlq` (raw bytes, `x-error`, `x-origin`), commits past
it, and keeps processing the valid messages behind it on the same partition."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.topics import (
    CASE_COMMAND_RESULTS,
    CASE_COMMANDS,
    CASE_EVENTS,
    CONSUMED_TOPICS,
    REFERRALS_REJECTED,
    REFERRALS_SUBMITTED,
    TOPIC_PARTITIONS,
    dlq,
)
from tests.integration.conftest import Stack, TopicLog
from tests.support.api_client import ROOM, ROOM_WORKER, Api, Tokens, assert_applied

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.timeout(240)]

# Who consumes each topic: (consumer group, the consumer name its dead letters carry in x-consumer).
CONSUMERS: dict[str, list[tuple[str, str]]] = {
    REFERRALS_SUBMITTED: [("caselink-intake", "intake.submissions")],
    CASE_EVENTS: [
        ("caselink-router", "router.cases"),
        ("caselink-notifier", "notifier.pushes"),
    ],
    CASE_COMMANDS: [("caselink-router-commands", "router.commands")],
    CASE_COMMAND_RESULTS: [("caselink-intake-commands", "intake.command_results")],
}
UNDECODABLE = b"\xff\xfe\x00{not json"


def invalid_message(topic: str) -> bytes:
    """Well-formed JSON that is not what the topic carries (a known shape with wrong fields)."""
    documents: dict[str, dict[str, Any]] = {
        REFERRALS_SUBMITTED: {"submission_id": str(uuid.uuid4()), "room_id": ROOM, "risk_level": "urgent"},
        CASE_EVENTS: {"specversion": "1.0", "type": "caselink.case.received.v1", "id": "not-a-uuid", "data": {}},
        CASE_COMMANDS: {"command_id": str(uuid.uuid4()), "case_id": "c-1", "action": "fly", "actor_id": "w"},
        CASE_COMMAND_RESULTS: {"command_id": "not-a-uuid", "outcome": "maybe"},
    }
    return json.dumps(documents[topic]).encode()


@dataclass(frozen=True)
class Poison:
    topic: str
    partition: int
    offset: int
    value: bytes

    @property
    def origin(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


def headers_of(record: Any) -> dict[str, str]:
    return {key: value.decode() for key, value in record.headers or ()}


def valid_kafka_submission(partition: int) -> dict[str, Any]:
    return {
        "submission_id": str(uuid.uuid4()),
        "room_id": ROOM,
        "submitted_by": ROOM_WORKER,
        "category": "elderly_care",
        "risk_level": "low",
        "summary": f"毒消息之后的有效转介 {partition}",
        "resident": {"name": "测试居民", "birth_year": 1950},
        "consent": {"given": True, "scope": "service", "recorded_by": ROOM_WORKER},
    }


async def committed_offsets(bootstrap: str, group: str, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The group's committed offsets, read without joining it (no rebalance of the live consumers)."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await reader.start()
    try:
        return {tp: offset for tp in partitions if (offset := await reader.committed(tp)) is not None}
    finally:
        await reader.stop()


@pytest_asyncio.fixture(scope="module")
async def dead_letters(stack: Stack) -> AsyncIterator[dict[str, TopicLog]]:
    logs = {topic: TopicLog(stack.kafka_bootstrap, dlq(topic)) for topic in CONSUMED_TOPICS}
    logs[REFERRALS_REJECTED] = TopicLog(stack.kafka_bootstrap, REFERRALS_REJECTED)
    for log in logs.values():
        await log.start()
    yield logs
    for log in logs.values():
        await log.stop()


async def poison_every_partition(producer: AIOKafkaProducer) -> list[Poison]:
    """An undecodable and an invalid message on every partition of every consumed topic."""
    sent = []
    for topic in CONSUMED_TOPICS:
        for partition in range(TOPIC_PARTITIONS[topic]):
            for value in (UNDECODABLE, invalid_message(topic)):
                meta = await producer.send_and_wait(topic, value, key=b"poison", partition=partition)
                sent.append(Poison(topic, partition, meta.offset, value))
    return sent


async def test_every_consumer_dead_letters_poison_and_keeps_its_partitions_flowing(
    stack: Stack, producer: AIOKafkaProducer, dead_letters: dict[str, TopicLog]
) -> None:
    poisons = await poison_every_partition(producer)

    # Behind the poison on every partition of the submissions topic: a valid referral.
    submissions = {}
    for partition in range(TOPIC_PARTITIONS[REFERRALS_SUBMITTED]):
        body = valid_kafka_submission(partition)
        await producer.send_and_wait(
            REFERRALS_SUBMITTED, json.dumps(body).encode(), key=ROOM.encode(), partition=partition
        )
        submissions[body["submission_id"]] = partition
    # Behind the poison on the events, commands and results topics: a case offered, then accepted.
    async with httpx.AsyncClient(base_url=stack.http, trust_env=False, timeout=30.0) as client:
        api = Api(client, Tokens(stack))
        try:
            case = await api.open_case(category="elderly_care", risk_level="medium")
            answer = await api.act(case["case_id"], "accept", user=case["assignee_id"])
            assert_applied(answer, case["case_id"], "accepted")
        finally:
            await api.close_opened()

    deadline = time.monotonic() + 60
    while True:
        rows = await stack.sql(
            "SELECT key FROM intake.submission_keys WHERE source = 'kafka' AND key = ANY($1::text[])",
            list(submissions),
        )
        if len(rows) == len(submissions) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    missing = {submissions[k] for k in set(submissions) - {r["key"] for r in rows}}
    assert not missing, f"valid referrals behind the poison were not accepted on partitions {sorted(missing)}"

    expected = {(p.origin, name) for p in poisons for _, name in CONSUMERS[p.topic]}

    def lettered() -> set[tuple[str, str]]:
        return {
            (headers_of(r).get("x-origin", ""), headers_of(r).get("x-consumer", ""))
            for log in (dead_letters[t] for t in CONSUMED_TOPICS)
            for r in log.records
        }

    with contextlib.suppress(AssertionError):
        await dead_letters[CASE_EVENTS].wait_for(lambda _: expected <= lettered(), within=60)
    missing_letters = sorted(expected - lettered())
    assert not missing_letters, f"{len(missing_letters)} poison messages not dead-lettered: {missing_letters[:8]}"
    by_origin = {headers_of(r)["x-origin"]: r for t in CONSUMED_TOPICS for r in dead_letters[t].records}
    for poison in poisons:
        record = by_origin[poison.origin]
        assert record.topic == dlq(poison.topic)
        assert record.value == poison.value and record.key == b"poison"
        assert headers_of(record)["x-error"].strip(), poison
        if poison.topic == CASE_EVENTS and poison.value != UNDECODABLE:
            # Where the event is wrong, by field, and never what it says.
            assert "id:" in headers_of(record)["x-error"] and "not-a-uuid" not in headers_of(record)["x-error"]
    # Each consumer dead-letters a poison once, not once per retry.
    ours = {p.origin for p in poisons}
    origins = [(headers_of(r)["x-origin"], headers_of(r)["x-consumer"]) for t in CONSUMED_TOPICS
               for r in dead_letters[t].records if headers_of(r)["x-origin"] in ours]  # fmt: skip
    assert len(origins) == len(set(origins)) == len(expected)

    # The invalid referral is also rejected to its sender on caselink.referrals.rejected (CONTRACT §4).
    invalid_ids = {json.loads(p.value)["submission_id"] for p in poisons
                   if p.topic == REFERRALS_SUBMITTED and p.value != UNDECODABLE}  # fmt: skip
    await dead_letters[REFERRALS_REJECTED].wait_for(
        lambda records: invalid_ids <= {json.loads(r.value)["submission_id"] for r in records}
    )

    # Every group committed past the poison on every partition: nothing is stuck behind it.
    for topic, consumers in CONSUMERS.items():
        last_poison = {p.partition: p.offset for p in poisons if p.topic == topic}
        for group, _ in consumers:
            partitions = [TopicPartition(topic, p) for p in last_poison]
            committed = await committed_offsets(stack.kafka_bootstrap, group, partitions)
            stuck = {
                partition: committed.get(TopicPartition(topic, partition))
                for partition, offset in last_poison.items()
                if committed.get(TopicPartition(topic, partition), -1) <= offset
            }
            assert not stuck, f"{group} has not committed past the poison on {topic}: {stuck}"
