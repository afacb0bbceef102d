"""`caselink dlq replay`: re-publish dead letters to the topic they came from, after a fix.

A dead letter keeps the original key and bytes, and says where it came from (`x-origin`:
`topic/partition/offset`). Replay publishes it there again with `x-replayed-from`
(`dlq-topic/partition/offset`), so the consumers judge it afresh.

Running it twice is safe: its position in each dead-letter topic is committed under the consumer
group `caselink-dlq-replay` after the messages are published (those published before a failed
publish too), so a second run replays only dead letters that arrived since. If a run dies between
publishing and committing, the next run publishes those again; every consumer's inbox and the
submissions' idempotency keys make the repeat a no-op. A dead letter too large for the producer to
send (it came from outside, larger than anything caselink writes) is skipped and said so; it stays
in the dead-letter topic.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.structs import OffsetAndMetadata

from schemas.topics import DLQ_SUFFIX, TOPIC_PARTITIONS
from services.shared.kafka import consumer_options, log_ends, make_producer
from services.shared.settings import Settings

REPLAY_GROUP = "caselink-dlq-replay"
REPLAYED_FROM = "x-replayed-from"


@dataclass(frozen=True)
class DeadLetter:
    """One message read from a dead-letter topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]

    @property
    def where(self) -> str:
        """`dlq-topic/partition/offset` of this dead letter."""
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True)
class Replay:
    """What to do with one dead letter: publish it to `topic` (on `partition` if known), or skip it."""

    letter: DeadLetter
    topic: str
    partition: int | None
    skip_reason: str | None = None

    def describe(self) -> str:
        """One line for the operator."""
        origin = self.letter.headers.get("x-origin", "?")
        if self.skip_reason:
            return f"skip    {self.letter.where} (origin {origin}): {self.skip_reason}"
        target = self.topic if self.partition is None else f"{self.topic}/{self.partition}"
        error = self.letter.headers.get("x-error", "")[:120]
        return f"replay  {self.letter.where} -> {target} (origin {origin}; error: {error})"


def dlq_topic_of(topic: str) -> str:
    """The dead-letter topic named by `topic`, which may be the source topic or its `.dlq`."""
    return topic if topic.endswith(DLQ_SUFFIX) else topic + DLQ_SUFFIX


def origin_of(letter: DeadLetter) -> tuple[str, int | None]:
    """The topic (and partition) a dead letter came from: `x-origin`, else the `.dlq` name stripped."""
    topic, _, rest = letter.headers.get("x-origin", "").rpartition("/")
    source, _, partition = topic.rpartition("/")
    if source and partition.isdigit() and rest.isdigit():
        return source, int(partition)
    return letter.topic.removesuffix(DLQ_SUFFIX), None


def plan_replays(letters: Iterable[DeadLetter], *, limit: int | None = None) -> list[Replay]:
    """Decide each dead letter's fate, in the order read.

    Several consumer groups of one topic each dead-letter the same poison message (every group
    of caselink.case.events sees it), but one re-publication reaches them all: replay each origin once.
    """
    replays: list[Replay] = []
    seen: set[str] = set()
    published = 0
    for letter in letters:
        topic, partition = origin_of(letter)
        if partition is not None and partition >= TOPIC_PARTITIONS.get(topic, partition + 1):
            partition = None  # the topic has fewer partitions now: let the key choose
        origin = letter.headers.get("x-origin") or letter.where
        if origin in seen:
            replays.append(Replay(letter, topic, partition, "already replayed in this run (another consumer's copy)"))
            continue
        if limit is not None and published >= limit:
            break
        seen.add(origin)
        published += 1
        replays.append(Replay(letter, topic, partition))
    return replays


