"""HTTP intake under load: C concurrent clients POSTing referrals to /v1/referrals for S seconds.

Each client sends one request at a time (closed loop) with a fresh `Idempotency-Key`, as the
bench's system user. Requests/s counts every answered request; latency is per request, answered
or not; statuses other than 202 are counted by status (and transport errors as `error`).

The clients speak plain HTTP/1.1 over one kept-alive connection each: the request bytes are built
once but for the key, and an answer is read by its Content-Length. A general client (httpx) costs
6–9 ms of CPU per request, as much as intake's own work, on the same two cores; this costs ~0.1 ms.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from services.bench.stats import LatencySummary, per_second
from services.bench.workload import Submission


@dataclass(frozen=True)
class HttpResult:
    """Requests answered, how fast, and how long each took."""

    clients: int
    seconds: float
    requests: int
    accepted: int  # 202
    statuses: dict[str, int]
    latency: LatencySummary

    @property
    def requests_per_s(self) -> float | None:
        return per_second(self.requests, self.seconds)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "clients": self.clients,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "accepted": self.accepted,
            "requests_per_s": self.requests_per_s,
            "accepted_per_s": per_second(self.accepted, self.seconds),
            "statuses": self.statuses,
            "latency_ms": self.latency.to_dict(),
        }


async def run_http(
    base_url: str,
    token: str,
    submissions: Sequence[Submission],
    *,
    seconds: float,
    clients: int,
    progress: Callable[[float], None] = lambda _: None,
) -> HttpResult:
    """Drive POST /v1/referrals with `clients` concurrent clients for `seconds`, cycling the bodies."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    head = (
        f"POST /v1/referrals HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: {length}\r\nIdempotency-Key: {key}\r\n\r\n"
    )
    requests = [(head.replace("{length}", str(len(body))), body) for body in (s.http_body() for s in submissions)]
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    started = time.monotonic()
    deadline = started + seconds

    async def one_client(offset: int) -> None:
        n = offset
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while time.monotonic() < deadline:
            request_head, body = requests[n % len(requests)]
            n += clients
            sent = time.monotonic()
            try:
                if connection is None:
                    connection = await asyncio.open_connection(host, port)
                reader, writer = connection
                writer.write(request_head.replace("{key}", str(uuid.uuid4())).encode() + body)
                status, keep_alive = await asyncio.wait_for(_read_answer(reader), 30.0)
                statuses[str(status)] += 1
                if not keep_alive:
                    writer.close()
                    connection = None
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
                statuses["error"] += 1
                if connection is not None:
                    connection[1].close()
                connection = None
            latencies.append(time.monotonic() - sent)
        if connection is not None:
            connection[1].close()

    async def report() -> None:
        while time.monotonic() < deadline:
            progress(time.monotonic() - started)
            await asyncio.sleep(0.2)

    reporter = asyncio.create_task(report())
    await asyncio.gather(*(one_client(i) for i in range(clients)))
    elapsed = time.monotonic() - started
    reporter.cancel()
    answered = sum(n for status, n in statuses.items() if status != "error")
    return HttpResult(
        clients, elapsed, answered, statuses.get("202", 0), dict(statuses), LatencySummary.of_seconds(latencies)
    )


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 answer; its status, and whether the connection stays open.

    Raises ValueError for an answer it cannot frame (no Content-Length, e.g. chunked)."""
    status = int((await reader.readuntil(b"\r\n")).split(b" ", 2)[1])
    length: int | None = None
    keep_alive = True
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
    if length is None:
        raise ValueError("an answer without Content-Length")
    await reader.readexactly(length)
    return status, keep_alive
