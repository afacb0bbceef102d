"""The benchmark's arithmetic (pure): percentiles, throughput, ratios, targets, profile summaries."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# CONTRACT / issue 7 targets on the 2-core reference machine.
TARGET_CASES_PER_S = 3000.0
TARGET_P99_MS_AT_500 = 200.0
TARGET_HTTP_REQ_PER_S = 1500.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between ranks; None when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class LatencySummary:
    """Latencies in milliseconds; percentiles are None when nothing was measured."""

    count: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None

    @classmethod
    def of_seconds(cls, seconds: Sequence[float]) -> LatencySummary:
        """Summarise latencies given in seconds."""
        ms = [s * 1000 for s in seconds]
        return cls(
            count=len(ms),
            p50_ms=_round(percentile(ms, 50)),
            p95_ms=_round(percentile(ms, 95)),
            p99_ms=_round(percentile(ms, 99)),
            max_ms=_round(max(ms)) if ms else None,
            mean_ms=_round(sum(ms) / len(ms)) if ms else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def per_second(count: int, seconds: float) -> float | None:
    """count / seconds, or None when no time passed."""
    return round(count / seconds, 1) if seconds > 0 else None


@dataclass(frozen=True)
class Throughput:
    """How fast a batch of items finished: over the whole run, and in its steady middle part."""

    items: int
    seconds: float | None  # first start to last finish
    per_s: float | None
    steady_per_s: float | None  # between the 10th and the 90th percentile of finish times: the middle

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


# The shortest middle a rate is read from. Items finish in batches (a poll, a flush), so a shorter
# one measures how close together one or two batches landed, not a rate: 100 cases that settled in
# one batch within 7 ms once read as 14,538 cases/s. (The headline rate is the overall one, see
# `services.bench.report.sustained`; the middle's is a detail.)
MIN_STEADY_SECONDS = 1.0


def throughput(started_at: float, finished_at: Iterable[float]) -> Throughput:
    """The throughput of items that started (in bulk) at `started_at` and finished at these times.
    The steady rate is left out (None) with fewer than 10 items or a middle shorter than
    MIN_STEADY_SECONDS."""
    done = sorted(finished_at)
    if not done:
        return Throughput(0, None, None, None)
    seconds = done[-1] - started_at
    steady = None
    if len(done) >= 10:
        first, last = round(0.1 * (len(done) - 1)), round(0.9 * (len(done) - 1))
        window = done[last] - done[first]
        if window >= MIN_STEADY_SECONDS:
            steady = per_second(last - first, window)
    return Throughput(len(done), round(seconds, 3), per_second(len(done), seconds), steady)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator rounded to 4 digits, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 4)


@dataclass(frozen=True)
class TargetCheck:
    """One of the issue's targets against what this run measured."""

    name: str
    target: str
    measured: float | None
    unit: str
    met: bool | None  # None: not measured in this run

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def check_targets(
    *, cases_per_s: float | None, p99_ms_at_rate: float | None, offered_rate: float | None, http_per_s: float | None
) -> list[TargetCheck]:
    """Compare the headline numbers with the issue's targets. The p99 target holds at 500 cases/s
    offered; a paced publisher lands a little under its rate, so 95 % of it counts."""
    at_500 = offered_rate is not None and offered_rate >= 0.95 * 500
    return [
        TargetCheck(
            "sustained cases/s (Kafka ingest → notified)",
            f">= {TARGET_CASES_PER_S:.0f}",
            cases_per_s,
            "cases/s",
            None if cases_per_s is None else cases_per_s >= TARGET_CASES_PER_S,
        ),
        TargetCheck(
            "p99 submission → notified at 500 cases/s offered",
            f"<= {TARGET_P99_MS_AT_500:.0f}",
            p99_ms_at_rate,
            "ms",
            None if p99_ms_at_rate is None or not at_500 else p99_ms_at_rate <= TARGET_P99_MS_AT_500,
        ),
        TargetCheck(
            "HTTP intake requests/s",
            f">= {TARGET_HTTP_REQ_PER_S:.0f}",
            http_per_s,
            "req/s",
            None if http_per_s is None else http_per_s >= TARGET_HTTP_REQ_PER_S,
        ),
    ]


_LINE_NUMBER = re.compile(r":\d+\)$")


def top_frames(collapsed: str, limit: int = 15) -> dict[str, list[dict[str, Any]]]:
    """Summarise py-spy's raw output (`frame;frame;leaf count` per line): the frames with the most
    samples on the CPU themselves (`self`) and with the most samples anywhere in their stack (`total`)."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_LINE_NUMBER.sub(")", frame) for frame in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            anywhere[frame] += n

    def rows(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"frame": f, "samples": n, "percent": round(100 * n / samples, 1)} for f, n in counter.most_common(limit)
        ]

    return {"self": rows(own), "total": rows(anywhere)} if samples else {"self": [], "total": []}
