"""HTTP intake under load: C concurrent clients POSTing referrals to /v1/referrals for S seconds.

Each client sends one request at a time (closed loop) with a fresh `Idempotency-Key`, as the
bench's system user. Requests/s counts every answered request; latency is per request, answered
or not; statuses other than 202 are counted by status (and transport errors as `error`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

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
    bodies = [s.http_body() for s in submissions]
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=30.0) as client:
        started = time.monotonic()
        deadline = started + seconds

        async def one_client(offset: int) -> None:
            n = offset
            while time.monotonic() < deadline:
                body = bodies[n % len(bodies)]
                n += clients
                sent = time.monotonic()
                try:
                    answer = await client.post(
                        "/v1/referrals", content=body, headers={"Idempotency-Key": str(uuid.uuid4())}
                    )
                    statuses[str(answer.status_code)] += 1
                except httpx.HTTPError:
                    statuses["error"] += 1
                latencies.append(time.monotonic() - sent)

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
