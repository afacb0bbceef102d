"""Fault injection for the reliability tests: freeze and thaw a process, stop and restart the
embedded PostgreSQL on its own port and data directory, kill a process group, and read a
consumer group's committed offsets.

The embedded Tansu keeps its log in memory, so a broker outage is a freeze (SIGSTOP … SIGCONT):
its sockets stay open and every request simply goes unanswered, like a broker behind a dead
network link. A restarted Tansu would start empty, which is data loss, not an outage.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.shared.embedded import PG_SYSTEM_USER, EmbeddedProcess, die_with_parent
from services.shared.kafka import log_ends


def process_state(pid: int) -> str:
    """The kernel's one-letter state of a process (`T` when stopped), or `?` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            # The command name is in parentheses and may contain spaces: the state follows the last ')'.
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def freeze(pid: int) -> None:
    """SIGSTOP a process and wait until the kernel reports it stopped."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while process_state(pid) != "T":
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not stop (state {process_state(pid)})")
        time.sleep(0.01)


def thaw(pid: int) -> None:
    """SIGCONT a frozen process (harmless if it is running or gone)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The process is stopped inside the block and always continued after it, even on failure."""
    freeze(pid)
    try:
        yield
    finally:
        thaw(pid)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _postgres_port(server: EmbeddedProcess) -> int:
    argv = [str(arg) for arg in server.proc.args]  # type: ignore[union-attr]
    return int(argv[argv.index("-p") + 1])


def stop_postgres(server: EmbeddedProcess, *, timeout: float = 30.0) -> None:
    """Shut the embedded PostgreSQL down (fast mode: open sessions are disconnected, the data stays)."""
    assert server.name == "postgres", server.name
    server.proc.send_signal(signal.SIGINT)
    server.proc.wait(timeout)
    port = _postgres_port(server)
    deadline = time.monotonic() + timeout
    while _port_open(port):
        if time.monotonic() > deadline:
            raise AssertionError(f"postgres still listens on {port} after shutting down")
        time.sleep(0.05)


def start_postgres_again(server: EmbeddedProcess, *, timeout: float = 60.0) -> None:
    """Start a stopped embedded PostgreSQL with its old command line (same port, same data) and
    wait until it accepts queries. Call from the main thread: the child dies with its forking thread."""
    assert server.proc.poll() is not None, "postgres is still running"
    user = PG_SYSTEM_USER if os.geteuid() == 0 else None
    log = server.log_path.open("ab") if server.log_path else subprocess.DEVNULL
    try:
        server.proc = subprocess.Popen(
            server.proc.args, user=user, preexec_fn=die_with_parent, start_new_session=True,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    finally:
        if log is not subprocess.DEVNULL:
            log.close()  # type: ignore[union-attr]
    argv = [str(arg) for arg in server.proc.args]  # type: ignore[union-attr]
    psql = [argv[0].rsplit("/", 1)[0] + "/psql", "-h", "127.0.0.1", "-p", argv[argv.index("-p") + 1],
            "-U", "postgres", "-d", "postgres", "-tAc", "select 1"]  # fmt: skip
    deadline = time.monotonic() + timeout
    while subprocess.run(psql, capture_output=True).returncode != 0:
        if server.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"postgres did not come back (exit {server.proc.poll()}); see {server.log_path}")
        time.sleep(0.1)


async def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The offsets `group` has committed on `topic`'s partitions (partitions without one are left out).

    Read through a consumer that names the group but never joins it (Tansu's answer to the admin
    client's OffsetFetch version does not decode in aiokafka; the consumer's does)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        found = {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()
    return {p: offset for p, offset in found.items() if offset is not None and offset >= 0}


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The end (next) offset of each of `topic`'s partitions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        return {tp.partition: offset for tp, offset in (await log_ends(consumer, partitions)).items()}
    finally:
        await consumer.stop()
