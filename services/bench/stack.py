"""The system under test: infrastructure (embedded unless configured), the bench network, and the
three services as child processes, N replicas of the router and notifier at a time.

Infrastructure comes from `services.shared.embedded.start_infrastructure`, as for `caselink dev`.
Every child runs with PR_SET_PDEATHSIG (`die_with_parent`) and is stopped by `stop()`, so neither
Ctrl-C nor a crash of the bench leaves a process behind.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from services.bench.cpu import cpu_seconds, part_of
from services.shared.embedded import (
    TANSU_SETTINGS,
    EmbeddedInfrastructure,
    add_tansu_env,
    die_with_parent,
    free_port,
)
from services.shared.network import NetworkFile
from services.shared.settings import Settings

READY_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
CONSUMER_SERVICES = ("router", "notifier")


async def prepare_database_and_topics(
    settings: Settings, infra: EmbeddedInfrastructure, network: NetworkFile, system_user: str
) -> str:
    """Migrate, create the topics, load the network; return a bearer token of the bench's system user."""
    from services.shared.db import create_engine, session_factory, transaction
    from services.shared.directory import create_token, load_network
    from services.shared.kafka import create_topics
    from services.shared.migrate import upgrade_async

    await upgrade_async(infra.database_url)
    await create_topics(settings, infra.kafka_bootstrap)
    engine = create_engine(settings, url=infra.database_url)
    try:
        async with transaction(session_factory(engine)) as session:
            await load_network(session, network)
            return await create_token(session, user_id=system_user)
    finally:
        await engine.dispose()


# On the embedded Tansu a fetch of an empty partition waits this long whatever arrives meanwhile,
# so each of a case's four hops may wait up to this; a shorter wait means more polls. On two cores
# the polls cost more than the waits: the bench's stack idle used 0.79 cores at 20 ms (Tansu 0.53),
# 0.28 at 100 and 0.15 at 500, and at 200 cases/s offered p99 was 1.6 s at 20 ms, 1.1 s at 100.
BENCH_FETCH_MAX_WAIT_MS = 100


def client_settings(settings: Settings) -> Settings:
    """The bench's own Kafka clients' settings: on the embedded broker, TANSU_SETTINGS with the
    bench's fetch wait (unless CASELINK_KAFKA_FETCH_MAX_WAIT_MS says otherwise)."""
    if settings.kafka_bootstrap:
        return settings
    chosen = "CASELINK_KAFKA_FETCH_MAX_WAIT_MS" in os.environ
    wait = settings.kafka_fetch_max_wait_ms if chosen else BENCH_FETCH_MAX_WAIT_MS
    return settings.model_copy(update={**TANSU_SETTINGS, "kafka_fetch_max_wait_ms": wait})


@dataclass
class ServiceProcesses:
    """The caselink services the bench started, by name (`intake`, `router-1`, `notifier-2`, …)."""

    infra: EmbeddedInfrastructure
    settings: Settings
    data_dir: Path
    policy: Path | None = None
    webhooks: bool = False
    intake_workers: int = 1
    port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    profilers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The services' environment: this infrastructure, the bench's HTTP port, JSON logs to files."""
        env = dict(os.environ)
        env.update(
            CASELINK_DATABASE_URL=self.infra.database_url,
            CASELINK_KAFKA_BOOTSTRAP=self.infra.kafka_bootstrap,
            CASELINK_HTTP_HOST="127.0.0.1",
            CASELINK_HTTP_PORT=str(self.port),
            CASELINK_HTTP_WORKERS=str(self.intake_workers),
            CASELINK_DEMO_INBOX="true" if self.webhooks else "false",
            CASELINK_LOG_FORMAT=os.environ.get("CASELINK_LOG_FORMAT", "json"),
        )
        if not self.settings.kafka_bootstrap:
            add_tansu_env(env, CASELINK_KAFKA_FETCH_MAX_WAIT_MS=str(BENCH_FETCH_MAX_WAIT_MS))
        if self.policy is not None:
            env["CASELINK_POLICY"] = str(self.policy.resolve())
        return env

    def _start(self, name: str, service: str) -> None:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        flags: list[str] = []
        if service != "intake":
            ready = self._ready_file(name)
            ready.unlink(missing_ok=True)
            flags = ["--ready-file", str(ready)]
        with (logs / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "services.cli", service, *flags],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
                start_new_session=True,
            )

    def _ready_file(self, name: str) -> Path:
        return self.data_dir / f"{name}.ready"

    async def start_intake(self) -> None:
        """Start the intake service and wait for /readyz."""
        self._start("intake", "intake")
        await self._wait(lambda: _http_ready(self.http), ["intake"])

    async def start_consumers(self, replicas: int) -> None:
        """Start `replicas` routers and notifiers (one consumer group each) and wait until all consume."""
        names = [f"{service}-{i}" for i in range(1, replicas + 1) for service in CONSUMER_SERVICES]
        for name in names:
            self._start(name, name.rsplit("-", 1)[0])
        await self._wait(lambda: all(self._ready_file(n).exists() for n in names), names)

    async def _wait(self, ready: Callable[[], bool], names: list[str]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            self.check_alive()
            if await asyncio.to_thread(ready):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{', '.join(names)} not ready within {READY_TIMEOUT:.0f}s; logs in {self.data_dir}/logs")

    def check_alive(self) -> None:
        """Fail naming the first service that exited."""
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the {name} service exited with {proc.returncode}; see {self.data_dir}/logs/{name}.log"
                )

    def start_profilers(self, out_dir: Path) -> bool:
        """Sample intake and every router and notifier with py-spy (raw collapsed stacks); False if
        py-spy is missing."""
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(py_spy).exists():
            return False
        out_dir.mkdir(parents=True, exist_ok=True)
        running = {n: p.pid for n, p in self.processes.items() if p.poll() is None}
        for name, pid in running.items():
            self.profilers[name] = subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "100", "--nonblocking",
                 "--subprocesses", "--output", str(out_dir / f"{name}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
            )  # fmt: skip
        return True

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each part: the embedded servers, the services (replicas
        together) and the bench process itself (without its children, which are the rest)."""
        roots: dict[str, list[int]] = {}
        named = [(p.name, p.proc) for p in self.infra.processes] + list(self.processes.items())
        for name, proc in named:
            roots.setdefault(part_of(name), []).append(proc.pid)
        used = cpu_seconds(roots)
        own = psutil.Process().cpu_times()
        used["bench"] = own.user + own.system
        return used

    def stop_profilers(self) -> None:
        """Stop the samplers; each writes its file on SIGINT."""
        _stop(self.profilers, signal.SIGINT)

    async def stop_consumers(self) -> None:
        """Stop every router and notifier (SIGTERM, then SIGKILL), keeping intake."""
        self.stop_profilers()
        consumers = {n: p for n, p in self.processes.items() if n != "intake"}
        await asyncio.to_thread(_stop, consumers, signal.SIGTERM)
        for name in consumers:
            del self.processes[name]

    def stop(self) -> None:
        """Stop everything this object started."""
        self.stop_profilers()
        _stop(self.processes, signal.SIGTERM)
        self.processes.clear()


def _stop(processes: dict[str, subprocess.Popen[bytes]], sig: int) -> None:
    for proc in processes.values():
        if proc.poll() is None:
            proc.send_signal(sig)
    for proc in processes.values():
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _http_ready(http: str) -> bool:
    try:
        with urllib.request.urlopen(f"{http}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False