async def read_dead_letters(
    settings: Settings, bootstrap: str, dlq_topic: str, *, since_offset: int | None
) -> tuple[AIOKafkaConsumer, list[DeadLetter], dict[TopicPartition, int]]:
    """Every dead letter from the group's committed position (or `since_offset`) up to the end as
    it is now; returns the open consumer (to commit with), the letters and each partition's end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=REPLAY_GROUP,
        client_id=f"{settings.kafka_client_id}-dlq-replay",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **consumer_options(settings),
    )
    await consumer.start()
    try:
        letters, ends = await _read_to_end(consumer, dlq_topic, since_offset=since_offset)
    except BaseException:
        # The caller only stops a consumer it was handed: a failed read must not leave one open.
        await consumer.stop()
        raise
    return consumer, letters, ends


async def _read_to_end(
    consumer: AIOKafkaConsumer, dlq_topic: str, *, since_offset: int | None
) -> tuple[list[DeadLetter], dict[TopicPartition, int]]:
    """The letters from the starting positions up to each partition's end as it is now, and those ends."""
    partitions = consumer.partitions_for_topic(dlq_topic)
    if not partitions:
        raise SystemExit(f"no topic {dlq_topic} (create the topics with `caselink topics create`)")
    assignment = [TopicPartition(dlq_topic, p) for p in sorted(partitions)]
    # Assigned, not subscribed: the group only keeps our position, no rebalance to wait for.
    consumer.assign(assignment)
    ends = await log_ends(consumer, assignment)
    for tp in assignment:
        if since_offset is not None:
            consumer.seek(tp, since_offset)
        elif (committed := await consumer.committed(tp)) is not None:
            consumer.seek(tp, committed)
        else:
            await consumer.seek_to_beginning(tp)
    letters: list[DeadLetter] = []
    pending = {tp for tp in assignment if await consumer.position(tp) < ends[tp]}
    while pending:
        batches = await consumer.getmany(*pending, timeout_ms=1000)
        for tp, records in batches.items():
            letters += [_letter(r) for r in records if r.offset < ends[tp]]
        pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
    letters.sort(key=lambda letter: (letter.partition, letter.offset))
    return letters, ends


def _letter(record: Any) -> DeadLetter:
    headers = {key: value.decode(errors="replace") for key, value in record.headers or ()}
    return DeadLetter(record.topic, record.partition, record.offset, record.key, record.value or b"", headers)


def resume_positions(
    letters: Sequence[DeadLetter], handled: int, ends: dict[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Where the next run starts on each partition, after the first `handled` letters (read in
    partition, offset order): the end where all were handled, the first one left where --limit cut
    the run short, and unchanged (absent) on the partitions after it."""
    if handled >= len(letters):
        return dict(ends)
    cut = letters[handled]
    positions = {tp: end for tp, end in ends.items() if tp.partition < cut.partition}
    positions[TopicPartition(cut.topic, cut.partition)] = cut.offset
    return positions


async def replay_dead_letters(
    settings: Settings,
    topic: str,
    *,
    since_offset: int | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    out: Any = None,
) -> list[Replay]:
    """Replay the dead letters of `topic`; print one line per letter and a summary."""
    import sys

    write = (out or sys.stdout).write
    bootstrap = settings.require_kafka()
    dlq_topic = dlq_topic_of(topic)
    consumer, letters, ends = await read_dead_letters(settings, bootstrap, dlq_topic, since_offset=since_offset)
    try:
        replays = plan_replays(letters, limit=limit)
        producer = None
        if not dry_run and any(r.skip_reason is None for r in replays):
            producer = make_producer(settings, bootstrap, client_id=f"{settings.kafka_client_id}-dlq-replay")
            await producer.start()
        handled = 0  # the first `handled` replays are done: published, or skipped
        try:
            for index, replay in enumerate(replays):
                if producer is not None and replay.skip_reason is None:
                    try:
                        await producer.send_and_wait(
                            replay.topic, replay.letter.value, key=replay.letter.key, partition=replay.partition,
                            headers=[(REPLAYED_FROM, replay.letter.where.encode())],
                        )  # fmt: skip
                    except MessageSizeTooLargeError as exc:
                        replay = replays[index] = replace(replay, skip_reason=f"too large to publish again ({exc})")
                write(("(dry run) " if dry_run else "") + replay.describe() + "\n")
                handled = index + 1
        finally:
            if producer is not None:
                await producer.stop()
            if not dry_run and (handled or not replays):
                # What was published is not published again by the next run, even if a later
                # publish failed; the rest is (a failed run is repeated, never skipped).
                positions = resume_positions(letters, handled, ends)
                await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in positions.items()})
        to_publish = [r for r in replays if r.skip_reason is None]
        verb = "would replay" if dry_run else "replayed"
        skipped = len(replays) - len(to_publish)
        write(f"{verb} {len(to_publish)} of {len(letters)} dead letters from {dlq_topic}"
              f" ({skipped} skipped: duplicate copies, or too large)\n")  # fmt: skip
        return replays
    finally:
        await consumer.stop()
