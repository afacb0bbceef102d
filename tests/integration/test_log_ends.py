"""Where a partition's log really ends, on the embedded broker: Tansu reports the end of a partition
whose last write was a batch of several records as that batch's base offset plus one."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.shared.kafka import log_ends
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


async def test_the_end_of_a_partition_whose_last_write_was_a_batch_is_after_its_last_record(stack: Stack) -> None:
    topic = await stack.new_topic("log-ends", partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, enable_idempotence=False, linger_ms=50)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"alone", partition=0)
        batch = [await producer.send(topic, b"together", partition=0) for _ in range(3)]
        offsets = [record.offset for record in await asyncio.gather(*batch)]
    finally:
        await producer.stop()
    assert offsets == [1, 2, 3]

    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        consumer.assign(partitions)
        reported = await consumer.end_offsets(partitions)
        ends = await log_ends(consumer, partitions)
    finally:
        await consumer.stop()
    assert ends == {partitions[0]: 4, partitions[1]: 0}, f"the broker reported {reported}"
