"""The notifier service: stores a push job for every task, escalation and warning on
caselink.case.events, and dispatches them (retries, fallbacks, digests, quiet hours)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from faststream.kafka.annotations import KafkaMessage

from schemas.topics import CASE_EVENTS
from services.notifier.channels import build_channels, http_client
from services.notifier.dispatcher import Dispatcher, kafka_origin_reader
from services.notifier.domain import Job, NoisePolicy, RetryPolicy, concerns_pushes
from services.notifier.handlers import CONSUMER, PUSHED_EVENTS, Incoming, Lease, Stored, store_jobs
from services.shared.consuming import (
    MessageConsumer,
    batch_subscriber,
    event_type_header,
    merged_polls,
    origin,
    read_case_event,
)
from services.shared.db import is_transient_db_error, transaction
from services.shared.runtime import Runtime, build_runtime
from services.shared.settings import Settings, quiet_hours_window
from services.shared.time import utc_now

EVENTS_PER_BATCH = 500


def noise_policy(settings: Settings) -> NoisePolicy:
    """The digest and quiet-hours policy configured in the settings."""
    return NoisePolicy(settings.notify_digest_minutes, *quiet_hours_window(settings.notify_quiet_hours))


def create_service(settings: Settings) -> Runtime:
    """The runnable notifier: its runtime with the case-event subscriber and the dispatcher."""
    runtime = build_runtime("notifier", settings)
    _, bootstrap = settings.require_infrastructure()
    consumer = MessageConsumer(CONSUMER, runtime.sessions, max_attempts=settings.consumer_max_attempts)
    client = http_client(settings.webhook_timeout)
    retry = RetryPolicy(
        attempts=settings.notify_attempts, base_delay=settings.notify_base_delay, max_delay=settings.notify_max_delay
    )
    noise = noise_policy(settings)
    dispatcher = Dispatcher(
        runtime.sessions,
        build_channels(client, timeout=settings.webhook_timeout, settings=settings),
        retry,
        read_origins=kafka_origin_reader(settings, bootstrap),
        # A lease outlives any single send (each is bounded by its channel's timeout) and its
        # record; it is also how long a crashed notifier's claimed pushes wait for another one.
        lease=timedelta(seconds=max(30.0, 3 * max(settings.webhook_timeout, settings.smtp_timeout))),
        poll_interval=settings.notify_poll_interval,
        max_in_flight=settings.notify_max_in_flight,
    )

    # Raw records (no JSON decoding of every body by FastStream), a 20 ms wait after an empty poll;
    # under load a batch merges the polls of CASELINK_CONSUMER_LINGER_MS.
    @runtime.broker.subscriber(
        CASE_EVENTS, **batch_subscriber(EVENTS_PER_BATCH), **runtime.subscriber_options("caselink-notifier")
    )
    async def on_case_events(msg: KafkaMessage) -> None:
        async with merged_polls(msg, linger_ms=settings.consumer_linger_ms, max_records=EVENTS_PER_BATCH) as records:
            await store_pushes(records)

    async def store_pushes(records: tuple[Any, ...]) -> None:
        batch: list[Incoming] = []
        for record in records:
            # Skipped unread when its header names a type that neither pushes nor ends an offer (most
            # of the topic: received, notified...); a record without the header is read to find out.
            if (named := event_type_header(record)) is not None and not concerns_pushes(named):
                continue
            event = await read_case_event(consumer, record, PUSHED_EVENTS)
            # store_jobs asks each event whom it concerns, and which offer it ends.
            if event is not None and concerns_pushes(event.type):
                batch.append(Incoming(event, origin(record)))
        if not batch:
            return

        if await _store_batch(consumer, runtime, dispatcher, records, batch, noise):
            dispatcher.wake()

    runtime.companions.append(dispatcher)
    runtime.closers.append(client.aclose)
    return runtime


async def _store_batch(
    consumer: MessageConsumer,
    runtime: Runtime,
    dispatcher: Dispatcher,
    records: tuple[Any, ...],
    batch: list[Incoming],
    noise: NoisePolicy,
) -> bool:
    """Store a batch's jobs in one transaction; whether a new job waits for the dispatcher's claim.

    Jobs due at once are stored leased to this replica's dispatcher, as far as it has room, and
    handed to it after the commit: it sends them without claiming them back.
    If the batch fails for a reason other than the database, its events are stored one at a
    time, each under the consumer's retry / dead-letter policy: only a bad event goes to the
    DLQ, and the ones already stored are not stored twice (one job per event and recipient).
    """

    async def store(items: list[Incoming], lease: Lease | None = None) -> Stored:
        async with transaction(runtime.sessions) as session:
            return await store_jobs(session, items, now=utc_now(), noise=noise, lease=lease)

    async def store_leased() -> Stored:
        lease = dispatcher.reserve()
        leased: list[Job] = []
        try:
            stored = await store(batch, lease)
            leased = stored.leased
            return stored
        finally:
            if lease is not None:
                dispatcher.take(lease, leased)  # also when storing failed: its room is free again

    async def store_one(item: Incoming) -> bool:
        return (await store([item])).to_claim

    try:
        return (await store_leased()).to_claim
    except Exception as exc:
        if is_transient_db_error(exc):
            await asyncio.sleep(1.0)
            raise  # NACK: the batch is read again once the database is back
    by_origin = {origin(record): record for record in records}
    waiting = False
    for item in batch:
        waiting |= await consumer.guard(by_origin[item.origin], lambda item=item: store_one(item))  # type: ignore[misc]
    return waiting
