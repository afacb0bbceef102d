"""A rerunnable throughput probe of intake → router (not the official `caselink bench`).

It starts the router test bench (embedded PostgreSQL and Tansu in this process, intake and router
replicas as subprocesses), loads a Jiujiang-scale network, and then either

- bursts `--cases` submissions onto caselink.referrals.submitted as fast as the producer goes and
  times until every case was received and routed to `assigned` or `queued`, or
- with `--rate R`, offers R submissions/s for `--seconds` and reports the latency from each send to
  the arrival of its case's `assigned`/`queued` event (p50/p95/p99).

`--profile DIR` records the services with py-spy during the measured part and prints their hottest
frames. Run: `.venv/bin/python -m tests.support.perf_probe --cases 5000 [--routers 2]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from schemas.topics import REFERRALS_SUBMITTED
from schemas.vocabulary import CATEGORIES
from tests.integration.router_harness import SYSTEM_USER, RouterHarness
from tests.support.network_builder import NetworkBuilder
from tests.support.topic_log import short_type

POLICY = (Path(__file__).resolve().parents[2] / "services" / "router" / "policy.yaml").read_text(encoding="utf-8")
RISKS = ("low", "medium", "medium", "high", "critical")
TERMINAL = frozenset({"assigned", "queued"})


def build_network(counties: int, townships: int, rooms: int, workers: int) -> tuple[NetworkBuilder, list[str]]:
    """1 city; `counties` hubs with 2 workers each; `townships` stations per county with `workers`
    workers each (every specialty, capacity large enough that nearly every case is assigned)."""
    net = NetworkBuilder()
    net.station("M-P", "city")
    net.system_user(SYSTEM_USER)
    all_rooms: list[str] = []
    for c in range(1, counties + 1):
        tree = net.subtree(f"P{c}", city="M-P", townships=townships, rooms_per_township=rooms)
        all_rooms += tree.all_rooms
        for j in (1, 2):
            net.worker(f"p{c}-c{j}", tree.county, list(CATEGORIES), certification="senior", capacity=100_000)
        for t, township in enumerate(tree.townships, start=1):
            for w in range(1, workers + 1):
                net.worker(f"p{c}-t{t}-{w}", township, list(CATEGORIES), capacity=100_000)
    return net, all_rooms


class ProbeHarness(RouterHarness):
    """The router bench with the services' log level chosen by the probe."""

    log_level = "INFO"
    settings: dict[str, str] = {}  # noqa: RUF012  (CASELINK_* overrides for the services)

    def _service_env(self, **extra: str) -> dict[str, str]:
        return super()._service_env(CASELINK_LOG_LEVEL=self.log_level, **self.settings, **extra)

    network_load_seconds = 600.0  # a Jiujiang-scale file on a busy machine


class Watch:
    """Arrival time of each case's `received` and first terminal event, as the probe sees them."""

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self.terminal: dict[str, float] = {}
        self.kinds: Counter[str] = Counter()

    def __call__(self, event: dict[str, Any]) -> None:
        name = short_type(event)
        case_id = event["subject"]
        now = time.monotonic()
        if name == "received":
            self.received.setdefault(case_id, now)
        elif name in TERMINAL and case_id not in self.terminal:
            self.terminal[case_id] = now
            self.kinds[name] += 1


