"""Plain aiokafka readers of whole topics for integration tests: every record since the topic was
created, parsed once on arrival and indexed, so thousands of cases stay cheap to inspect."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.topics import CASE_COMMAND_RESULTS, CASE_EVENTS
from tests.support.faults import end_offsets

Diagnostics = Callable[[], str]


def short_type(event: dict[str, Any]) -> str:
    """`caselink.case.assigned.v1` -> `assigned`."""
    return str(event["type"]).removeprefix("caselink.case.").rsplit(".", 1)[0]


class TopicLog:
    """Everything published on a topic, read from the beginning of every partition (no consumer group)."""

    def __init__(self, bootstrap: str, topic: str, *, diagnostics: Diagnostics | None = None) -> None:
        self.topic = topic
        self.values: list[dict[str, Any]] = []
        self.last_arrival = time.monotonic()
        self.next_offsets: dict[int, int] = {}  # per partition, the offset after the last record read
        self._bootstrap = bootstrap
        self._diagnostics = diagnostics
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()
        self._listeners: list[Callable[[dict[str, Any]], None]] = []

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
        await self._consumer.start()
        partitions = self._consumer.partitions_for_topic(self.topic) or set()
        assert partitions, f"topic {self.topic} does not exist"
        assignment = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(assignment)
        await self._consumer.seek_to_beginning(*assignment)
        self._task = asyncio.create_task(self._collect(), name=f"topic-log {self.topic}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer:
            await self._consumer.stop()

    def listen(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Call `callback` with every record (already seen ones first, then each new one as it arrives)."""
        for value in self.values:
            callback(value)
        self._listeners.append(callback)

    def unlisten(self, callback: Callable[[dict[str, Any]], None]) -> None:
        self._listeners.remove(callback)

    def _index(self, value: dict[str, Any]) -> None:
        """Subclasses index each record as it arrives."""

    async def _collect(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                if records:
                    self.next_offsets[tp.partition] = records[-1].offset + 1
                for record in records:
                    value = json.loads(record.value)
                    self.values.append(value)
                    self._index(value)
                    for callback in self._listeners:
                        callback(value)
            if batches:
                self.last_arrival = time.monotonic()
                self._arrived.set()

    async def read_to_end(self, within: float = 30.0) -> None:
        """Wait until this log has read every record the topic holds now.

        What "no record for a while" cannot promise: a record acknowledged by the broker can reach
        this reader a fetch-wait later (Tansu answers an empty fetch only when the wait is over)."""
        ends = await end_offsets(self._bootstrap, self.topic)
        await self.wait_for(
            lambda: all(self.next_offsets.get(p, 0) >= end for p, end in ends.items()),
            within,
            what=f"the topic's ends {ends}",
            detail=lambda: f"read up to {self.next_offsets}",
        )

    async def wait_for(
        self,
        predicate: Callable[[], object],
        within: float = 30.0,
        *,
        what: str = "",
        detail: Diagnostics | None = None,
    ) -> None:
        """Wait until `predicate()` is truthy, re-checking whenever records arrive (and every second);
        on timeout fail with `detail()` and the diagnostics."""
        deadline = time.monotonic() + within
        while not predicate():
            if self._task is not None and self._task.done():
                self._task.result()  # the reader died: raise its error instead of timing out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                message = f"timed out after {within:.0f}s waiting for {what or 'a condition'} on {self.topic}"
                message += f" (saw {len(self.values)} records)"
                if detail is not None:
                    message += "\n" + detail()
                if self._diagnostics is not None:
                    message += "\n" + self._diagnostics()
                raise AssertionError(message)
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass


class CaseEvents(TopicLog):
    """caselink.case.events grouped by case; `of()` sees each event id once, `values` every delivery."""

    def __init__(self, bootstrap: str, *, diagnostics: Diagnostics | None = None) -> None:
        super().__init__(bootstrap, CASE_EVENTS, diagnostics=diagnostics)
        self._unique: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)

    def _index(self, value: dict[str, Any]) -> None:
        self._unique[value["subject"]].setdefault(value["id"], value)

    def case_ids(self) -> list[str]:
        return list(self._unique)

    def of(self, case_id: str) -> list[dict[str, Any]]:
        """The case's distinct events (first delivery of each id), in sequence order."""
        return sorted(self._unique.get(case_id, {}).values(), key=lambda e: e["data"]["sequence"])

    def types(self, case_id: str) -> list[str]:
        """Short type names of the case's distinct events, in sequence order."""
        return [short_type(e) for e in self.of(case_id)]

    def named(self, case_id: str, name: str) -> list[dict[str, Any]]:
        """The case's distinct events of one short type, in sequence order."""
        return [e for e in self.of(case_id) if short_type(e) == name]

    def last(self, case_id: str) -> str | None:
        events = self.of(case_id)
        return short_type(events[-1]) if events else None

    async def wait_for_types(self, case_id: str, *names: str, within: float = 30.0) -> list[dict[str, Any]]:
        """Wait until the case has at least one event of each short type; return its events."""
        wanted = set(names)
        await self.wait_for(
            lambda: wanted <= set(self.types(case_id)),
            within,
            what=f"{names} of case {case_id}",
            detail=lambda: self.timeline(case_id),
        )
        return self.of(case_id)

    async def wait_for_count(self, case_id: str, name: str, count: int, within: float = 30.0) -> list[dict[str, Any]]:
        """Wait until the case has at least `count` events of one short type; return those events."""
        await self.wait_for(
            lambda: len(self.named(case_id, name)) >= count,
            within,
            what=f"{count}x {name} of case {case_id}",
            detail=lambda: self.timeline(case_id),
        )
        return self.named(case_id, name)

    def timeline(self, case_id: str) -> str:
        """One line per event, for assertion messages."""
        lines = []
        for event in self.of(case_id):
            data = event["data"]
            extra = {k: data[k] for k in ("worker_id", "reason", "kind", "waiting_at", "from_tier") if k in data}
            lines.append(f"  {data['sequence']:>3} {short_type(event):<14} {data['status']:<12} "
                         f"{data['tier']:<9} {data['station_id']:<14} {extra}")  # fmt: skip
        return f"case {case_id}:\n" + "\n".join(lines)


class CommandResults(TopicLog):
    """caselink.case.command-results by command id."""

    def __init__(self, bootstrap: str, *, diagnostics: Diagnostics | None = None) -> None:
        super().__init__(bootstrap, CASE_COMMAND_RESULTS, diagnostics=diagnostics)
        self.by_command: dict[str, dict[str, Any]] = {}

    def _index(self, value: dict[str, Any]) -> None:
        self.by_command.setdefault(str(value["command_id"]), value)

    async def result_of(self, command_id: str, within: float = 15.0) -> dict[str, Any]:
        """Wait for the router's answer to one command."""
        await self.wait_for(lambda: command_id in self.by_command, within, what=f"the result of command {command_id}")
        return self.by_command[command_id]
