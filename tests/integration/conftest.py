"""The whole system as a user starts it: `caselink dev` on embedded PostgreSQL and Tansu, with the
demo network's webhooks pointing at a recording receiver, observed through plain aiokafka."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.topics import CASE_EVENTS, REFERRALS_REJECTED
from services.shared.demo import demo_network
from services.shared.embedded import TANSU_ENV, free_port, start_postgres
from tests.support.webhook_receiver import Receiver

STARTUP_TIMEOUT = 90.0


@dataclass
class Stack:
    """A running `caselink dev` and how to reach it."""

    http: str
    kafka_bootstrap: str
    database_url: str
    data_dir: Path
    receiver: Receiver

    def cli(self, *args: str) -> str:
        """Run a `caselink` command against this stack's infrastructure; return its stdout."""
        return self._python("services.cli", *args)

    def tokens(self, users: Iterable[str]) -> dict[str, str]:
        """A new bearer token for each of these users, made by one process (`tests.support.make_tokens`)."""
        return dict(json.loads(self._python("tests.support.make_tokens", *users)))

    def _python(self, module: str, *args: str) -> str:
        env = {
            **os.environ,
            "CASELINK_DATABASE_URL": self.database_url,
            "CASELINK_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            **TANSU_ENV,
        }
        done = subprocess.run(
            [sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    async def new_topic(self, purpose: str, *, partitions: int) -> str:
        """Create a topic of its own for one test (`caselink-test.<purpose>-<random>`); return its name."""
        name = f"caselink-test.{purpose}-{uuid.uuid4().hex[:8]}"
        admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        finally:
            await admin.close()
        return name

    async def sql(self, query: str, *params: Any) -> list[asyncpg.Record]:
        """Run one query on the stack's database."""
        conn = await asyncpg.connect(self.database_url.replace("+asyncpg", ""))
        try:
            return list(await conn.fetch(query, *params))
        finally:
            await conn.close()


class TopicLog:
    """Everything published on a topic since the stack started, read by a plain aiokafka consumer."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.records: list[Any] = []
        self._bootstrap = bootstrap
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
        await self._consumer.start()
        partitions = self._consumer.partitions_for_topic(self.topic) or set()
        assignment = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(assignment)
        await self._consumer.seek_to_beginning(*assignment)
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                self.records.extend(records)
            if batches:
                self._arrived.set()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self._consumer:
            await self._consumer.stop()

    async def wait_for(self, predicate: Any, within: float = 30.0) -> list[Any]:
        """Wait until `predicate(records)` is truthy; return the records."""
        deadline = time.monotonic() + within
        while not predicate(self.records):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting on {self.topic}; saw {len(self.records)} records")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass
        return self.records


class CaseEvents(TopicLog):
    """caselink.case.events, grouped by case."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(bootstrap, CASE_EVENTS)

    def of(self, case_id: str) -> list[dict[str, Any]]:
        """The events of one case, in the order they arrived."""
        return [json.loads(r.value) for r in self.records if r.key == case_id.encode()]

    def by_case(self) -> dict[str, list[dict[str, Any]]]:
        grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in self.records:
            event = json.loads(record.value)
            grouped[event["subject"]].append(event)
        return grouped

    async def wait_for_types(self, case_id: str, *names: str, within: float = 30.0) -> list[dict[str, Any]]:
        """Wait until the case has events of all these short names; return its events."""
        wanted = {f"caselink.case.{n}.v1" for n in names}
        await self.wait_for(lambda _: wanted <= {e["type"] for e in self.of(case_id)}, within)
        return self.of(case_id)


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedded PostgreSQL of the test module's own, not migrated (each module decides)."""
    process, url = start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield url
    finally:
        process.stop()


@pytest.fixture(scope="session")
def receiver_port() -> int:
    return free_port()


@pytest_asyncio.fixture(scope="session")
async def receiver(receiver_port: int) -> AsyncIterator[Receiver]:
    recording = Receiver()
    await recording.start(port=receiver_port)
    yield recording
    await recording.stop()


@pytest.fixture(scope="session")
def stack(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`caselink dev` with the demo network pointing its webhooks at the receiver."""
    data_dir = tmp_path_factory.mktemp("caselink")
    network_file = data_dir / "network.yaml"
    network_file.write_text(demo_network(receiver.url).dump_yaml(), encoding="utf-8")
    port = free_port()
    log = (data_dir / "dev.log").open("wb")
    env = {**os.environ, "CASELINK_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "dev", "--data-dir", str(data_dir), "--port", str(port),
         "--network", str(network_file)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    endpoints = data_dir / "endpoints.json"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not endpoints.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"caselink dev did not start; log:\n{(data_dir / 'dev.log').read_text()[-4000:]}")
        time.sleep(0.2)
    info = json.loads(endpoints.read_text())
    yield Stack(info["http"], info["kafka_bootstrap"], info["database_url"], data_dir, receiver)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest_asyncio.fixture(scope="session")
async def case_events(stack: Stack) -> AsyncIterator[CaseEvents]:
    log = CaseEvents(stack.kafka_bootstrap)
    await log.start()
    yield log
    await log.stop()


@pytest_asyncio.fixture(scope="session")
async def rejections(stack: Stack) -> AsyncIterator[TopicLog]:
    log = TopicLog(stack.kafka_bootstrap, REFERRALS_REJECTED)
    await log.start()
    yield log
    await log.stop()


@pytest_asyncio.fixture(scope="session")
async def producer(stack: Stack) -> AsyncIterator[AIOKafkaProducer]:
    kafka = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, enable_idempotence=False)
    await kafka.start()
    yield kafka
    await kafka.stop()
