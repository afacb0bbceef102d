"""A router test bench: embedded PostgreSQL and Tansu run inside the test process, intake and any
number of router replicas run as subprocesses the test can start, SIGTERM or SIGKILL at will.

Submissions go in on `caselink.referrals.submitted`, commands on `caselink.case.commands`; the
bench watches `caselink.case.events` and `caselink.case.command-results` from the beginning and
reads the router's tables directly for invariants. Every wait fails with the services' log tails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer

from schemas.commands import CaseCommand, CommandAction
from schemas.topics import CASE_COMMANDS, REFERRALS_SUBMITTED
from services.shared.db import asyncpg_dsn
from services.shared.embedded import TANSU_ENV, EmbeddedInfrastructure, die_with_parent, free_port, start_infrastructure
from services.shared.kafka import create_topics
from services.shared.migrate import upgrade_async
from services.shared.settings import Settings
from tests.support.network_builder import NetworkBuilder
from tests.support.topic_log import CaseEvents, CommandResults

REPO_ROOT = Path(__file__).resolve().parents[2]
SYSTEM_USER = "sys-test"
# How often each router replica runs its deadline sweep and queue drain (CASELINK_ROUTER_SWEEP_INTERVAL).
SWEEP_INTERVAL = 0.2
# Seconds a passed deadline waits for actions sent in time (CASELINK_ROUTER_DEADLINE_GRACE): the
# scenarios' offer windows are seconds long, not the hours of a real policy.
DEADLINE_GRACE = 0.5
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

# Worker load must equal the weight of the cases the worker holds, and never exceed capacity.
LOAD_DISCREPANCIES_SQL = """
WITH held AS (
    SELECT assignee_id AS worker_id, sum(weight) AS held
    FROM router.cases
    WHERE assignee_id IS NOT NULL AND status IN ('offered', 'accepted', 'in_progress')
    GROUP BY assignee_id
)
SELECT coalesce(wl.worker_id, h.worker_id) AS worker_id,
       coalesce(wl.load, 0) AS load, coalesce(h.held, 0) AS held, u.capacity
