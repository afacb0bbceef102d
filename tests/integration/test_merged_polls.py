"""Merged polls on the real broker and FastStream's own acknowledgement: a batch that merged records
from partitions its first poll did not touch, and then failed, loses none of them. And how a
router's sweep tells that its command subscriber has read everything sent while it was down."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.shared.consuming import LINGER_FROM_RECORDS, GroupCatchUp, batch_subscriber, merged_polls
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


async def test_records_merged_from_other_partitions_are_read_again_after_the_batch_fails(stack: Stack) -> None:
    topic = await stack.new_topic("merged-polls", partitions=3)
    group = f"{topic}-group"
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    first_poll = LINGER_FROM_RECORDS + 2
    late = [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    everything = {(0, offset) for offset in range(first_poll)} | set(late)

    handled: set[tuple[int, int]] = set()
    attempts = 0
    done = asyncio.Event()
    broker = KafkaBroker(stack.kafka_bootstrap, logger=None)

    @broker.subscriber(
        topic, **batch_subscriber(100), group_id=group, auto_offset_reset="earliest", ack_policy=AckPolicy.NACK_ON_ERROR
    )
    async def handle(msg: KafkaMessage) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            # Only partition 0 had records at the first poll; these arrive while it lingers.
            for partition, _ in late:
                await producer.send_and_wait(topic, b"late", partition=partition)
        async with merged_polls(msg, linger_ms=5000, max_records=len(everything)) as records:
            batch = {(record.partition, record.offset) for record in records}
            if attempts == 1:
                assert batch == everything, "the late records were merged into the first batch"
                raise RuntimeError("the database said no")
            handled.update(batch)
            if handled >= everything:
                done.set()

    try:
        for _ in range(first_poll):
            await producer.send_and_wait(topic, b"early", partition=0)
        await broker.start()
        await asyncio.wait_for(done.wait(), 60)
    finally:
        await broker.stop()
        await producer.stop()

    assert handled == everything
    # And the group's committed offsets are the ends of the partitions: nothing to read again, nothing skipped.
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(3)]
        committed = {tp.partition: await consumer.committed(tp) for tp in partitions}
    finally:
        await consumer.stop()
    assert committed == {0: first_poll, 1: 2, 2: 3}


async def test_a_group_has_caught_up_once_its_members_committed_past_every_record_there_was(stack: Stack) -> None:
    topic = await stack.new_topic("caught-up", partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    for partition in (0, 0, 1):  # partition 2 stays empty
        await producer.send_and_wait(topic, b"sent while nobody read", partition=partition)
    held: list[int] = []
    all_held, release = asyncio.Event(), asyncio.Event()
    broker = KafkaBroker(stack.kafka_bootstrap, logger=None)
    group = f"{topic}-group"
    subscriber = broker.subscriber(
        topic,
        **batch_subscriber(100),
        group_id=group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )

    @subscriber
    async def handle(msg: KafkaMessage) -> None:
        held.extend(record.offset for record in msg.raw_message)
        if len(held) >= 3:
            all_held.set()
        await release.wait()

    # Another member of the group, with no partitions of its own (a replica that joined late): the
    # group's commits are what count, not its own.
    other = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await other.start()
    await other.topics()  # metadata, so that it knows the topic's partitions
    caught_up = GroupCatchUp(topic)
    try:
        await broker.start()
        await asyncio.wait_for(all_held.wait(), 30)
        assert not await caught_up(other), "the records are read but not handled yet"
        await producer.send_and_wait(topic, b"sent after the first look", partition=2)
        release.set()
        for _ in range(600):  # 30 s
            if await caught_up(other):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the handled records were never all committed")
        assert not await GroupCatchUp(topic)(None)
    finally:
        release.set()
        await other.stop()
        await producer.stop()
        await broker.stop()
        await producer.stop()
