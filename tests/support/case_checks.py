"""Checks on one case's events (distinct event ids, in sequence order) shared by the router tests."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from tests.support.topic_log import short_type

# Events after which the case has no outstanding offer or holder any more.
RELEASES_WORKER = frozenset({"declined", "offer_expired", "escalated", "referred_back", "resolved", "closed", "queued"})


def at(timestamp: str) -> datetime:
    """An RFC 3339 timestamp from an event."""
    return datetime.fromisoformat(timestamp)


def sequence_problems(events: list[dict[str, Any]]) -> list[str]:
    """Why the events are not numbered 1, 2, 3 … with one event per number (empty when they are)."""
    sequences = [e["data"]["sequence"] for e in events]
    problems = []
    if twice := sorted(n for n, count in Counter(sequences).items() if count > 1):
        problems.append(f"sequence numbers used by two different events: {twice}")
    if sorted(set(sequences)) != list(range(1, len(set(sequences)) + 1)):
        problems.append(f"sequence has gaps: {sorted(set(sequences))}")
    return problems


def offer_overlaps(events: list[dict[str, Any]]) -> list[str]:
    """Offers made while another worker still held an offer or the case (empty when none)."""
    holder: str | None = None
    problems = []
    for event in events:
        name, data = short_type(event), event["data"]
        if name == "assigned":
            if holder is not None:
                problems.append(f"#{data['sequence']} offered to {data['worker_id']} while {holder} still held it")
            holder = data["worker_id"]
        elif name in RELEASES_WORKER:
            holder = None
    return problems


def main_path(events: list[dict[str, Any]]) -> list[str]:
    """The case's event names without the timer and notification side events."""
    side = {"sla_warning", "sla_breached", "notified", "notification_failed"}
    return [name for name in (short_type(e) for e in events) if name not in side]
