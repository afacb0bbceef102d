"""`caselink bench`: start the stack, load Jiujiang, measure the baseline, the pipeline and HTTP intake.

Order of a run: infrastructure (embedded unless CASELINK_DATABASE_URL / CASELINK_KAFKA_BOOTSTRAP
are set), migrations, topics, network, token; the raw-broker baseline and the durable floor
(before any service runs); intake; then for each replica count, that many routers and notifiers
and a saturation phase (the first replica count also gets the fixed-rate phase first); HTTP
intake while the last replica set runs; the correctness check over every Kafka submission; the
table and the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

from services.shared.settings import Settings

SCALES = ("full", "small")
BASELINE_MINIMUM = 60_000


def _replicas(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 1,2; got {text!r}") from None
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"replica counts must be at least 1; got {text!r}")
    if len(set(counts)) < len(counts):
        # Phases, progress and ratios are named by their replica count.
        raise argparse.ArgumentTypeError(f"each replica count once; got {text!r}")
    return counts


def add_arguments(bench: argparse.ArgumentParser) -> None:
    """The flags of `caselink bench` (documented in BENCHMARKS.md)."""
    bench.add_argument("--cases", type=int, default=10_000, help="cases per saturation phase (default 10000)")
    bench.add_argument(
        "--baseline-messages", type=int, help="messages through the baseline (default: --cases, at least 60000)"
    )
    bench.add_argument(
        "--rate", type=float, default=500.0, help="offered cases/s of the fixed-rate phase (default 500)"
    )
    bench.add_argument("--rate-seconds", type=float, default=10.0, help="length of the fixed-rate phase (default 10)")
    bench.add_argument("--http-seconds", type=float, default=10.0, help="length of the HTTP phase (default 10)")
    bench.add_argument("--http-clients", type=int, default=32, help="concurrent HTTP clients (default 32)")
    bench.add_argument(
        "--intake-workers", type=int, default=1, help="intake processes behind the port (CASELINK_HTTP_WORKERS)"
    )
    bench.add_argument("--replicas", type=_replicas, default=[1], help="router+notifier replica counts, e.g. 1,2")
    bench.add_argument("--network-scale", choices=SCALES, default="full", help="Jiujiang (full) or a tiny one")
    bench.add_argument("--seed", type=int, default=7, help="seed of the network and the referrals (default 7)")
    bench.add_argument("--json", type=Path, default=Path("bench-results.json"), help="where to write the results")
    bench.add_argument("--data-dir", type=Path, default=Path(".caselink-bench"), help="embedded data and logs")
    bench.add_argument("--policy", type=Path, help="routing policy (default: the packaged one)")
    bench.add_argument("--webhooks", action="store_true", help="push by signed webhook to intake's /dev/inbox")
    bench.add_argument("--stall-seconds", type=float, default=60.0, help="give up when no case settles this long")
    bench.add_argument("--skip-baseline", action="store_true", help="no raw-broker baseline (no ratio)")
    bench.add_argument("--skip-floor", action="store_true", help="no durable inbox/outbox floor")
    bench.add_argument("--skip-fixed-rate", action="store_true", help="no fixed-rate latency phase")
    bench.add_argument("--skip-http", action="store_true", help="no HTTP intake phase")
    bench.add_argument("--profile", action="store_true", help="py-spy the first routers and notifiers")


def run_bench(settings: Settings, args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when every case settled correctly, 1 otherwise, 130 on Ctrl-C."""
    if args.baseline_messages is not None and args.baseline_messages < 1:
        raise SystemExit("--baseline-messages must be at least 1")
    for name in ("cases", "http_clients"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    if args.rate <= 0 or args.rate_seconds <= 0 or args.http_seconds <= 0:
        raise SystemExit("--rate, --rate-seconds and --http-seconds must be positive")

    def terminate(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    if "CASELINK_LOG_LEVEL" not in os.environ:
        # The table and the progress bar are the output; library chatter (migrations) would bury them.
        from services.shared.logging import configure_logging

        configure_logging(settings.model_copy(update={"log_level": "WARNING"}), service="bench")
    try:
        return uvloop.run(_bench(settings, args))
    except KeyboardInterrupt:
        print("caselink bench: interrupted; every process it started has been stopped", file=sys.stderr)
        return 130


async def _bench(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from services.bench.network import SYSTEM_USER, bench_network
    from services.bench.report import print_table, summarise, write_json
    from services.bench.stack import ServiceProcesses, client_settings
    from services.shared.embedded import free_port, start_infrastructure

    began = time.monotonic()
    data_dir: Path = args.data_dir.resolve()
    port = free_port()
    inbox = f"http://127.0.0.1:{port}/dev/inbox" if args.webhooks else None
    network = bench_network(args.network_scale, seed=args.seed, webhook_base_url=inbox)
    infra = await asyncio.to_thread(
        start_infrastructure, data_dir, database_url=settings.database_url, kafka_bootstrap=settings.kafka_bootstrap
    )
    services = ServiceProcesses(
        infra,
        settings,
        data_dir,
        policy=args.policy,
        webhooks=args.webhooks,
        intake_workers=args.intake_workers,
        port=port,
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=Console(stderr=True)) as progress:
            results = await _measure(client_settings(settings), args, services, network, SYSTEM_USER, progress)
    finally:
        await asyncio.to_thread(services.stop)
        await asyncio.to_thread(infra.stop)
    results["meta"]["duration_seconds"] = round(time.monotonic() - began, 1)
    summarise(results)
    print_table(results)
    write_json(results, args.json)
    print(f"results written to {args.json}")
    if not results["correctness"]["ok"]:
        print(
            "caselink bench: CORRECTNESS FAILED: "
            f"{results['correctness']['lost']} case(s) lost, see 'correctness' in {args.json}",
            file=sys.stderr,
        )
        return 1
    return 0


async def _measure(
    settings: Settings, args: argparse.Namespace, services: Any, network: Any, system_user: str, progress: Any
) -> dict[str, Any]:
    from services.bench.baseline import run_baseline
    from services.bench.cpu import CORES, cost_between
    from services.bench.http import run_http
    from services.bench.ledger import check_run
    from services.bench.pipeline import CaseDirectory, EventWatcher, drain, run_phase
    from services.bench.stack import prepare_database_and_topics
    from services.bench.stats import top_frames
    from services.bench.workload import make_submissions
    from services.shared.kafka import make_producer

    infra = services.infra
    started = datetime.now(UTC)
    step = progress.add_task("preparing database, topics and network", total=None)
    token = await prepare_database_and_topics(settings, infra, network, system_user)
    progress.update(step, total=1, completed=1)
    rooms = [s.id for s in network.stations if s.tier == "village"]
    phases = [("fixed_rate", int(args.rate * args.rate_seconds))] if not args.skip_fixed_rate else []
    phases += [(f"saturation-{n}", args.cases) for n in args.replicas]
    workloads = {
        name: make_submissions(rooms, count, seed=args.seed * 1000 + i, submitted_by=system_user)
        for i, (name, count) in enumerate(phases)
    }
    results: dict[str, Any] = {"meta": _meta(args, started, settings), "network": _network_counts(network)}
    # The first saturation phase's payloads, cycled: a short baseline measures start-up, not throughput.
    same = [(s.room_id.encode(), s.kafka_value()) for s in workloads[f"saturation-{args.replicas[0]}"]]
    count = args.baseline_messages or max(args.cases, BASELINE_MINIMUM)
    payloads = [same[i % len(same)] for i in range(count)]
    # Both before any service runs: nothing else shares the machine.
    for key, title, skip, database_url in (
        ("baseline", "baseline: raw aiokafka, 3 hops", args.skip_baseline, None),
        ("floor", "floor: inbox + outbox, 3 forwarders", args.skip_floor, infra.database_url),
    ):
        results[key] = None
        if skip:
            continue
        task = progress.add_task(title, total=len(payloads))
        baseline = await run_baseline(
            settings, infra.kafka_bootstrap, payloads, limit_seconds=300 + len(payloads) / 100,
            progress=functools.partial(_advance, progress, task),
            database_url=database_url, meter=services.cpu_seconds,
        )  # fmt: skip
        results[key] = baseline.to_dict()

    first = args.replicas[0]
    task = progress.add_task(f"starting intake, {first} router(s) and notifier(s)", total=None)
    await asyncio.gather(services.start_intake(), services.start_consumers(first))
    progress.update(task, total=1, completed=1)
    watcher = EventWatcher(settings, infra.kafka_bootstrap)
    await watcher.start()
    producer = make_producer(settings, infra.kafka_bootstrap, client_id="caselink-bench")
    await producer.start()
    directory = CaseDirectory(settings, infra.database_url)
    case_of: dict[str, str] = {}

    async def record_cases(ids: list[str]) -> dict[str, str]:
        found = await directory.case_of(ids)
        case_of.update(found)
        return found

    caselink: dict[str, Any] = {"fixed_rate": None, "saturation": []}
    profile: dict[str, Any] | None = None
    try:
        for index, replicas in enumerate(args.replicas):
            if index:
                await services.stop_consumers()
                task = progress.add_task(f"starting {replicas} router(s) and notifier(s)", total=None)
                await services.start_consumers(replicas)
                progress.update(task, total=1, completed=1)
            profiling = args.profile and index == 0 and services.start_profilers(services.data_dir / "profile")
            names = ["fixed_rate"] if index == 0 and not args.skip_fixed_rate else []
            for name in [*names, f"saturation-{replicas}"]:
                submissions = workloads[name]
                task = progress.add_task(f"{name} ×{replicas}: settled", total=len(submissions))
                phase = await run_phase(
                    name.split("-")[0],
                    replicas=replicas,
                    producer=producer,
                    watcher=watcher,
                    submissions=submissions,
                    rate=args.rate if name == "fixed_rate" else None,
                    stall_seconds=args.stall_seconds,
                    case_of=record_cases,
                    progress=_phase_progress(progress, task, name, replicas),
                    alive=services.check_alive,
                    cpu=services.cpu_seconds,
                )
                if name == "fixed_rate":
                    caselink["fixed_rate"] = phase.to_dict()
                else:
                    caselink["saturation"].append(phase.to_dict())
            if profiling:
                services.stop_profilers()
                profile = {
                    path.stem: top_frames(path.read_text(errors="replace"))
                    for path in sorted((services.data_dir / "profile").glob("*.txt"))
                }
        results["caselink"] = caselink
        results["http"] = None
        if not args.skip_http:
            # The saturation phases settle on the events; what the services still have to publish
            # would share the machine with the HTTP requests measured.
            task = progress.add_task("waiting for the services' backlog to drain", total=None)
            drained = await drain(directory, limit_seconds=args.stall_seconds)
            progress.update(task, total=1, completed=1)
            task = progress.add_task(f"HTTP intake, {args.http_clients} clients (s)", total=args.http_seconds)
            cpu_before = services.cpu_seconds()
            http = await run_http(
                services.http, token, workloads[phases[-1][0]], seconds=args.http_seconds, clients=args.http_clients,
                progress=lambda s: progress.update(task, completed=min(s, args.http_seconds)),
            )  # fmt: skip
            progress.update(task, completed=args.http_seconds)
            # Everything the stack spent meanwhile, per answered request: intake's HTTP work and
            # what the router and notifier did with the cases those requests created.
            cost = cost_between(cpu_before, services.cpu_seconds(), cases=http.requests, seconds=http.seconds)
            results["http"] = http.to_dict() | {
                "backlog_drained_after_s": drained,
                "cpu": cost.to_dict(CORES) if cost else None,
            }
        submitted = [s.submission_id for name, _ in phases for s in workloads[name]]
        results["correctness"] = check_run(submitted, case_of, watcher.ledger, watcher.rejected).to_dict()
        results["profile"] = profile
        return results
    finally:
        await producer.stop()
        await watcher.stop()
        await directory.close()


def _advance(progress: Any, task: Any, completed: int) -> None:
    progress.update(task, completed=completed)


def _phase_progress(progress: Any, task: Any, name: str, replicas: int) -> Callable[[int, int], None]:
    def update(published: int, settled: int) -> None:
        progress.update(task, completed=settled, description=f"{name} ×{replicas}: published {published:,}, settled")

    return update


def _network_counts(network: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for station in network.stations:
        counts[f"{station.tier}_stations"] = counts.get(f"{station.tier}_stations", 0) + 1
    for user in network.users:
        counts[f"{user.role}s"] = counts.get(f"{user.role}s", 0) + 1
    return counts


def _meta(args: argparse.Namespace, started: datetime, settings: Settings) -> dict[str, Any]:
    return {
        "started_at": started.isoformat(),
        "commit": _git_commit(),
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "load_average": list(os.getloadavg()),
        "infrastructure": {
            "database": "external" if settings.database_url else "embedded PostgreSQL",
            "kafka": "external" if settings.kafka_bootstrap else "embedded Tansu",
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "handler"},
    }


def _git_commit() -> str | None:
    """The commit of the code under test (`+dirty` with uncommitted changes), if it is a git checkout."""
    repo = Path(__file__).resolve().parents[2]
    git = ["git", "-C", str(repo)]
    try:
        done = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
