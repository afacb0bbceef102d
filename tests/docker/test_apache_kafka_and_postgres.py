"""The embedded acceptance flow again, on real `apache/kafka` and `postgres` images: HTTP and Kafka
submissions flow received → routed → assigned → notified, gap-free, with idempotent producers (which
the embedded Tansu cannot grant) in the services' outbox relays and in the submitting client."""

from __future__ import annotations

import json
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from schemas.topics import CASE_EVENTS
from services.shared.kafka import make_producer
from services.shared.settings import Settings
from tests.docker.conftest import Infrastructure, SubscribedTopicLog, infrastructure_env
from tests.integration import test_referral_flow as embedded
from tests.integration.conftest import CaseEvents, Stack

pytestmark = [pytest.mark.docker, pytest.mark.integration, pytest.mark.timeout(900)]


async def test_http_referral_is_routed_assigned_and_pushed_to_the_worker(
    stack: Stack, case_events: CaseEvents, worker_token: str
) -> None:
    await embedded.test_http_referral_is_routed_assigned_and_pushed_to_the_worker(stack, case_events, worker_token)


async def test_kafka_referral_from_an_idempotent_producer_flows_the_same_way(
    stack: Stack, case_events: CaseEvents, producer: AIOKafkaProducer
) -> None:
    await embedded.test_kafka_referral_flows_the_same_way(stack, case_events, producer)


async def test_repeated_submissions_create_one_case(
    stack: Stack, case_events: CaseEvents, worker_token: str, producer: AIOKafkaProducer
) -> None:
    await embedded.test_repeated_idempotency_key_returns_the_same_case_and_creates_nothing(
        stack, case_events, worker_token, producer
    )


async def test_the_outbox_relays_publish_case_events_with_idempotent_producers(
    stack: Stack, case_events: CaseEvents, worker_token: str, infrastructure: Infrastructure
) -> None:
    answer = await embedded.submit(stack, worker_token, embedded.referral(), key=f"relay-{uuid.uuid4()}")
    assert answer.status_code == 202, answer.text
    case_id = answer.json()["case_id"]
    events = await case_events.wait_for_types(case_id, "received", "routed", "assigned", "notified")
    embedded.assert_gap_free_flow(events, "received", "routed", "assigned", "notified")

    # Only the relays write caselink.case.events; the broker stores who wrote each batch.
    batches = infrastructure.kafka_batches(CASE_EVENTS)
    assert batches, "kafka-dump-log.sh found no batches on caselink.case.events"
    assert all(batch["producer_id"] >= 0 for batch in batches), batches  # -1: not idempotent
    assert all(batch["base_sequence"] >= 0 for batch in batches), batches


async def test_make_producer_is_idempotent_against_apache_kafka(infrastructure: Infrastructure) -> None:
    env = infrastructure_env(infrastructure)
    settings = Settings(
        kafka_bootstrap=env["CASELINK_KAFKA_BOOTSTRAP"],
        kafka_enable_idempotence=env["CASELINK_KAFKA_ENABLE_IDEMPOTENCE"] == "true",
    )
    assert settings.kafka_enable_idempotence is True
    topic = f"caselink.test.idempotence-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=infrastructure.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()

    producer = make_producer(settings, infrastructure.kafka_bootstrap, client_id="caselink-test-relay")
    await producer.start()
    try:
        for n in range(3):
            await producer.send_and_wait(topic, json.dumps({"n": n}).encode(), key=b"k")
        txn_manager = producer._txn_manager
        assert txn_manager is not None and txn_manager.producer_id >= 0  # granted by InitProducerId
    finally:
        await producer.stop()

    log = SubscribedTopicLog(infrastructure.kafka_bootstrap, topic)
    await log.start()
    try:
        records = await log.wait_for(lambda records: len(records) >= 3)
    finally:
        await log.stop()
    assert [json.loads(r.value)["n"] for r in records] == [0, 1, 2]
    batches = infrastructure.kafka_batches(topic)
    assert {batch["producer_id"] for batch in batches} == {txn_manager.producer_id}
    assert sorted(batch["base_sequence"] for batch in batches)[0] == 0
