"""`caselink bench` end to end with tiny numbers: every section measured, ratios computed, no case lost
(with intake as two worker processes, CASELINK_HTTP_WORKERS=2, sharing the port and consumer groups)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_a_tiny_bench_measures_every_section_and_loses_no_case(tmp_path: Path) -> None:
    results_file = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k not in ("CASELINK_DATABASE_URL", "CASELINK_KAFKA_BOOTSTRAP")}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "bench", "--network-scale", "small", "--cases", "30",
         "--baseline-messages", "300", "--rate", "20", "--rate-seconds", "1", "--http-seconds", "1",
         "--http-clients", "2", "--intake-workers", "2", "--stall-seconds", "30", "--data-dir", str(tmp_path / "data"),
         "--json", str(results_file)],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "correctness" in done.stdout
    results = json.loads(results_file.read_text())

    assert results["network"]["village_stations"] == 24
    assert results["baseline"]["messages"] == 300 and results["baseline"]["per_s"] > 0
    floor = results["floor"]
    assert floor["messages"] == 300 and floor["durable"] and floor["forwarders"] == 3 and floor["per_s"] > 0
    assert floor["cpu"]["ms_per_case"]["forwarders"] > 0 and floor["cpu"]["ms_per_case"]["postgres"] > 0
    fixed = results["caselink"]["fixed_rate"]
    assert fixed["cases"] == 20 and fixed["latency_ms"]["p99_ms"] > 0
    (saturation,) = results["caselink"]["saturation"]
    assert saturation["replicas"] == 1 and saturation["settled"] == 30 and saturation["cases_per_s"] > 0
    assert set(saturation["stages_ms"]) == {"intake", "router", "notifier"}
    assert results["http"]["requests"] > 0 and results["http"]["statuses"].get("202") == results["http"]["accepted"]
    assert results["http"]["cpu"]["ms_per_case"]["intake"] > 0  # intake's HTTP work, per answered request
    assert results["ratios"]["caselink_vs_baseline"]["1"] > 0 and results["ratios"]["caselink_vs_floor"]["1"] > 0
    assert len(results["targets"]) == 3
    correctness = results["correctness"]
    assert correctness["ok"], correctness
    assert correctness["submitted"] == correctness["settled"] == 50
    assert correctness["lost"] == correctness["duplicate_decisions"] == 0
