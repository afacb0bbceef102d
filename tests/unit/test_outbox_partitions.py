"""The outbox relay names each message's partition itself (with a cached key hash): it must be the
one aiokafka's default partitioner picks, or a case's events could be split across partitions."""

import uuid
from types import SimpleNamespace
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from services.shared.outbox import OutboxRelay


def relay_with_partitions(partitions: set[int] | None) -> OutboxRelay:
    relay = OutboxRelay("postgresql+asyncpg://unused/db", lambda: None)
    cluster = SimpleNamespace(partitions_for_topic=lambda topic: partitions)
    relay.producer = SimpleNamespace(client=SimpleNamespace(cluster=cluster))
    return relay


def test_keyed_messages_go_to_the_partition_the_default_partitioner_picks() -> None:
    relay = relay_with_partitions(set(range(12)))
    default: Any = DefaultPartitioner()
    for _ in range(500):
        key = str(uuid.uuid4()).encode()
        expected = default(key, list(range(12)), list(range(12)))
        assert relay._partition_of("caselink.case.events", key) == expected
        assert relay._partition_of("caselink.case.events", key) == expected  # cached: the same again


def test_unkeyed_messages_and_unknown_topics_are_left_to_the_producer() -> None:
    assert relay_with_partitions(set(range(3)))._partition_of("t", None) is None
    assert relay_with_partitions(None)._partition_of("t", b"case-1") is None
