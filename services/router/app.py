"""The router service: routes every received case, applies people's actions on cases, and keeps
the clock (offer and resolve deadlines, queued cases meeting new capacity)."""

from __future__ import annotations

from datetime import timedelta
from typing import cast

from aiokafka import ConsumerRecord
from faststream.kafka.annotations import KafkaMessage

from schemas.commands import CaseCommand
from schemas.events import CaseReceived, event_type
from schemas.topics import CASE_COMMANDS, CASE_EVENTS
from services.router.batch import LiveNetwork, route_received_batch
from services.router.handlers import apply_command, route_received_case
from services.router.policy import Policy, default_policy, load_policy
from services.router.sweep import DeadlineSweep
from services.shared.consuming import (
    Delivery,
    GroupCatchUp,
    MessageConsumer,
    batch_subscriber,
    decode_case_event,
    decode_message,
    event_type_header,
    merged_polls,
)
from services.shared.logging import clear_message_context
from services.shared.runtime import Runtime, build_runtime
from services.shared.settings import Settings

# About one event in four is a `received`, and the others are skipped by their header: a batch
# of 1,500 records holds up to ~350 cases. Bigger batches held their transaction (and a second
# replica waiting on it) for seconds, and cost more CPU per case in the bench.
EVENTS_PER_BATCH = 1500


def active_policy(settings: Settings) -> Policy:
    """The routing policy of CASELINK_POLICY, or the packaged default."""
    return load_policy(settings.policy) if settings.policy else default_policy()


def create_service(settings: Settings) -> Runtime:
    """The runnable router: case-event and command subscribers, and the deadline sweep."""
    runtime = build_runtime("router", settings)
    policy = active_policy(settings)
    cases = MessageConsumer("router.cases", runtime.sessions, max_attempts=settings.consumer_max_attempts)
    commands = MessageConsumer("router.commands", runtime.sessions, max_attempts=settings.consumer_max_attempts)

    live = LiveNetwork()
    command_network = LiveNetwork()  # its own: the two consumers interleave at every await
    received_type = event_type("received")

    @runtime.broker.subscriber(
        CASE_EVENTS, **batch_subscriber(max_records=EVENTS_PER_BATCH), **runtime.subscriber_options("caselink-router")
    )
    async def on_case_events(msg: KafkaMessage) -> None:
        clear_message_context()
        async with merged_polls(msg, linger_ms=settings.consumer_linger_ms, max_records=EVENTS_PER_BATCH) as records:
            await route_records(cast(tuple[ConsumerRecord, ...], records))

    async def route_records(records: tuple[ConsumerRecord, ...]) -> None:
        deliveries: list[Delivery[CaseReceived]] = []
        for record in records:
            # Most events are not for the router: the outbox's header says so without parsing them.
            if event_type_header(record) not in (None, received_type):
                continue
            event = await decode_case_event(cases, record)
            if isinstance(event, CaseReceived):
                deliveries.append(Delivery(record, str(event.id), event))
        await cases.process_batch(
            deliveries,
            work=lambda session, batch: route_received_batch(
                session, [d.item for d in batch], policy=policy, live=live
            ),
            # One by one (a batch that failed, e.g. capacity kept changing under it): still on the
            # live snapshot, not a full network load per case.
            work_one=lambda d: lambda session: route_received_case(session, d.item, policy=policy, networks=live),
        )

    command_subscriber = runtime.broker.subscriber(
        CASE_COMMANDS, **batch_subscriber(max_records=500), **runtime.subscriber_options("caselink-router-commands")
    )

    @command_subscriber
    async def on_commands(msg: KafkaMessage) -> None:
        clear_message_context()
        deliveries: list[Delivery[CaseCommand]] = []
        for record in cast(tuple[ConsumerRecord, ...], msg.raw_message):
            if (command := await decode_message(commands, record, CaseCommand)) is not None:
                deliveries.append(Delivery(record, str(command.command_id), command))
        # A command releases and reserves whichever workers it decides on, so each keeps its own
        # transaction (worker rows in id order, as everywhere); different cases' run side by side.
        await commands.process_concurrently(
            deliveries,
            key=lambda d: d.item.case_id,
            work_one=lambda d: lambda session: apply_command(session, d.item, policy=policy, networks=command_network),
        )

    commands_handled = GroupCatchUp(CASE_COMMANDS)

    async def commands_caught_up() -> bool:
        return await commands_handled(command_subscriber.consumer)

    sweep = DeadlineSweep(
        runtime.sessions,
        policy,
        interval=settings.router_sweep_interval,
        grace=timedelta(seconds=settings.router_deadline_grace),
        caught_up=commands_caught_up,
        catch_up_wait=settings.router_catch_up_wait,
    )
    runtime.companions.append(sweep)
    return runtime
