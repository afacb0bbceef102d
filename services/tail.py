"""`caselink tail`: watch caselink.case.events, one line per event (or the raw JSON).

A plain aiokafka consumer without a consumer group: it assigns itself every partition of the topic,
starts at the end (or the beginning with --from-beginning), commits nothing and so disturbs no
service. The formatting and filtering functions are pure and unit-tested; `run_tail` does the I/O.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from schemas.events import EVENT_CLASSES
from schemas.topics import CASE_EVENTS, TOPIC_PARTITIONS
from services.shared.settings import Settings

TYPE_PREFIX = "caselink.case."
_VERSION = re.compile(r"\.v(\d+)$")
_COMMON_DATA = frozenset(
    {"case_id", "status", "tier", "station_id", "category", "risk_level", "resident_ref", "sequence"}
)
_MAX_VALUE = 72

# The fields that tell one event of a type from another, in the order they are printed.
KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "received": ("room_id", "submitted_by", "category", "risk_level"),
    "routed": ("rule", "reason"),
    "assigned": ("worker_id", "accept_by", "score", "candidates_considered"),
    "accepted": ("worker_id",),
    "declined": ("worker_id", "reason"),
    "offer_expired": ("worker_id",),
    "queued": ("waiting_at",),
    "escalated": ("reason", "from_tier", "from_station_id"),
    "referred_back": ("reason", "from_tier", "from_station_id"),
    "started": ("worker_id",),
    "resolved": ("worker_id", "outcome"),
    "closed": ("worker_id",),
    "sla_warning": ("kind", "deadline", "worker_id"),
    "sla_breached": ("kind", "deadline", "worker_id"),
    "notified": ("purpose", "channel", "recipient", "attempts"),
    "notification_failed": ("purpose", "channel", "recipient", "attempts", "error"),
}


def short_type(type_: str) -> str:
    """`caselink.case.assigned.v1` -> `assigned`; other versions keep theirs (`assigned.v2`)."""
    name = type_.removeprefix(TYPE_PREFIX)
    return name.removesuffix(".v1")


def base_name(type_: str) -> str:
    """The event's name without prefix or version: `caselink.case.assigned.v2` -> `assigned`."""
    return _VERSION.sub("", type_.removeprefix(TYPE_PREFIX))


def unknown_type_warning(names: Iterable[str]) -> str | None:
    """A warning naming the --type names no event type of this version has (a typo, or a newer type)."""
    unknown = sorted({base_name(name) for name in names} - set(EVENT_CLASSES))
    if not unknown:
        return None
    return f"warning: no event type named {', '.join(unknown)}; known: {', '.join(EVENT_CLASSES)}"


@dataclass(frozen=True)
class EventFilter:
    """Which events to show: by short type name (any version) and by case id; empty means all."""

    types: frozenset[str] = frozenset()
    case_id: str | None = None

    @classmethod
    def build(cls, types: Iterable[str] | None = None, case_id: str | None = None) -> EventFilter:
        return cls(frozenset(base_name(t) for t in types or ()), case_id or None)

    def matches(self, event: Mapping[str, Any]) -> bool:
        type_ = event.get("type")
        if self.types and not (isinstance(type_, str) and base_name(type_) in self.types):
            return False
        return self.case_id is None or _case_id(event) == self.case_id


def _case_id(event: Mapping[str, Any]) -> str | None:
    data = event.get("data")
    case_id = data.get("case_id") if isinstance(data, Mapping) else None
    return str(case_id) if case_id is not None else event.get("subject")


def decode(value: bytes | None) -> dict[str, Any] | None:
    """The event in a record's value, or None when it is not a JSON object."""
    if not value:
        return None
    try:
        event = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    return event if isinstance(event, dict) else None


def _time(raw: Any) -> str:
    if not isinstance(raw, str):
        return "-"
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return raw
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _value(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.3g}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) > _MAX_VALUE:
        text = text[: _MAX_VALUE - 1] + "…"
    if not text or any(ch.isspace() for ch in text) or '"' in text:
        text = json.dumps(text, ensure_ascii=False)
    return text


def key_fields(name: str, data: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The fields to print for an event of this short name (unknown types: every non-common field)."""
    fields = KEY_FIELDS.get(base_name(name))
    if fields is None:
        fields = tuple(field for field in data if field not in _COMMON_DATA)
    return [(field, data[field]) for field in fields if data.get(field) is not None]


def format_event(event: Mapping[str, Any]) -> str:
    """One line: time, short type, case id, #sequence, status, tier/station, then the type's key fields."""
    raw_data = event.get("data")
    data: Mapping[str, Any] = raw_data if isinstance(raw_data, Mapping) else {}
    type_ = event.get("type")
    name = short_type(type_) if isinstance(type_, str) else "?"
    sequence = data.get("sequence")
    columns = [
        _time(event.get("time")),
        f"{name:<19}",
        str(_case_id(event) or "-"),
        f"#{sequence if sequence is not None else '?':<3}",
        f"{data.get('status', '-'):<11}",
        f"{data.get('tier', '-')}/{data.get('station_id', '-')}".ljust(24),
    ]
    extras = " ".join(f"{field}={_value(value)}" for field, value in key_fields(name, data))
    return "  ".join([*columns, extras]).rstrip()


def render(value: bytes | None, event_filter: EventFilter, *, as_json: bool, origin: str = "") -> str | None:
    """The line to print for a record's value, or None when the filter hides it."""
    event = decode(value)
    if event is None:
        if event_filter.types or event_filter.case_id:
            return None
        return f"undecodable message{f' at {origin}' if origin else ''} ({len(value or b'')} bytes)"
    if not event_filter.matches(event):
        return None
    if as_json:
        assert value is not None  # decode() returned an event
        return value.decode("utf-8").strip()
    return format_event(event)


async def run_tail(
    settings: Settings,
    *,
    from_beginning: bool = False,
    event_filter: EventFilter | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Print case events until `stop` is set, or SIGINT / SIGTERM arrives."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from services.shared.kafka import consumer_options, log_ends

    out = out or sys.stdout
    event_filter = event_filter or EventFilter()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.require_kafka(),
        client_id=f"{settings.kafka_client_id}-tail",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        **consumer_options(settings),
    )
    try:
        await consumer.start()
        if CASE_EVENTS not in await consumer.topics():
            raise SystemExit(f"topic {CASE_EVENTS} does not exist (run `caselink topics create`)")
        numbers = consumer.partitions_for_topic(CASE_EVENTS) or range(TOPIC_PARTITIONS[CASE_EVENTS])
        partitions = [TopicPartition(CASE_EVENTS, number) for number in sorted(numbers)]
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:  # from the true end (Tansu's reported end can sit inside the last record batch)
            for partition, end in (await log_ends(consumer, partitions)).items():
                consumer.seek(partition, end)
        where = "the beginning" if from_beginning else "now on"
        print(f"tailing {CASE_EVENTS} ({len(partitions)} partitions) from {where}; Ctrl-C stops", file=sys.stderr)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            records = sorted((r for batch in batches.values() for r in batch), key=lambda r: r.timestamp)
            for record in records:
                line = render(
                    record.value,
                    event_filter,
                    as_json=as_json,
                    origin=f"{record.topic}/{record.partition}/{record.offset}",
                )
                if line is not None:
                    out.write(line + "\n")
            out.flush()
    except BrokenPipeError:
        # The reader went away (`caselink tail | head`): stop quietly, and keep Python's final
        # flush of stdout from failing again.
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await consumer.stop()
