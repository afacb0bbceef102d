"""The router service: consumes caselink.case.events and routes every received case."""

from __future__ import annotations

from typing import cast

from aiokafka import ConsumerRecord
from faststream.kafka.annotations import KafkaMessage

from schemas.events import CaseReceived
from schemas.topics import CASE_EVENTS
from services.router.handlers import route_received_case
from services.router.policy import Policy, default_policy, load_policy
from services.shared.consuming import MessageConsumer, decode_case_event
from services.shared.logging import bind_message_context, clear_message_context
from services.shared.runtime import Runtime, build_runtime
from services.shared.settings import Settings


def active_policy(settings: Settings) -> Policy:
    """The routing policy of CASELINK_POLICY, or the packaged default."""
    return load_policy(settings.policy) if settings.policy else default_policy()


def create_service(settings: Settings) -> Runtime:
    """The runnable router: its runtime with the case-event subscriber registered."""
    runtime = build_runtime("router", settings)
    policy = active_policy(settings)
    consumer = MessageConsumer("router.cases", runtime.sessions, max_attempts=settings.consumer_max_attempts)

    @runtime.broker.subscriber(CASE_EVENTS, **runtime.subscriber_options("caselink-router"))
    async def on_case_event(msg: KafkaMessage) -> None:
        record = cast(ConsumerRecord, msg.raw_message)
        clear_message_context()
        event = await decode_case_event(consumer, record)
        if not isinstance(event, CaseReceived):
            return
        bind_message_context(case_id=event.subject, event_id=str(event.id))
        await consumer.process(
            record,
            message_id=str(event.id),
            work=lambda session: route_received_case(session, event, policy=policy),
        )

    return runtime
