"""What every caselink service process holds: engine, FastStream broker, outbox relay; and how it
starts, stops and answers readiness."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.shared.db import create_engine, service_connect_kwargs, session_factory
from services.shared.kafka import make_broker, make_producer
from services.shared.logging import get_logger
from services.shared.outbox import OutboxRelay
from services.shared.settings import Settings

log = get_logger(__name__)


class Companion(Protocol):
    """A background activity of a service besides consuming, e.g. the router's deadline sweep."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Runtime:
    """The infrastructure handles of one service process."""

    service: str
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    broker: KafkaBroker
    relay: OutboxRelay
    closers: list[Callable[[], Awaitable[object]]] = field(default_factory=list)
    companions: list[Companion] = field(default_factory=list)

    def subscriber_options(self, group: str) -> dict[str, Any]:
        """Consumer options shared by every subscriber: a group, manual commits after processing."""
        return {
            "group_id": group,
            "auto_offset_reset": self.settings.kafka_auto_offset_reset,
            # Commit only after the handler's transaction committed; on error re-read the same offset.
            "ack_policy": AckPolicy.NACK_ON_ERROR,
            "fetch_max_wait_ms": self.settings.kafka_fetch_max_wait_ms,
        }

    async def start(self) -> None:
        """Connect the producer, start the relay, then start consuming and the companions."""
        await self.relay.start()
        await self.broker.start()
        for companion in self.companions:
            await companion.start()
        log.info("service.started")

    async def stop(self) -> None:
        """Stop the companions and consuming first (in-flight work finishes and commits), then the
        relay, then the pools."""
        for companion in self.companions:
            with contextlib.suppress(Exception):
                await companion.stop()
        with contextlib.suppress(Exception):
            await self.broker.stop()
        await self.relay.stop()
        for close in self.closers:
            with contextlib.suppress(Exception):
                await close()
        await self.engine.dispose()
        log.info("service.stopped")

    async def ready(self) -> dict[str, bool]:
        """Whether the database and the broker answer, each within READY_TIMEOUT seconds (asked together)."""

        async def database_answers() -> bool:
            async with self.sessions() as session:
                await session.execute(text("SELECT 1"))
            return True

        database, broker = await asyncio.gather(
            _answers_within(database_answers(), READY_TIMEOUT),
            _answers_within(self.broker.ping(timeout=2), READY_TIMEOUT),
        )
        return {"database": database, "broker": broker}


READY_TIMEOUT = 2.0


async def _answers_within(check: Coroutine[Any, Any, bool], seconds: float) -> bool:
    """The check's answer, False if it failed or took longer. A frozen database answers nothing at all,
    and cancelling a statement in flight can itself take seconds: the late check is not waited for."""
    task = asyncio.ensure_future(check)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        return False
    return task.exception() is None and bool(task.result())


def build_runtime(service: str, settings: Settings) -> Runtime:
    """Create (not start) the handles of a service from the settings."""
    database_url, bootstrap = settings.require_infrastructure()
    client_id = f"{settings.kafka_client_id}-{service}"
    engine = create_engine(settings, url=database_url)
    relay = OutboxRelay(
        database_url,
        lambda: make_producer(settings, bootstrap, client_id=f"{client_id}-relay"),
        batch_size=settings.outbox_batch_size,
        poll_interval=settings.outbox_poll_interval,
        connect_kwargs=service_connect_kwargs(settings),
    )
    return Runtime(
        service=service,
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        broker=make_broker(settings, bootstrap, client_id=client_id),
        relay=relay,
    )


READINESS_INTERVAL = 5.0


async def _write_readiness(ready_file: Path, checks: dict[str, bool]) -> None:
    body = json.dumps({"ready": all(checks.values()), "checks": checks}) + "\n"
    await asyncio.to_thread(ready_file.write_text, body)


async def _report_readiness(runtime: Runtime, ready_file: Path | None, interval: float, *, was_ready: bool) -> None:
    """Re-check the database and the broker every `interval` seconds; log each change and keep the
    current answer in the ready file as JSON (`{"ready": ..., "checks": {...}}`).

    The file itself stays: a probe that only tests for it (liveness) must not restart a consumer
    that is waiting out an outage it will recover from by itself. A readiness probe reads the content.
    """
    while True:
        await asyncio.sleep(interval)
        checks = await runtime.ready()
        ready = all(checks.values())
        if ready == was_ready:
            continue
        if ready:
            log.info("service.ready_again", **checks)
        else:
            log.warning("service.not_ready", **checks)
        if ready_file is not None:
            await _write_readiness(ready_file, checks)
        was_ready = ready


async def serve_until_signalled(
    factory: Callable[[], Runtime], *, ready_file: Path | None = None, readiness_interval: float = READINESS_INTERVAL
) -> None:
    """Build and run a consumer-only service until SIGTERM or SIGINT, then shut down gracefully.

    `ready_file` is written once the service consumes, and then holds its current readiness."""
    runtime = factory()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    checks = await runtime.ready()
    if ready_file:
        await _write_readiness(ready_file, checks)
    watch = asyncio.create_task(
        _report_readiness(runtime, ready_file, readiness_interval, was_ready=all(checks.values())), name="readiness"
    )
    try:
        await stop.wait()
    finally:
        log.info("service.stopping")
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await runtime.stop()
