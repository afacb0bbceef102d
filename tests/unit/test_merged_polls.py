"""A busy consumer merges the polls of a short wait into one batch, and never commits past a record
it did not handle: when the batch fails, every partition it took records from is read again."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import ConsumerStoppedError, IllegalStateError, KafkaConnectionError

from services.shared.consuming import LINGER_FROM_RECORDS, merged_polls

TOPIC = "caselink.case.events"


def records(partition: int, offsets: range) -> list[SimpleNamespace]:
    return [SimpleNamespace(topic=TOPIC, partition=partition, offset=offset) for offset in offsets]


class PollingConsumer:
    """Stands in for aiokafka's consumer: each `getmany` returns the next prepared poll, then
    nothing until its timeout; `seek` is recorded, and refused for revoked partitions."""

    def __init__(self, polls: list[list[SimpleNamespace]], *, revoked: frozenset[int] = frozenset()) -> None:
        self.polls = polls
        self.revoked = revoked
        self.calls: list[tuple[int, int]] = []
        self.seeks: dict[TopicPartition, int] = {}

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
        self.calls.append((timeout_ms, max_records))
        if not self.polls:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        batch = self.polls.pop(0)[:max_records]
        polled: dict[TopicPartition, list[Any]] = {}
        for record in batch:
            polled.setdefault(TopicPartition(record.topic, record.partition), []).append(record)
        return polled

    def seek(self, partition: TopicPartition, offset: int) -> None:
        if partition.partition in self.revoked:
            raise IllegalStateError(f"No current assignment for partition {partition}")
        self.seeks[partition] = offset


def message(first_poll: list[SimpleNamespace], consumer: Any) -> SimpleNamespace:
    return SimpleNamespace(raw_message=tuple(first_poll), consumer=consumer)


async def test_a_busy_consumer_merges_what_arrives_within_the_linger_into_one_batch() -> None:
    first = records(0, range(0, 10))
    consumer = PollingConsumer([records(1, range(0, 5)), records(0, range(10, 12))])
    async with merged_polls(message(first, consumer), linger_ms=50, max_records=100) as batch:
        assert [(r.partition, r.offset) for r in batch] == [(0, o) for o in range(10)] + [(1, o) for o in range(5)] + [
            (0, 10),
            (0, 11),
        ]
    assert consumer.seeks == {}  # handled: FastStream's commit after the handler covers them all


async def test_the_wait_ends_at_the_linger_even_when_nothing_more_comes() -> None:
    consumer = PollingConsumer([])
    started = asyncio.get_running_loop().time()
    async with merged_polls(message(records(0, range(0, 10)), consumer), linger_ms=40, max_records=100) as batch:
        waited = asyncio.get_running_loop().time() - started
    assert len(batch) == 10
    assert 0.03 <= waited < 0.5
    assert all(timeout <= 40 for timeout, _ in consumer.calls)


async def test_a_batch_stops_growing_at_max_records() -> None:
    consumer = PollingConsumer([records(1, range(0, 50)), records(2, range(0, 50))])
    async with merged_polls(message(records(0, range(0, 10)), consumer), linger_ms=1000, max_records=30) as batch:
        assert len(batch) == 30
    assert consumer.calls == [(consumer.calls[0][0], 20)]  # asked only for what was left, then stopped
    assert consumer.polls == [records(2, range(0, 50))]


async def test_a_small_poll_is_handled_at_once_so_a_slow_stream_waits_for_nothing() -> None:
    consumer = PollingConsumer([records(1, range(0, 5))])
    first = records(0, range(0, LINGER_FROM_RECORDS - 1))
    async with merged_polls(message(first, consumer), linger_ms=1000, max_records=100) as batch:
        assert list(batch) == first
    assert consumer.calls == []


async def test_no_linger_or_a_consumer_that_cannot_poll_leaves_the_poll_as_it_is() -> None:
    first = records(0, range(0, 20))
    consumer = PollingConsumer([records(1, range(0, 5))])
    async with merged_polls(message(first, consumer), linger_ms=0, max_records=100) as batch:
        assert list(batch) == first
    assert consumer.calls == []
    # FastStream's in-memory test broker hands batches with a stand-in that has no getmany.
    async with merged_polls(message(first, SimpleNamespace()), linger_ms=50, max_records=100) as batch:
        assert list(batch) == first


async def test_a_failed_batch_rewinds_every_partition_it_took_records_from_to_its_first_one() -> None:
    first = records(0, range(7, 17))
    consumer = PollingConsumer([records(1, range(3, 6)), records(0, range(17, 20)), records(2, range(40, 41))])
    with pytest.raises(RuntimeError, match="database said no"):
        async with merged_polls(message(first, consumer), linger_ms=50, max_records=100):
            raise RuntimeError("database said no")
    # FastStream's NACK rewinds only partition 0 (its own poll); the merged ones are rewound here.
    assert consumer.seeks == {
        TopicPartition(TOPIC, 0): 7,
        TopicPartition(TOPIC, 1): 3,
        TopicPartition(TOPIC, 2): 40,
    }


async def test_a_cancelled_batch_is_rewound_too() -> None:
    consumer = PollingConsumer([records(1, range(3, 6))])
    with pytest.raises(asyncio.CancelledError):
        async with merged_polls(message(records(0, range(0, 10)), consumer), linger_ms=20, max_records=100):
            raise asyncio.CancelledError
    assert consumer.seeks[TopicPartition(TOPIC, 1)] == 3


async def test_a_partition_revoked_meanwhile_is_left_to_its_new_owner() -> None:
    consumer = PollingConsumer([records(1, range(3, 6))], revoked=frozenset({1}))
    with pytest.raises(RuntimeError):
        async with merged_polls(message(records(0, range(0, 10)), consumer), linger_ms=20, max_records=100):
            raise RuntimeError("boom")
    assert consumer.seeks == {TopicPartition(TOPIC, 0): 0}


async def test_a_consumer_stopped_during_the_wait_hands_over_what_it_took() -> None:
    class Stopping(PollingConsumer):
        async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
            raise ConsumerStoppedError()

    first = records(0, range(0, 10))
    async with merged_polls(message(first, Stopping([])), linger_ms=50, max_records=100) as batch:
        assert list(batch) == first


async def test_a_poll_that_fails_after_merging_rewinds_what_was_merged() -> None:
    class Failing(PollingConsumer):
        async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
            if self.polls:
                return await super().getmany(timeout_ms=timeout_ms, max_records=max_records)
            raise KafkaConnectionError("broker went away")

    consumer = Failing([records(1, range(3, 6))])
    with pytest.raises(KafkaConnectionError):
        async with merged_polls(message(records(0, range(0, 10)), consumer), linger_ms=50, max_records=100):
            pytest.fail("the block must not run")
    assert consumer.seeks == {TopicPartition(TOPIC, 0): 0, TopicPartition(TOPIC, 1): 3}
