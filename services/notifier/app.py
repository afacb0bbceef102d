"""The notifier service: consumes caselink.case.events and pushes tasks, escalations and warnings."""

from __future__ import annotations

from typing import cast

import httpx
from aiokafka import ConsumerRecord
from faststream.kafka.annotations import KafkaMessage
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.topics import CASE_EVENTS
from services.notifier.channels import build_channels
from services.notifier.domain import RetryPolicy, recipients_needed
from services.notifier.handlers import deliver_event, record_deliveries
from services.shared.consuming import MessageConsumer, decode_case_event
from services.shared.logging import bind_message_context, clear_message_context
from services.shared.runtime import Runtime, build_runtime
from services.shared.settings import Settings


def create_service(settings: Settings) -> Runtime:
    """The runnable notifier: its runtime with the case-event subscriber registered."""
    runtime = build_runtime("notifier", settings)
    consumer = MessageConsumer("notifier.pushes", runtime.sessions, max_attempts=settings.consumer_max_attempts)
    client = httpx.AsyncClient(trust_env=False, timeout=settings.webhook_timeout)
    channels = build_channels(client, timeout=settings.webhook_timeout, settings=settings)
    retry = RetryPolicy(attempts=settings.notify_attempts, base_delay=settings.notify_base_delay)

    @runtime.broker.subscriber(CASE_EVENTS, **runtime.subscriber_options("caselink-notifier"))
    async def on_case_event(msg: KafkaMessage) -> None:
        record = cast(ConsumerRecord, msg.raw_message)
        clear_message_context()
        event = await decode_case_event(consumer, record)
        if event is None or recipients_needed(event.type, event.data.model_dump(mode="json")).is_empty:
            return
        bind_message_context(case_id=event.subject, event_id=str(event.id))

        async def push_then_record() -> bool:
            outcomes, unreachable = await deliver_event(
                event, sessions=runtime.sessions, channels=channels, retry=retry
            )

            async def save(session: AsyncSession) -> None:
                await record_deliveries(session, event, outcomes, unreachable)

            return await consumer.apply(message_id=str(event.id), work=save)

        # Pushing and recording share one retry budget: a failure in either is retried, then dead-lettered.
        await consumer.guard(record, push_then_record)

    runtime.closers.append(client.aclose)
    return runtime
