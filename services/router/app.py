"""The router service: routes every received case, applies people's actions on cases, and keeps
the clock (offer and resolve deadlines, queued cases meeting new capacity)."""

from __future__ import annotations

from typing import cast

from aiokafka import ConsumerRecord
from faststream.kafka.annotations import KafkaMessage

from schemas.commands import CaseCommand
from schemas.events import CaseReceived
from schemas.topics import CASE_COMMANDS, CASE_EVENTS
from services.router.handlers import apply_command, route_received_case
from services.router.policy import Policy, default_policy, load_policy
from services.router.sweep import DeadlineSweep
from services.shared.consuming import MessageConsumer, decode_case_event, decode_message
from services.shared.logging import bind_message_context, clear_message_context
from services.shared.runtime import Runtime, build_runtime
from services.shared.settings import Settings


def active_policy(settings: Settings) -> Policy:
    """The routing policy of CASELINK_POLICY, or the packaged default."""
    return load_policy(settings.policy) if settings.policy else default_policy()


def create_service(settings: Settings) -> Runtime:
    """The runnable router: case-event and command subscribers, and the deadline sweep."""
    runtime = build_runtime("router", settings)
    policy = active_policy(settings)
    cases = MessageConsumer("router.cases", runtime.sessions, max_attempts=settings.consumer_max_attempts)
    commands = MessageConsumer("router.commands", runtime.sessions, max_attempts=settings.consumer_max_attempts)

    @runtime.broker.subscriber(CASE_EVENTS, **runtime.subscriber_options("caselink-router"))
    async def on_case_event(msg: KafkaMessage) -> None:
        record = cast(ConsumerRecord, msg.raw_message)
        clear_message_context()
        event = await decode_case_event(cases, record)
        if not isinstance(event, CaseReceived):
            return
        bind_message_context(case_id=event.subject, event_id=str(event.id))
        await cases.process(
            record,
            message_id=str(event.id),
            work=lambda session: route_received_case(session, event, policy=policy),
        )

    @runtime.broker.subscriber(CASE_COMMANDS, **runtime.subscriber_options("caselink-router-commands"))
    async def on_command(msg: KafkaMessage) -> None:
        record = cast(ConsumerRecord, msg.raw_message)
        clear_message_context()
        command = await decode_message(commands, record, CaseCommand)
        if command is None:
            return
        bind_message_context(case_id=command.case_id, event_id=str(command.command_id))
        await commands.process(
            record,
            message_id=str(command.command_id),
            work=lambda session: apply_command(session, command, policy=policy),
        )

    runtime.companions.append(DeadlineSweep(runtime.sessions, policy, interval=settings.router_sweep_interval))
    return runtime
