"""The testcontainers tests: `caselink dev` on real `apache/kafka` and `postgres` images instead of
the embedded broker and database, with idempotent producers on. They need a Docker daemon; without
one every test here skips, saying so. docker and testcontainers are imported only once a test asks
for a container, so collecting these tests never needs either."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.shared.demo import demo_network
from services.shared.embedded import free_port
from tests.integration.conftest import CaseEvents, Stack, TopicLog
from tests.support.webhook_receiver import Receiver

KAFKA_IMAGE = "apache/kafka:3.9.0"
POSTGRES_IMAGE = "postgres:16"
# Image pulls on a cold machine dominate; a warm start takes seconds.
CONTAINER_TIMEOUT = 180
STARTUP_TIMEOUT = 180.0

KAFKA_PORT = 9092
KAFKA_START_SCRIPT = "/tmp/caselink-kafka-start.sh"
KAFKA_START_READY = "/tmp/caselink-kafka-start.ready"
KAFKA_LOG_DIR = "/tmp/kraft-combined-logs"
# One KRaft node that is broker and controller. Clients use PLAINTEXT on 9092, advertised as the
# mapped host port (known only once the container runs, hence the start script); the broker talks to
# itself on BROKER, the controller quorum on CONTROLLER.
KAFKA_ENV = {
    "CLUSTER_ID": "Y2FzZWxpbmstdGVzdHMhIQ",  # base64 of 16 bytes, as KRaft wants
    "KAFKA_NODE_ID": "1",
    "KAFKA_PROCESS_ROLES": "broker,controller",
    "KAFKA_LISTENERS": f"PLAINTEXT://:{KAFKA_PORT},BROKER://:9093,CONTROLLER://:9094",
    "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
    "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
    "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9094",
    "KAFKA_LOG_DIRS": KAFKA_LOG_DIR,
    "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
    "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
    "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    # As in production: `caselink topics create` makes every topic with its partition count.
    "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
}
KAFKA_READY = r"Kafka Server started|Transitioning from RECOVERY to RUNNING"


@pytest.fixture(scope="session")
def docker_daemon() -> None:
    """Skip unless a Docker daemon answers (asked the way testcontainers will ask it)."""
    try:
        from testcontainers.core.docker_client import DockerClient
    except ImportError as exc:
        pytest.skip(f"testcontainers is not installed ({exc}): pip install -e '.[test]'")
    try:
        client = DockerClient(timeout=5).client
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # whatever the reason, there is no daemon to run containers on
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        pytest.skip(f"no Docker daemon answers ({reason[:300]}): the testcontainers tests need one")


@dataclass
class Infrastructure:
    """The running containers and how the host reaches them."""

    database_url: str  # postgresql+asyncpg://…
    kafka_bootstrap: str
    kafka: Any  # testcontainers DockerContainer of apache/kafka

    def kafka_batches(self, topic: str) -> list[dict[str, int]]:
        """Every record batch stored on the broker for `topic`, from kafka-dump-log.sh: its
        producerId (-1 unless an idempotent or transactional producer wrote it) and baseSequence."""
        script = f'for f in {KAFKA_LOG_DIR}/{topic}-*/*.log; do /opt/kafka/bin/kafka-dump-log.sh --files "$f"; done'
        exit_code, output = self.kafka.exec(["sh", "-c", script])
        text = output.decode(errors="replace")
        assert exit_code == 0, text[-2000:]
        return [
            {"producer_id": int(match[1]), "base_sequence": int(match[0])}
            for match in re.findall(r"baseSequence: (-?\d+) [^\n]*?producerId: (-?\d+)", text)
        ]


def start_apache_kafka(image: str = KAFKA_IMAGE) -> Any:
    """A started single-node KRaft apache/kafka container (testcontainers' KafkaContainer drives
    the confluentinc image's scripts, which apache/kafka does not have)."""
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(image).with_exposed_ports(KAFKA_PORT)
    for name, value in KAFKA_ENV.items():
        container.with_env(name, value)
    # Wait for the start script, which needs the mapped port, i.e. a running container.
    container.with_command(
        ["sh", "-c", f"while [ ! -f {KAFKA_START_READY} ]; do sleep 0.1; done; exec bash {KAFKA_START_SCRIPT}"]
    )
    container.start()
    try:
        script = (
            "#!/bin/bash\n"
            f"export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://{kafka_bootstrap_of(container)},BROKER://$(hostname):9093\n"
            "exec /etc/kafka/docker/run\n"
        )
        # One archive, extracted in order: the marker appears only once the script is complete.
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for path, content, mode in ((KAFKA_START_SCRIPT, script.encode(), 0o755), (KAFKA_START_READY, b"", 0o644)):
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size, info.mode, info.mtime = len(content), mode, int(time.time())
                tar.addfile(info, io.BytesIO(content))
        container.get_wrapped_container().put_archive("/", archive.getvalue())
        _wait_for_log(container, KAFKA_READY)
    except BaseException:
        container.stop()
        raise
    return container


def _wait_for_log(container: Any, pattern: str) -> None:
    try:
        from testcontainers.core.wait_strategies import LogMessageWaitStrategy
    except ImportError:  # testcontainers before wait strategies
        from testcontainers.core.waiting_utils import wait_for_logs

        wait_for_logs(container, pattern, timeout=CONTAINER_TIMEOUT)
    else:  # fails at once when the container exits
        LogMessageWaitStrategy(re.compile(pattern)).with_startup_timeout(CONTAINER_TIMEOUT).wait_until_ready(container)


@pytest.fixture(scope="session")
def infrastructure(docker_daemon: None) -> Iterator[Infrastructure]:
    """postgres:16 and apache/kafka:3.9.0, fresh for the session."""
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers before 4.14
        from testcontainers.postgres import PostgresContainer

    postgres = PostgresContainer(POSTGRES_IMAGE, driver="asyncpg").with_command(
        "postgres -c max_connections=300 -c fsync=off -c synchronous_commit=off"
    )
    postgres.start()
    try:
        kafka = start_apache_kafka()
        try:
            yield Infrastructure(postgres.get_connection_url(), kafka_bootstrap_of(kafka), kafka)
        finally:
            kafka.stop()
    finally:
        postgres.stop()


def kafka_bootstrap_of(container: Any) -> str:
    return f"{container.get_container_host_ip()}:{container.get_exposed_port(KAFKA_PORT)}"


def infrastructure_env(infra: Infrastructure) -> dict[str, str]:
    """What points caselink at the containers: external infrastructure, idempotent producers on."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("CASELINK_")},
        "CASELINK_DATABASE_URL": infra.database_url,
        "CASELINK_KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
        "CASELINK_KAFKA_ENABLE_IDEMPOTENCE": "true",
        "CASELINK_LOG_FORMAT": "json",
    }


@pytest_asyncio.fixture(scope="session")
async def receiver(docker_daemon: None) -> AsyncIterator[Receiver]:
    recording = Receiver()
    await recording.start(port=free_port())
    yield recording
    await recording.stop()


@pytest.fixture(scope="session")
def stack(
    infrastructure: Infrastructure, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """`caselink dev` on the containers, with the demo network pointing its webhooks at the receiver.
    With CASELINK_DATABASE_URL and CASELINK_KAFKA_BOOTSTRAP set it starts no embedded server, and it
    leaves CASELINK_KAFKA_ENABLE_IDEMPOTENCE=true to the services (it turns it off only for Tansu)."""
    data_dir = tmp_path_factory.mktemp("caselink-docker")
    network_file = data_dir / "network.yaml"
    network_file.write_text(demo_network(receiver.url).dump_yaml(), encoding="utf-8")
    port = free_port()
    log = (data_dir / "dev.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "dev", "--data-dir", str(data_dir), "--port", str(port),
         "--network", str(network_file)],
        stdout=log, stderr=subprocess.STDOUT, env=infrastructure_env(infrastructure),
    )  # fmt: skip
    endpoints = data_dir / "endpoints.json"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not endpoints.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"caselink dev did not start; log:\n{(data_dir / 'dev.log').read_text()[-4000:]}")
        time.sleep(0.2)
    info = json.loads(endpoints.read_text())
    assert info["database_url"] == infrastructure.database_url
    assert info["kafka_bootstrap"] == infrastructure.kafka_bootstrap
    yield Stack(info["http"], info["kafka_bootstrap"], info["database_url"], data_dir, receiver)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


class SubscribedTopicLog(TopicLog):
    """TopicLog for Apache Kafka. TopicLog assigns the partitions its consumer learnt at bootstrap,
    but aiokafka bootstraps with a metadata request for no topics, which Apache Kafka answers with
    none (Tansu with all); so subscribe instead, without a group, from the earliest offset."""

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            self.topic, bootstrap_servers=self._bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._collect())


class SubscribedCaseEvents(SubscribedTopicLog, CaseEvents):
    """caselink.case.events, grouped by case, on Apache Kafka."""


@pytest_asyncio.fixture(scope="session")
async def case_events(stack: Stack) -> AsyncIterator[CaseEvents]:
    log = SubscribedCaseEvents(stack.kafka_bootstrap)
    await log.start()
    yield log
    await log.stop()


@pytest_asyncio.fixture(scope="session")
async def producer(stack: Stack) -> AsyncIterator[AIOKafkaProducer]:
    """Submissions from outside, through an idempotent producer (Apache Kafka grants producer ids)."""
    kafka = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, enable_idempotence=True, acks="all")
    await kafka.start()
    yield kafka
    await kafka.stop()


@pytest.fixture(scope="session")
def worker_token(stack: Stack) -> str:
    return stack.cli("token", "create", "--user", "w-0031")
