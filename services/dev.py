"""`caselink dev`: the whole system in one command, on embedded infrastructure unless
CASELINK_DATABASE_URL / CASELINK_KAFKA_BOOTSTRAP point elsewhere.

The embedded broker keeps its log in memory, so each run starts with a fresh embedded database
too: a database that remembered cases whose events the broker forgot would strand them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from services.shared.embedded import EmbeddedInfrastructure, add_tansu_env, die_with_parent, start_infrastructure
from services.shared.logging import get_logger
from services.shared.settings import Settings

if TYPE_CHECKING:
    from services.shared.network import NetworkFile

log = get_logger(__name__)
SERVICES = ("intake", "router", "notifier")
READY_TIMEOUT = 60.0


def _read_files(settings: Settings, args: argparse.Namespace) -> NetworkFile | None:
    """The --network file, and a check of the routing policy the router will load, before anything
    starts: a bad file exits with its problems, not with a service's traceback."""
    from services.cli import network_file_or_exit, policy_or_exit

    if (policy := args.policy or settings.policy) is not None:
        policy_or_exit(policy)
    return network_file_or_exit(args.network) if args.network is not None else None


async def _prepare(
    settings: Settings, infra: EmbeddedInfrastructure, network: NetworkFile | None, base_url: str
) -> dict[str, str]:
    """Migrate, create topics, load the network (the demo one unless given), and issue the demo tokens."""
    from services.shared.db import create_engine, session_factory, transaction
    from services.shared.demo import DEMO_USERS, demo_network
    from services.shared.directory import create_token, load_network
    from services.shared.kafka import create_topics
    from services.shared.migrate import upgrade_async

    network = network or demo_network(f"{base_url}/dev/inbox")
    await upgrade_async(infra.database_url)
    await create_topics(settings, infra.kafka_bootstrap)
    engine = create_engine(settings, url=infra.database_url)
    try:
        async with transaction(session_factory(engine)) as session:
            await load_network(session, network)
            known = {user.id for user in network.users}
            return {
                role: await create_token(session, user_id=user_id)
                for role, user_id in DEMO_USERS.items()
                if user_id in known
            }
    finally:
        await engine.dispose()


def _service_env(settings: Settings, infra: EmbeddedInfrastructure, args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CASELINK_DATABASE_URL=infra.database_url,
        CASELINK_KAFKA_BOOTSTRAP=infra.kafka_bootstrap,
        CASELINK_HTTP_HOST=args.host,
        CASELINK_HTTP_PORT=str(args.port),
        CASELINK_DEMO_INBOX="false" if args.network else "true",
        CASELINK_LOG_FORMAT=os.environ.get("CASELINK_LOG_FORMAT", "console"),
    )
    if not settings.kafka_bootstrap:
        add_tansu_env(env)
    if args.policy:
        env["CASELINK_POLICY"] = str(args.policy.resolve())
    return env


def _ready_file(data_dir: Path, name: str) -> Path:
    """Where a consumer service (`--ready-file`) says it is up."""
    return data_dir / f"{name}.ready"


def _start_services(env: dict[str, str], data_dir: Path) -> dict[str, subprocess.Popen[bytes]]:
    processes = {}
    for name in SERVICES:
        ready = _ready_file(data_dir, name)
        ready.unlink(missing_ok=True)
        # intake reports readiness over HTTP (/readyz); the consumers by touching a file.
        flags = [] if name == "intake" else ["--ready-file", str(ready)]
        processes[name] = subprocess.Popen(
            [sys.executable, "-m", "services.cli", name, *flags],
            env=env,
            preexec_fn=die_with_parent,
            start_new_session=True,
        )
    return processes


def _wait_ready(processes: dict[str, subprocess.Popen[bytes]], data_dir: Path, http: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        for name, proc in processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"the {name} service exited with {proc.returncode} while starting")
        consumers_up = all(_ready_file(data_dir, name).exists() for name in SERVICES if name != "intake")
        if consumers_up and _http_ready(http):
            return
        time.sleep(0.1)
    raise RuntimeError(f"services were not ready within {READY_TIMEOUT:.0f}s")


def _http_ready(http: str) -> bool:
    try:
        with urllib.request.urlopen(f"{http}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _banner(http: str, tokens: dict[str, str], endpoints_file: Path, started: float, *, demo_inbox: bool) -> str:
    lines = [
        "",
        f"caselink is up in {time.monotonic() - started:.1f}s",
        f"  dashboard/API  {http}/docs",
        f"  endpoints      {endpoints_file}",
    ]
    if demo_inbox:
        lines.append(f"  demo pushes    {http}/dev/inbox")
    if tokens:
        lines.append("  demo tokens:")
        lines += [f"    {role:<10} {token}" for role, token in tokens.items()]
    if worker := tokens.get("worker"):
        lines += [
            "",
            "  try:",
            f"    curl -s -X POST {http}/v1/referrals -H 'Authorization: Bearer {worker}' \\",
            "      -H 'Content-Type: application/json' -H 'Idempotency-Key: demo-1' \\",
            """      -d '{"room_id":"V-360402101001","category":"elderly_care","risk_level":"medium",""",
            """           "summary":"独居老人，近一周未出门","resident":{"name":"王秀英","birth_year":1941,""",
            """           "address":"十里社区3栋"},""",
            """           "consent":{"given":true,"scope":"service","recorded_by":"w-0031"}}'""",
        ]
    lines += ["", "Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def run_dev(settings: Settings, args: argparse.Namespace) -> int:
    """Start infrastructure and all services; block until Ctrl-C or a service dies."""
    started = time.monotonic()
    network = _read_files(settings, args)
    args.host = args.host or settings.http_host
    args.port = args.port or settings.http_port
    data_dir: Path = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    endpoints_file = data_dir / "endpoints.json"
    endpoints_file.unlink(missing_ok=True)
    http = f"http://{args.host}:{args.port}"
    stop = {"signal": False}

    def request_stop(*_: object) -> None:
        stop["signal"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    infra = start_infrastructure(data_dir, database_url=settings.database_url, kafka_bootstrap=settings.kafka_bootstrap)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        tokens = asyncio.run(_prepare(settings, infra, network, http))
        processes = _start_services(_service_env(settings, infra, args), data_dir)
        _wait_ready(processes, data_dir, http)
        endpoints = {"http": http, "kafka_bootstrap": infra.kafka_bootstrap, "database_url": infra.database_url}
        # Written whole, then renamed: whoever waits for the file never reads it half-written.
        partial = endpoints_file.with_suffix(".json.partial")
        partial.write_text(json.dumps(endpoints, indent=2) + "\n")
        partial.replace(endpoints_file)
        print(_banner(http, tokens, endpoints_file, started, demo_inbox=not args.network), flush=True)
        while not stop["signal"]:
            for name, proc in processes.items():
                if proc.poll() is not None:
                    log.error("dev.service_died", service=name, returncode=proc.returncode)
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        _stop_all(processes)
        infra.stop()
        endpoints_file.unlink(missing_ok=True)
        for name in SERVICES:
            _ready_file(data_dir, name).unlink(missing_ok=True)


def _stop_all(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in processes.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in processes.values():
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
