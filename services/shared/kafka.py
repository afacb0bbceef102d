"""Kafka clients built from the one settings object: the relay's producer, FastStream brokers, topics."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from schemas.topics import TOPIC_PARTITIONS
from services.shared.logging import get_logger
from services.shared.settings import Settings

log = get_logger(__name__)


def _security(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_sasl_mechanism:
        options |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password,
        }
    if settings.kafka_security_protocol in {"SSL", "SASL_SSL"}:
        from aiokafka.helpers import create_ssl_context

        options["ssl_context"] = create_ssl_context()
    return options


def _faststream_security(settings: Settings) -> BaseSecurity | None:
    """The same security settings in FastStream's form."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return None
    ssl_context = _security(settings).get("ssl_context")
    if not settings.kafka_sasl_mechanism:
        return BaseSecurity(ssl_context=ssl_context)
    sasl = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
    if settings.kafka_sasl_mechanism not in sasl:
        raise SystemExit(f"CASELINK_KAFKA_SASL_MECHANISM must be one of {', '.join(sasl)}")
    return sasl[settings.kafka_sasl_mechanism](
        username=settings.kafka_sasl_username or "",
        password=settings.kafka_sasl_password or "",
        ssl_context=ssl_context,
        use_ssl=settings.kafka_security_protocol == "SASL_SSL",
    )


def make_producer(settings: Settings, bootstrap: str, *, client_id: str) -> AIOKafkaProducer:
    """The producer the outbox relay publishes through (acks=all; idempotent where the broker allows)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=settings.kafka_linger_ms,
        max_batch_size=256 * 1024,
        **_security(settings),
    )


def make_broker(settings: Settings, bootstrap: str, *, client_id: str) -> KafkaBroker:
    """A FastStream broker for a service's subscribers (it publishes nothing directly: the outbox does)."""
    return KafkaBroker(
        bootstrap,
        client_id=client_id,
        enable_idempotence=settings.kafka_enable_idempotence,
        allow_auto_create_topics=False,
        logger=None,
        security=_faststream_security(settings),
    )


async def create_topics(settings: Settings, bootstrap: str) -> list[str]:
    """Create every caselink topic with its partition count; return the ones that were new."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="caselink-admin", **_security(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in TOPIC_PARTITIONS if name not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(name, TOPIC_PARTITIONS[name], settings.kafka_replication_factor) for name in missing]
                )
            except TopicAlreadyExistsError:
                pass  # another replica created them first
        return missing
    finally:
        await admin.close()
