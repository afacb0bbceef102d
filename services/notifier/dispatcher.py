"""The dispatcher: sends due push jobs, many at once, and records what each send did.

Every notifier replica runs one. It claims due jobs under a lease (handlers.claim_due), or is
handed the jobs its own consumer just stored leased to it (`reserve`, then `take`: no claim for
a push due at once). It sends each group as its own task, so a receiver that answers slowly or
not at all holds up only its own pushes, and a recorder writes finished sends in batches. Retries and fallbacks are not
awaited: they go back into the table with a later `due_at`, which survives a restart.

A send and its record are not one transaction (a receiver is not a database). If the process
dies between them the lease runs out and the job is sent again with the same delivery id, which
receivers deduplicate on: at least once, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import datetime, timedelta

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifier.adapters.base import DeliveryResult, failed
from services.notifier.channels import Channel, channel_for
from services.notifier.domain import Job, RetryPolicy, after_send, push_for, sending_groups
from services.notifier.handlers import Lease, Sent, claim_due, origins_of, record_sends
from services.shared.db import is_transient_db_error, transaction
from services.shared.kafka import consumer_options
from services.shared.logging import get_logger
from services.shared.settings import Settings
from services.shared.time import utc_now

log = get_logger(__name__)

Clock = Callable[[], datetime]
# Reads the original messages of dead letters: (key, value) by `topic/partition/offset`, for those
# that could be read.
OriginReader = Callable[[Collection[str]], Awaitable[dict[str, tuple[bytes | None, bytes]]]]
NO_CHANNEL = "no notify channel configured for this recipient"


class Dispatcher:
    """Sends due jobs concurrently and records the outcomes; a companion of the notifier service."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        channels: Mapping[str, Channel],
        retry: RetryPolicy,
        *,
        read_origins: OriginReader,
        clock: Clock = utc_now,
        lease: timedelta = timedelta(seconds=60),
        poll_interval: float = 0.5,
        batch_size: int = 500,
        max_in_flight: int = 200,
        max_unrecorded: int = 2000,
        rng: random.Random | None = None,
    ) -> None:
        self._sessions = sessions
        self._channels = channels
        self._retry = retry
        self._read_origins = read_origins
        self._clock = clock
        self._lease = lease
        self._poll_interval = poll_interval
        self._batch_size = batch_size
        self._max_in_flight = max_in_flight
        # Claimed but not yet recorded: while the recorder is behind (the database is slow, say),
        # claiming more would only let their leases run out and send them twice.
        self._max_unrecorded = max_unrecorded
        self._unrecorded = 0
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        # Set when the claim loop found no room: only then does freed room wake it (otherwise
        # every finished send would run a claim that, at a steady trickle, finds nothing).
        self._starved = False
        # Leases handed out by `reserve` and not yet `take`n: `stop` waits for them.
        self._reserved = 0
        self._all_taken = asyncio.Event()
        self._all_taken.set()
        self._stopping = False
        self._in_flight = 0
        self._sending: set[asyncio.Task[None]] = set()
        self._results: asyncio.Queue[list[Sent]] = asyncio.Queue()
        self._loop: asyncio.Task[None] | None = None
        self._recorder: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Look for due jobs now (new jobs were stored) instead of at the next poll."""
        self._wake.set()

    def reserve(self) -> Lease | None:
        """Room for jobs the caller is about to store due now, leased to this dispatcher; None when
        there is none (or it is not running). Every lease must be given back with `take`."""
        if self._loop is None or self._stopping:
            return None
        room = self._room()
        if room <= 0:
            return None
        self._in_flight += room
        self._unrecorded += room
        self._reserved += 1
        self._all_taken.clear()
        return Lease(until=self._clock() + self._lease, room=room)

    def take(self, lease: Lease, jobs: list[Job]) -> None:
        """Send the jobs stored under `lease` (none if storing failed) and free the rest of its room."""
        self._in_flight -= lease.room
        self._unrecorded -= lease.room
        self._launch(jobs)
        self._reserved -= 1
        if not self._reserved:
            self._all_taken.set()
        if self._starved:
            self._wake.set()

    async def start(self) -> None:
        """Begin claiming, sending and recording in the background."""
        self._stopping = False
        self._recorder = asyncio.create_task(self._record_forever())
        self._loop = asyncio.create_task(self._claim_forever())

    async def stop(self, grace: float = 15.0) -> None:
        """Stop claiming, let sends in flight (and those of leases being stored) finish and be
        recorded, within `grace` seconds."""
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(Exception):
            if self._loop is not None:
                await self._loop
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._all_taken.wait()
                if self._sending:
                    await asyncio.gather(*self._sending, return_exceptions=True)
                await self._results.join()
        if self._recorder is not None:
            self._recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recorder

    async def run_once(self) -> int:
        """Claim every due job, send, and record, all before returning; how many jobs were sent.

        The whole cycle in the foreground: what tests with a controllable clock drive.
        """
        total = 0
        while claimed := await self._claim(self._batch_size):
            groups = sending_groups(claimed)
            sent = await asyncio.gather(*(self._send(group) for group in groups))
            await self._record([item for group in sent for item in group])
            total += len(claimed)
        return total

    async def _claim(self, limit: int) -> list[Job]:
        now = self._clock()
        async with transaction(self._sessions) as session:
            return await claim_due(session, now=now, lease_until=now + self._lease, limit=limit)

    def _room(self) -> int:
        return min(self._batch_size, self._max_in_flight - self._in_flight, self._max_unrecorded - self._unrecorded)

    def _launch(self, jobs: list[Job]) -> None:
        self._unrecorded += len(jobs)
        for group in sending_groups(jobs):
            self._in_flight += len(group)
            task = asyncio.create_task(self._send_and_queue(group))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _claim_forever(self) -> None:
        while not self._stopping:
            self._wake.clear()
            free = self._room()
            self._starved = free <= 0
            claimed: list[Job] = []
            if free > 0:
                try:
                    claimed = await self._claim(free)
                except Exception as exc:
                    if not is_transient_db_error(exc):
                        log.exception("notifier.claim_failed")
                    else:
                        log.warning("notifier.database_unavailable", error=type(exc).__name__)
                    await asyncio.sleep(1.0)
                    continue
            self._launch(claimed)
            if claimed and len(claimed) == free:
                continue  # more may be due right now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)

    async def _send_and_queue(self, group: list[Job]) -> None:
        try:
            sent = await self._send(group)
        except BaseException:
            self._unrecorded -= len(group)  # never recorded: the lease runs out and it is sent again
            raise
        finally:
            self._in_flight -= len(group)
            if self._starved:
                self._wake.set()  # room for more
        await self._results.put(sent)

    async def _send(self, group: list[Job]) -> list[Sent]:
        first = group[0]
        batch_id: uuid.UUID | None = None
        if first.channel is None:
            result, channel = failed(NO_CHANNEL, retryable=False), "none"
        else:
            channel = first.channel.channel
            push = push_for(group, self._clock())
            batch_id = push.delivery_id if len(group) > 1 else None
            try:
                result = await channel_for(self._channels, channel).send(push)
            except Exception as exc:  # an adapter bug must not lose the job: retry it like a failed send
                log.exception("notifier.adapter_error", channel=channel)
                result = failed(f"{type(exc).__name__}: {exc}", retryable=True)
        return [self._after(job, result, channel, batch_id) for job in group]

    def _after(self, job: Job, result: DeliveryResult, channel: str, batch_id: uuid.UUID | None) -> Sent:
        if job.channel is not None:
            job = dataclasses.replace(job, attempt=job.attempt + 1, attempts=job.attempts + 1)
        step = after_send(
            job, ok=result.ok, retryable=result.retryable, retry=self._retry, now=self._clock(), rng=self._rng
        )
        return Sent(job, result, channel, batch_id, step)

    async def _record(self, sent: list[Sent]) -> None:
        given_up = [item.job.id for item in sent if item.step.next == "failed"]
        dead_letters: dict[uuid.UUID, tuple[str, bytes | None, bytes]] = {}
        if given_up:
            async with self._sessions() as session:
                origins = await origins_of(session, given_up)
            messages = await self._read_origins(set(origins.values()))
            for job_id, origin in origins.items():
                if (message := messages.get(origin)) is None:
                    log.error("notifier.dead_letter_unreadable", origin=origin)
                    continue
                dead_letters[job_id] = (origin, *message)
        async with transaction(self._sessions) as session:
            await record_sends(session, sent, dead_letters)
        for item in sent:
            if item.step.next == "failed":
                job = item.job
                log.warning(
                    "notifier.push_given_up",
                    case_id=job.case_id,
                    recipient=job.recipient,
                    purpose=job.purpose,
                    channel=item.channel,
                    attempts=job.attempts,
                )
        if any(item.step.next == "fallback" for item in sent):
            self._wake.set()

    async def _record_forever(self) -> None:
        while True:
            batches = [await self._results.get()]
            while not self._results.empty() and len(batches) < 200:
                batches.append(self._results.get_nowait())
            sent = [item for batch in batches for item in batch]
            while True:
                try:
                    await self._record(sent)
                    break
                except Exception as exc:
                    # Until recorded, the jobs stay leased; if the lease runs out first they are sent
                    # again with the same delivery id. Keep trying: dropping the outcome would resend too.
                    level = log.warning if is_transient_db_error(exc) else log.exception
                    level("notifier.record_failed", error=type(exc).__name__)
                    await asyncio.sleep(1.0)
            self._unrecorded -= len(sent)
            if self._starved:
                self._wake.set()
            for _ in batches:
                self._results.task_done()


def kafka_origin_reader(settings: Settings, bootstrap: str) -> OriginReader:
    """Read messages back from the broker by their `topic/partition/offset`, for dead letters: one
    consumer for all of them, each partition read forward from the first offset still missing (the
    given-up pushes of one round are mostly of neighbouring events), so a storm of give-ups costs a
    few fetches rather than a consumer each. Offsets that cannot be read are left out."""

    async def read(origins: Collection[str]) -> dict[str, tuple[bytes | None, bytes]]:
        wanted: dict[TopicPartition, set[int]] = defaultdict(set)
        for origin in origins:
            topic, partition, offset = origin.rsplit("/", 2)
            wanted[TopicPartition(topic, int(partition))].add(int(offset))
        found: dict[str, tuple[bytes | None, bytes]] = {}
        if not wanted:
            return found
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **consumer_options(settings))
        try:
            await consumer.start()
            consumer.assign(list(wanted))
            for where, offsets in wanted.items():
                missing = sorted(offsets)
                while missing:
                    consumer.seek(where, missing[0])
                    records = (await consumer.getmany(where, timeout_ms=5000, max_records=500)).get(where, [])
                    if not records:  # past the partition's end, and so are the later ones
                        break
                    for record in records:
                        if record.offset in offsets:
                            found[f"{where.topic}/{where.partition}/{record.offset}"] = (
                                record.key,
                                record.value or b"",
                            )
                    # Up to the last record read, what was not read is gone (deleted by retention).
                    missing = [offset for offset in missing if offset > records[-1].offset]
        except Exception:
            log.exception("notifier.origin_read_failed", origins=len(origins))
        finally:
            await consumer.stop()
        return found

    return read
