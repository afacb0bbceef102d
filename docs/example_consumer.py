"""A minimal downstream consumer of caselink.case.events (docs/downstream.md explains each choice).

Run: KAFKA_BOOTSTRAP=host:port python docs/example_consumer.py   (needs only `pip install aiokafka`)
"""

import asyncio
import contextlib
import json
import os

from aiokafka import AIOKafkaConsumer


def on_assigned(data: dict) -> None:
    print(f"case {data['case_id']} #{data['sequence']}: offered to {data['worker_id']} until {data['accept_by']}")


def on_escalated(data: dict) -> None:
    print(f"case {data['case_id']} #{data['sequence']}: escalated to {data['station_id']} ({data['reason']})")


HANDLERS = {"caselink.case.assigned.v1": on_assigned, "caselink.case.escalated.v1": on_escalated}


def handle(value: bytes | None) -> None:
    """One record's value: a CloudEvents 1.0 structured-mode envelope, or something to log and skip."""
    try:
        event = json.loads(value or b"")
    except ValueError:
        event = None
    if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
        print("skipped a record that is not a case event")  # never retried: it would stop you for ever
        return
    handler = HANDLERS.get(event.get("type"))
    if handler is not None:  # unknown types (new ones, .v2) are ignored, as are unknown fields
        handler(event["data"])  # may see an event twice after a crash: dedupe by event["id"]


async def main() -> None:
    consumer = AIOKafkaConsumer(
        "caselink.case.events",
        bootstrap_servers=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        group_id="example-downstream",  # your own group: each group gets every event once
        enable_auto_commit=False,  # commit only after the event was handled: at-least-once
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        async for record in consumer:
            handle(record.value)
            await consumer.commit()
    finally:
        await consumer.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops it
        asyncio.run(main())