FROM router.worker_load wl
FULL OUTER JOIN held h ON h.worker_id = wl.worker_id
LEFT JOIN shared.users u ON u.id = coalesce(wl.worker_id, h.worker_id)
WHERE coalesce(wl.load, 0) <> coalesce(h.held, 0) OR coalesce(wl.load, 0) > coalesce(u.capacity, 0)
ORDER BY 1
"""


@dataclass
class ServiceProcess:
    """One service subprocess and the file its output goes to."""

    name: str
    proc: asyncio.subprocess.Process
    log_path: Path
    expected_exit: bool = False


def _open_log(path: Path, banner: str) -> IO[bytes]:
    log = path.open("ab")
    log.write(f"\n===== {banner} at {time.strftime('%H:%M:%S')} =====\n".encode())
    log.flush()
    return log


def _tail(path: Path, lines: int = 25, width: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return "\n".join(line[:width] for line in text)


class RouterHarness:
    """Infrastructure in this process, services as killable subprocesses; see the module docstring."""

    network_load_seconds = 60.0  # how long `caselink network load` may take

    def __init__(self, work_dir: Path, *, policy_yaml: str, network: NetworkBuilder) -> None:
        self.work_dir = work_dir
        self.network = network
        self.policy_file = work_dir / "policy.yaml"
        self.policy_file.write_text(policy_yaml, encoding="utf-8")
        self.network_file = work_dir / "network.yaml"
        self.services: dict[str, ServiceProcess] = {}
        self.http = ""
        self.timings: dict[str, float] = {}
        self._infra: EmbeddedInfrastructure | None = None
        self._pool: asyncpg.Pool | None = None
        self._producer: AIOKafkaProducer | None = None
        self._events: CaseEvents | None = None
        self._results: CommandResults | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self, *, routers: tuple[str, ...] = ()) -> None:
        """Infrastructure, schema, topics, network and observers; then intake and these routers at once."""
        started = time.monotonic()
        # Started from this (the main) thread on purpose: PR_SET_PDEATHSIG fires when the forking
        # thread exits, so servers forked from a worker thread could die with that thread.
        self._infra = start_infrastructure(self.work_dir / "infra")
        await upgrade_async(self.database_url)
        await create_topics(Settings(kafka_bootstrap=self.kafka_bootstrap), self.kafka_bootstrap)
        self._pool = await asyncpg.create_pool(asyncpg_dsn(self.database_url), min_size=1, max_size=4)
        await self.load_network()
        self._events = CaseEvents(self.kafka_bootstrap, diagnostics=self.diagnostics)
        self._results = CommandResults(self.kafka_bootstrap, diagnostics=self.diagnostics)
        await self._events.start()
        await self._results.start()
        self._producer = AIOKafkaProducer(bootstrap_servers=self.kafka_bootstrap, enable_idempotence=False)
        await self._producer.start()
        # Each service spends seconds joining its consumer groups; join them side by side.
        await asyncio.gather(self.start_intake(), *(self.start_router(name) for name in routers))
        self.timings["harness_start"] = time.monotonic() - started

    async def close(self) -> None:
        """Stop the services (SIGTERM, then SIGKILL), the observers and the infrastructure."""
        await asyncio.gather(
            *(self._stop(name, signal.SIGTERM, grace=15.0, must_exit_cleanly=False) for name in self.services)
        )
        for closer in (self._events, self._results, self._producer):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer.stop()
        if self._pool is not None:
            await self._pool.close()
        if self._infra is not None:
            self._infra.stop()

    @property
    def database_url(self) -> str:
        assert self._infra is not None, "harness not started"
        return self._infra.database_url

    @property
    def kafka_bootstrap(self) -> str:
        assert self._infra is not None, "harness not started"
        return self._infra.kafka_bootstrap

    @property
    def events(self) -> CaseEvents:
        assert self._events is not None, "harness not started"
        return self._events

    @property
    def results(self) -> CommandResults:
        assert self._results is not None, "harness not started"
        return self._results

    # ---- services --------------------------------------------------------------------------

    def _service_env(self, **extra: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("CASELINK_")}
        env.update(
            CASELINK_DATABASE_URL=self.database_url,
            CASELINK_KAFKA_BOOTSTRAP=self.kafka_bootstrap,
            **TANSU_ENV,
            CASELINK_POLICY=str(self.policy_file),
            CASELINK_LOG_FORMAT="json",
            CASELINK_ROUTER_SWEEP_INTERVAL=str(SWEEP_INTERVAL),
            CASELINK_ROUTER_DEADLINE_GRACE=str(DEADLINE_GRACE),
            **extra,
        )
        return env

    async def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> ServiceProcess:
        if (running := self.services.get(name)) is not None and running.proc.returncode is None:
            raise AssertionError(f"{name} is already running")
        log_path = self.work_dir / f"{name}.log"
        log = _open_log(log_path, f"starting {name}")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.cli", *args,
                cwd=REPO_ROOT, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT,
                preexec_fn=die_with_parent, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        service = ServiceProcess(name, proc, log_path)
        self.services[name] = service
        return service

    async def _wait_ready(self, service: ServiceProcess, is_ready: Callable[[], Awaitable[bool]]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not await is_ready():
            if service.proc.returncode is not None:
                raise AssertionError(
                    f"{service.name} exited with {service.proc.returncode} while starting:\n{_tail(service.log_path)}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{service.name} not ready in {READY_TIMEOUT:.0f}s:\n{_tail(service.log_path)}")
            await asyncio.sleep(0.1)

    async def start_intake(self) -> None:
        """Start `caselink intake` on a free port and wait until /readyz answers 200."""
        port = free_port()
        self.http = f"http://127.0.0.1:{port}"
        env = self._service_env(CASELINK_HTTP_HOST="127.0.0.1", CASELINK_HTTP_PORT=str(port))
        service = await self._spawn("intake", ["intake"], env)

        async def answers() -> bool:
            try:
                async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
                    return (await client.get(f"{self.http}/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await self._wait_ready(service, answers)

    async def start_router(self, name: str = "router-1") -> None:
        """Start one router replica and wait until it consumes (its ready file exists)."""
        await self.start_consumer(name, "router")

    async def start_notifier(self, name: str = "notifier-1", **env: str) -> None:
        """Start one notifier replica (extra CASELINK_* settings in `env`) and wait until it consumes."""
        await self.start_consumer(name, "notifier", **env)

    async def start_consumer(self, name: str, command: str, **env: str) -> None:
        """Start a consumer-only service (`router`, `notifier`) and wait until its ready file exists."""
        started = time.monotonic()
        ready_file = self.work_dir / f"{name}.ready"
        ready_file.unlink(missing_ok=True)
        service = await self._spawn(name, [command, "--ready-file", str(ready_file)], self._service_env(**env))

        async def touched() -> bool:
            return ready_file.exists()

        await self._wait_ready(service, touched)
        self.timings[f"{name}_start"] = time.monotonic() - started

    async def ensure_router(self, name: str) -> None:
        """Start the replica unless it is already running."""
        service = self.services.get(name)
        if service is None or service.proc.returncode is not None:
            await self.start_router(name)

    async def kill_router(self, name: str) -> None:
        """SIGKILL a service (a router replica, say): no shutdown, in-flight transactions roll back."""
        await self._stop(name, signal.SIGKILL, grace=10.0, must_exit_cleanly=False)

    async def stop_router(self, name: str) -> None:
        """SIGTERM a service (a router replica, say) and wait until it has shut down gracefully."""
        await self._stop(name, signal.SIGTERM, grace=STOP_TIMEOUT, must_exit_cleanly=True)

    async def _stop(self, name: str, how: int, *, grace: float, must_exit_cleanly: bool) -> None:
        service = self.services[name]
        service.expected_exit = True
        if service.proc.returncode is None:
            service.proc.send_signal(how)
            try:
                await asyncio.wait_for(service.proc.wait(), grace)
            except TimeoutError:
                service.proc.kill()
                await service.proc.wait()
                if must_exit_cleanly:
                    raise AssertionError(
                        f"{name} ignored signal {how} for {grace:.0f}s:\n{_tail(service.log_path)}"
                    ) from None
        if must_exit_cleanly and service.proc.returncode not in (0, -signal.SIGTERM):
            raise AssertionError(f"{name} exited with {service.proc.returncode}:\n{_tail(service.log_path)}")

    def unexpected_exits(self) -> list[str]:
        """Services that died without the test asking them to."""
        return [
            f"{s.name} (exit {s.proc.returncode})"
            for s in self.services.values()
            if s.proc.returncode is not None and not s.expected_exit
        ]

    def database_errors(self) -> list[str]:
        """ERROR lines PostgreSQL logged so far (deadlocks, serialization failures, ...)."""
        log_path = self.work_dir / "infra" / "postgres.log"
        if not log_path.exists():
            return []
        return [line for line in log_path.read_text(errors="replace").splitlines() if " ERROR:" in line]

    def diagnostics(self) -> str:
        """Log tails of every service, for failure messages."""
        parts = [f"work dir: {self.work_dir}"]
        if dead := self.unexpected_exits():
            parts.append(f"services that died: {', '.join(dead)}")
        for service in self.services.values():
            parts.append(f"--- {service.name} (pid {service.proc.pid}) log tail ---\n{_tail(service.log_path)}")
        return "\n".join(parts)

    # ---- network ---------------------------------------------------------------------------

    async def load_network(self) -> None:
        """Write the network file from `self.network` and run `caselink network load` on it."""
        self.network_file.write_text(self.network.dump_yaml(), encoding="utf-8")
        env = {**os.environ, "CASELINK_DATABASE_URL": self.database_url}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "network", "load", str(self.network_file),
            cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(proc.communicate(), self.network_load_seconds)
        assert proc.returncode == 0, f"caselink network load failed:\n{output.decode(errors='replace')}"

    # ---- submissions and commands ----------------------------------------------------------

    @property
    def producer(self) -> AIOKafkaProducer:
        assert self._producer is not None, "harness not started"
        return self._producer

    @staticmethod
    def referral(room_id: str, category: str, risk_level: str, *, submission_id: str | None = None) -> dict[str, Any]:
        """A valid Kafka submission by the system user."""
        return {
            "submission_id": submission_id or str(uuid.uuid4()),
            "room_id": room_id,
            "submitted_by": SYSTEM_USER,
            "category": category,
            "risk_level": risk_level,
            "summary": f"测试转介 {category}/{risk_level}",
            "resident": {"name": "测试", "birth_year": 1950, "gender": "female", "address": f"{room_id} 测试地址"},
            "consent": {"given": True, "scope": "service", "recorded_by": SYSTEM_USER},
        }

    async def submit(self, room_id: str, category: str, risk_level: str) -> str:
        """Publish one submission; return its submission id."""
        message = self.referral(room_id, category, risk_level)
        await self.producer.send_and_wait(REFERRALS_SUBMITTED, json.dumps(message).encode(), key=room_id.encode())
        return str(message["submission_id"])

    async def submit_many(self, submissions: list[tuple[str, str, str]]) -> list[str]:
        """Publish (room, category, risk) submissions in one burst; return their submission ids."""
        messages = [self.referral(room, category, risk) for room, category, risk in submissions]
        sent = [
            await self.producer.send(REFERRALS_SUBMITTED, json.dumps(m).encode(), key=m["room_id"].encode())
            for m in messages
        ]
        await asyncio.gather(*sent)
        return [str(m["submission_id"]) for m in messages]

    async def cases_of(self, submission_ids: list[str], within: float = 30.0) -> dict[str, str]:
        """Case ids of Kafka submissions, once intake has recorded all of them."""
        deadline = time.monotonic() + within
        while True:
            rows = await self.sql(
                "SELECT key, case_id FROM intake.submission_keys WHERE source = 'kafka' AND key = ANY($1::text[])",
                submission_ids,
            )
            if len(rows) == len(set(submission_ids)):
                return {row["key"]: row["case_id"] for row in rows}
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"intake recorded {len(rows)} of {len(submission_ids)} submissions in {within:.0f}s\n"
                    + self.diagnostics()
                )
            await asyncio.sleep(0.1)

    async def submit_case(self, room_id: str, category: str, risk_level: str) -> str:
        """Publish one submission and return the id of the case intake made of it."""
        submission_id = await self.submit(room_id, category, risk_level)
        return (await self.cases_of([submission_id]))[submission_id]

    async def send_command(self, case_id: str, action: CommandAction, actor_id: str, **fields: Any) -> str:
        """Publish one command; return its command id."""
        command = CaseCommand(case_id=case_id, action=action, actor_id=actor_id, **fields)
        await self.producer.send(CASE_COMMANDS, command.model_dump_json().encode(), key=case_id.encode())
        return str(command.command_id)

    async def command(self, case_id: str, action: CommandAction, actor_id: str, **fields: Any) -> dict[str, Any]:
        """Publish one command and wait for the router's result."""
        command_id = await self.send_command(case_id, action, actor_id, **fields)
        await self.producer.flush()
        return await self.results.result_of(command_id)

    # ---- database --------------------------------------------------------------------------

    async def sql(self, query: str, *params: Any) -> list[asyncpg.Record]:
        assert self._pool is not None, "harness not started"
        return list(await self._pool.fetch(query, *params))

    async def load_discrepancies(self) -> list[asyncpg.Record]:
        """Workers whose load is not the weight of the cases they hold, or exceeds their capacity."""
        return await self.sql(LOAD_DISCREPANCIES_SQL)

    async def load_of(self, worker_id: str) -> int:
        rows = await self.sql("SELECT load FROM router.worker_load WHERE worker_id = $1", worker_id)
        return int(rows[0]["load"]) if rows else 0

    async def outbox_size(self) -> int:
        return int((await self.sql("SELECT count(*) AS n FROM shared.outbox"))[0]["n"])

    async def settle(self, *, quiet: float = 0.5, within: float = 30.0) -> None:
        """Wait until the outbox is empty, no case event has arrived for `quiet` seconds, and the
        event log has read everything published."""
        deadline = time.monotonic() + within
        while await self.outbox_size() or time.monotonic() - self.events.last_arrival < quiet:
            if time.monotonic() > deadline:
                raise AssertionError(f"events did not settle within {within:.0f}s\n{self.diagnostics()}")
            await asyncio.sleep(0.1)
        await self.events.read_to_end(within=max(1.0, deadline - time.monotonic()))

    async def last_sequence(self, case_id: str) -> int:
        rows = await self.sql("SELECT last_sequence FROM shared.case_heads WHERE case_id = $1", case_id)
        return int(rows[0]["last_sequence"]) if rows else 0


@contextlib.asynccontextmanager
async def running_harness(
    work_dir: Path, *, policy_yaml: str, network: NetworkBuilder, routers: tuple[str, ...] = ("router-1",)
) -> AsyncIterator[RouterHarness]:
    """A started harness with intake and these router replicas, closed (services, observers, infra) on exit."""
    harness = RouterHarness(work_dir, policy_yaml=policy_yaml, network=network)
    try:
        await harness.start(routers=routers)
        yield harness
    finally:
        await harness.close()
