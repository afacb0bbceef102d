"""The embedded servers and services never outlive `caselink dev`, even when it is killed outright."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from services.shared.embedded import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def _start_dev(data_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "dev", "--data-dir", str(data_dir), "--port", str(free_port())],
        stdout=(data_dir / "dev.log").open("wb"),
        stderr=subprocess.STDOUT,
    )


def _wait_until_up(proc: subprocess.Popen[bytes], data_dir: Path) -> dict[str, str]:
    deadline = time.monotonic() + 90
    while not (data_dir / "endpoints.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, (data_dir / "dev.log").read_text()[-3000:]
        time.sleep(0.2)
    return dict(json.loads((data_dir / "endpoints.json").read_text()))


def _alive(processes: list[psutil.Process]) -> list[str]:
    living = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                living.append(" ".join(process.cmdline()[:3]))
        except psutil.NoSuchProcess:
            pass
    return living


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_stopping_or_killing_caselink_dev_leaves_no_server_or_service_running(how: int, tmp_path: Path) -> None:
    proc = _start_dev(tmp_path)
    try:
        _wait_until_up(proc, tmp_path)
        children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "postgres" in names and "tansu" in names
        assert all(f"services.cli {s}" in names for s in ("intake", "router", "notifier"))

        proc.send_signal(how)
        proc.wait(30)
        deadline = time.monotonic() + 20
        while _alive(children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _alive(children) == []
    finally:
        if proc.poll() is None:
            proc.kill()
