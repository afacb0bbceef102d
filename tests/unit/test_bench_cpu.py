"""The bench's CPU accounting: parts of the stack, cost per case, and the ceiling it implies."""

from __future__ import annotations

import subprocess
import sys
import time

from services.bench.cpu import cost_between, cpu_seconds, part_of


def test_replicas_count_as_their_service_and_servers_as_themselves() -> None:
    assert part_of("router-2") == "router"
    assert part_of("notifier-12") == "notifier"
    assert part_of("postgres") == "postgres"
    assert part_of("intake") == "intake"


def test_cost_per_case_and_the_ceiling_of_the_cores() -> None:
    cost = cost_between({"intake": 1.0, "router": 2.0}, {"intake": 2.0, "router": 4.0}, cases=1000, seconds=2.0)
    assert cost is not None
    assert cost.ms_per_case == {"intake": 1.0, "router": 2.0}
    assert cost.total_ms_per_case == 3.0
    assert cost.cores_busy == 1.5
    assert cost.ceiling_per_s(2) == 666.7
    assert cost_between({}, {"intake": 1.0}, cases=0, seconds=1.0) is None


def test_a_part_counts_the_cpu_of_its_descendants_too() -> None:
    # The child only waits; its child (the part's grandchild) burns the CPU, then is reaped.
    burn = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'sum(range(30_000_000))'])"
    child = subprocess.Popen([sys.executable, "-c", burn + "; import time; time.sleep(10)"])
    try:
        used = 0.0
        deadline = time.monotonic() + 10
        while used < 0.3 and time.monotonic() < deadline:
            time.sleep(0.1)
            used = cpu_seconds({"part": [child.pid]})["part"]
        assert used >= 0.3, f"only {used:.2f} s counted"
    finally:
        child.kill()
        child.wait()
