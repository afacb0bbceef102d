"""Kafka clients built from the one settings object: the relay's producer, FastStream brokers, topics."""

from __future__ import annotations

import ssl
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from schemas.topics import TOPIC_PARTITIONS
from services.shared.logging import get_logger
from services.shared.settings import Settings

log = get_logger(__name__)


SASL_MECHANISMS: dict[str, type[SASLPlaintext | SASLScram256 | SASLScram512]] = {
    "PLAIN": SASLPlaintext,
    "SCRAM-SHA-256": SASLScram256,
    "SCRAM-SHA-512": SASLScram512,
}
TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


def check_security(settings: Settings) -> None:
    """Fail naming the variable when the Kafka security settings do not fit together."""
    protocol = settings.kafka_security_protocol
    using = f"CASELINK_KAFKA_SECURITY_PROTOCOL is {protocol}"
    sasl = {
        "CASELINK_KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
        "CASELINK_KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
        "CASELINK_KAFKA_SASL_PASSWORD": settings.kafka_sasl_password,
    }
    if protocol in SASL_PROTOCOLS:
        for name, value in sasl.items():
            if not value:
                raise SystemExit(f"{name} must be set when {using}")
        if settings.kafka_sasl_mechanism not in SASL_MECHANISMS:
            raise SystemExit(
                f"CASELINK_KAFKA_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)}, "
                f"not {settings.kafka_sasl_mechanism!r}"
            )
    else:
        for name, value in sasl.items():
            if value:
                raise SystemExit(f"{name} is set but {using}: use SASL_PLAINTEXT or SASL_SSL, or unset it")
    files = {
        "CASELINK_KAFKA_SSL_CAFILE": settings.kafka_ssl_cafile,
        "CASELINK_KAFKA_SSL_CERTFILE": settings.kafka_ssl_certfile,
        "CASELINK_KAFKA_SSL_KEYFILE": settings.kafka_ssl_keyfile,
    }
    if protocol not in TLS_PROTOCOLS:
        for name, path in files.items():
            if path is not None:
                raise SystemExit(f"{name} is set but {using}, without TLS: use SSL or SASL_SSL, or unset it")
        return
    if settings.kafka_ssl_keyfile is not None and settings.kafka_ssl_certfile is None:
        raise SystemExit("CASELINK_KAFKA_SSL_KEYFILE is set without CASELINK_KAFKA_SSL_CERTFILE, its certificate")
    for name, path in files.items():
        if path is not None and not path.is_file():
            raise SystemExit(f"{name}: no such file {path}")


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The client TLS context of SSL / SASL_SSL: the brokers' certificates checked against
    CASELINK_KAFKA_SSL_CAFILE (else the system's CA store), by host name unless that is turned off,
    and a client certificate (mutual TLS) when CASELINK_KAFKA_SSL_CERTFILE is set."""
    check_security(settings)
    cafile = settings.kafka_ssl_cafile
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile) if cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"CASELINK_KAFKA_SSL_CAFILE: cannot load CA certificates from {cafile}: {exc}") from None
    if settings.kafka_ssl_certfile is not None:
        try:
            context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise SystemExit(
                "CASELINK_KAFKA_SSL_CERTFILE / CASELINK_KAFKA_SSL_KEYFILE: cannot load the client certificate "
                f"{settings.kafka_ssl_certfile} with key {settings.kafka_ssl_keyfile or '(in the same file)'}: {exc}"
            ) from None
    # Off: the chain is still verified (CERT_REQUIRED), only the name is not compared.
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def client_security(settings: Settings) -> dict[str, Any]:
    """The security options of every aiokafka client (producer, consumer, admin)."""
    check_security(settings)
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in SASL_PROTOCOLS:
        options |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password,
        }
    if protocol in TLS_PROTOCOLS:
        options["ssl_context"] = ssl_context(settings)
    return options


def consumer_options(settings: Settings) -> dict[str, Any]:
    """The options of every aiokafka consumer: security, and how long a fetch may wait for records."""
    return {**client_security(settings), "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms}


def _faststream_security(settings: Settings) -> BaseSecurity | None:
    """The same security settings in FastStream's form."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        check_security(settings)
        return None
    context = client_security(settings).get("ssl_context")
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context)
    assert settings.kafka_sasl_mechanism in SASL_MECHANISMS  # check_security made sure
    return SASL_MECHANISMS[settings.kafka_sasl_mechanism](
        username=settings.kafka_sasl_username or "",
        password=settings.kafka_sasl_password or "",
        ssl_context=context,
        use_ssl=protocol == "SASL_SSL",
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
        **client_security(settings),
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
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="caselink-admin", **client_security(settings))
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


async def log_ends(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], *, within: float = 5.0
) -> dict[TopicPartition, int]:
    """The end (next offset) of each of these partitions, which the consumer must have assigned;
    it leaves their positions anywhere, so seek afterwards.

    Tansu answers ListOffsets(latest) with the base offset of the partition's last record batch
    plus one, not the offset after its last record: a batch of three at 2..4 ends at 3, and a reader
    that stops there misses two records. Apache Kafka answers right. So read from the reported end
    minus one: a fetch returns whole batches, and the last record seen gives the true end.
    """
    reported = await consumer.end_offsets(partitions)
    ends = dict(reported)
    pending = {tp for tp in partitions if reported[tp] > 0}
    for tp in pending:
        consumer.seek(tp, reported[tp] - 1)
    deadline = time.monotonic() + within
    while pending and time.monotonic() < deadline:
        for tp, records in (await consumer.getmany(*pending, timeout_ms=200)).items():
            if records:
                ends[tp] = max(ends[tp], records[-1].offset + 1)
                pending.discard(tp)
    return ends