async def wait_until(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


def cpu_seconds(harness: RouterHarness) -> dict[str, float]:
    """User + system CPU each service process has used so far (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for name, service in harness.services.items():
        try:
            fields = Path(f"/proc/{service.proc.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        used[name] = (int(fields[11]) + int(fields[12])) / tick
    return used


def cpu_per_case(before: dict[str, float], after: dict[str, float], cases: int) -> str:
    """CPU milliseconds each service spent per case: comparable on a machine shared with others."""
    return ", ".join(f"{name} {1000 * (after[name] - before[name]) / cases:.2f} ms" for name in after if name in before)


def start_profilers(harness: RouterHarness, out: Path) -> list[tuple[str, Any, Path]]:
    import subprocess

    py_spy = Path(sys.executable).parent / "py-spy"
    running = []
    for name, service in harness.services.items():
        path = out / f"{name}.txt"
        proc = subprocess.Popen(
            [str(py_spy), "record", "--pid", str(service.proc.pid), "--rate", "100", "--format", "raw",
             "--nonblocking", "-o", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        running.append((name, proc, path))
    return running


def stop_profilers(running: list[tuple[str, Any, Path]], top: int = 18) -> None:
    for _, proc, _ in running:
        proc.send_signal(signal.SIGINT)
    for name, proc, path in running:
        proc.wait(timeout=30)
        print(f"\n--- py-spy {name}: {path}")
        print(summarize_profile(path, top=top))


def summarize_profile(path: Path, *, top: int) -> str:
    """Self and inclusive shares of the hottest frames in py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " " + f.split("/")[-1].rstrip(")") for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "(no samples)"
    lines = [f"{total} samples; self:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines.append("inclusive:")
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


async def burst(harness: RouterHarness, rooms: list[str], watch: Watch, n: int, profile: Path | None) -> None:
    messages = [
        harness.referral(rooms[(i * 7919) % len(rooms)], CATEGORIES[i % len(CATEGORIES)], RISKS[i % len(RISKS)])
        for i in range(n)
    ]
    payloads = [(json.dumps(m).encode(), m["room_id"].encode()) for m in messages]
    before_received, before_terminal = len(watch.received), len(watch.terminal)
    profilers = start_profilers(harness, profile) if profile else []
    cpu_before = cpu_seconds(harness)
    started = time.monotonic()
    sent = [await harness.producer.send(REFERRALS_SUBMITTED, value, key=key) for value, key in payloads]
    await asyncio.gather(*sent)
    produced = time.monotonic() - started
    await wait_until(lambda: len(watch.received) - before_received >= n, 600, "received events")
    received = time.monotonic() - started
    await wait_until(lambda: len(watch.terminal) - before_terminal >= n, 600, "assigned/queued events")
    routed = time.monotonic() - started
    cpu = cpu_per_case(cpu_before, cpu_seconds(harness), n)
    if profilers:
        stop_profilers(profilers)
    print(
        f"\nburst of {n}: produced in {produced:.2f}s; all received after {received:.2f}s "
        f"({n / received:.0f}/s); all assigned/queued after {routed:.2f}s ({n / routed:.0f} cases/s); "
        f"outcomes {dict(watch.kinds)}; CPU per case: {cpu}; load average {os.getloadavg()[0]:.1f}"
    )


async def offered_load(
    harness: RouterHarness, rooms: list[str], watch: Watch, rate: float, seconds: float, profile: Path | None
) -> None:
    total = int(rate * seconds)
    sent_at: dict[str, float] = {}
    profilers = start_profilers(harness, profile) if profile else []
    started = time.monotonic()
    for i in range(total):
        due = started + i / rate
        if (delay := due - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        m = harness.referral(rooms[(i * 7919) % len(rooms)], CATEGORIES[i % len(CATEGORIES)], RISKS[i % len(RISKS)])
        sent_at[m["submission_id"]] = time.monotonic()
        await harness.producer.send(REFERRALS_SUBMITTED, json.dumps(m).encode(), key=m["room_id"].encode())
    await harness.producer.flush()
    cases = await harness.cases_of(list(sent_at), within=120)
    await wait_until(lambda: all(c in watch.terminal for c in cases.values()), 120, "assigned/queued events")
    if profilers:
        stop_profilers(profilers)
    latencies = sorted(1000 * (watch.terminal[case] - sent_at[sub]) for sub, case in cases.items())
    q = statistics.quantiles(latencies, n=100)
    print(
        f"\noffered {rate:.0f}/s for {seconds:.0f}s ({total} cases): submission → assigned/queued "
        f"p50 {q[49]:.0f} ms, p95 {q[94]:.0f} ms, p99 {q[98]:.0f} ms, max {latencies[-1]:.0f} ms"
    )


def prepare_dirs(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The work directory and the profile directory (if profiling), created."""
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="caselink-probe-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    profile = Path(args.profile).resolve() if args.profile else None
    if profile:
        profile.mkdir(parents=True, exist_ok=True)
    return work_dir, profile


async def main(args: argparse.Namespace, work_dir: Path, profile: Path | None) -> None:
    network, rooms = build_network(args.counties, args.townships, args.rooms, args.workers)
    print(f"network: {len(rooms)} rooms, {len(network.users) - 1} workers; work dir {work_dir}")
    harness = ProbeHarness(work_dir, policy_yaml=POLICY, network=network)
    harness.log_level = args.log_level
    harness.settings = dict(item.split("=", 1) for item in args.set)
    routers = tuple(f"router-{i}" for i in range(1, args.routers + 1))
    watch = Watch()
    try:
        await harness.start(routers=routers)
        harness.events.listen(watch)
        print(f"up: { ({k: round(v, 1) for k, v in harness.timings.items()}) }")
        await burst(harness, rooms, watch, args.warmup, None)
        if args.rate:
            await offered_load(harness, rooms, watch, args.rate, args.seconds, profile)
        else:
            for _ in range(args.repeat):
                await burst(harness, rooms, watch, args.cases, profile)
        if errors := harness.database_errors():
            print(f"\nPostgreSQL logged {len(errors)} errors, e.g. {errors[:3]}")
        caught_up = time.monotonic()
        while behind := (
            await harness.sql(
                "SELECT count(*) AS n FROM intake.cases c JOIN shared.case_heads h USING (case_id) "
                "WHERE c.last_sequence <> h.last_sequence"
            )
        )[0]["n"]:
            if time.monotonic() - caught_up > 120:
                break
            await asyncio.sleep(0.2)
        print(f"read model: {behind} cases behind the case heads, {time.monotonic() - caught_up:.1f}s after routing")
        problems = await harness.load_discrepancies()
        print(f"load discrepancies: {len(problems)}; outbox left: {await harness.outbox_size()}")
    finally:
        await harness.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3000, help="submissions per burst")
    parser.add_argument("--repeat", type=int, default=1, help="bursts, one after the other")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0.0, help="offered load per second instead of a burst")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the offered load")
    parser.add_argument("--routers", type=int, default=1)
    parser.add_argument("--counties", type=int, default=13)
    parser.add_argument("--townships", type=int, default=15, help="per county")
    parser.add_argument("--rooms", type=int, default=13, help="village rooms per township")
    parser.add_argument("--workers", type=int, default=15, help="workers per township")
    parser.add_argument("--log-level", default="INFO", help="CASELINK_LOG_LEVEL of the services")
    parser.add_argument("--profile", help="record the services with py-spy into this directory")
    parser.add_argument("--set", action="append", default=[], help="CASELINK_X=value for the services")
    parser.add_argument("--work-dir")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    asyncio.run(main(arguments, *prepare_dirs(arguments)))
