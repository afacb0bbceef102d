"""The bench's summary: ratios, targets, and the rows of the human table."""

from __future__ import annotations

from typing import Any

from services.bench.report import summarise, sustained, table_rows


def results(**overrides: Any) -> dict[str, Any]:
    latency = lat = {"p50_ms": 40.0, "p95_ms": 90.0, "p99_ms": 150.0}
    # fmt: off
    base: dict[str, Any] = {
        "baseline": {"messages": 1000, "hops": 3, "per_s": 10000.0, "steady_per_s": 12000.0, "latency_ms": latency},
        "caselink": {
            "fixed_rate": {"replicas": 1, "cases": 5000, "offered_per_s": 500.1, "cases_per_s": 499.0,
                           "latency_ms": latency},
            "saturation": [
                {"replicas": 1, "cases": 1000, "cases_per_s": 1000.0, "steady_cases_per_s": 1100.0, "latency_ms": lat},
                {"replicas": 2, "cases": 1000, "cases_per_s": 1600.0, "steady_cases_per_s": 1700.0, "latency_ms": lat},
            ],
        },
        "http": {"clients": 32, "seconds": 10.0, "requests": 12000, "requests_per_s": 1200.0,
                 "statuses": {"202": 12000}},
        "correctness": {
            "ok": True, "submitted": 7000, "settled": 7000, "assigned": 6900, "queued": 100, "lost": 0,
            "duplicate_decisions": 0, "sequence_problems": 0, "rejected": 0, "notification_failed": 0,
        },
    }
    # fmt: on
    base.update(overrides)
    return base


def test_sustained_is_the_overall_rate_not_the_middle_one() -> None:
    assert sustained({"per_s": 5.0, "steady_per_s": 7.0}) == 5.0
    assert sustained({"per_s": 5.0, "steady_per_s": None}) == 5.0
    assert sustained(None) is None


def test_ratios_compare_each_replica_count_with_the_baseline_and_with_one_replica() -> None:
    summary = summarise(results())
    assert summary["ratios"]["caselink_vs_baseline"] == {"1": 0.1, "2": 0.16}
    assert summary["ratios"]["scale_out"] == {"2": 1.6}


def test_targets_use_the_best_replica_count_the_fixed_rate_p99_and_http() -> None:
    targets = {t["unit"]: t for t in summarise(results())["targets"]}
    assert targets["cases/s"]["measured"] == 1600.0 and targets["cases/s"]["met"] is False
    assert targets["ms"]["measured"] == 150.0 and targets["ms"]["met"] is True
    assert targets["req/s"]["met"] is False


def test_without_a_baseline_there_is_no_ratio() -> None:
    summary = summarise(results(baseline=None))
    assert summary["ratios"]["caselink_vs_baseline"] == {"1": None, "2": None}


def test_the_table_has_a_row_per_measurement_and_a_correctness_verdict() -> None:
    rows = table_rows(summarise(results()))
    names = [row[0] for row in rows]
    assert names[0].startswith("baseline")
    assert any(name.startswith("caselink saturation, ×2") for name in names)
    assert ("scale-out ×2 / ×1", "1.6", "sustained cases/s") in rows
    assert rows[-1][:2] == ("correctness", "ok")


def test_a_run_that_lost_cases_says_failed() -> None:
    broken = results()
    broken["correctness"] = {**broken["correctness"], "ok": False, "lost": 3}
    assert table_rows(summarise(broken))[-1][1] == "FAILED"


def test_the_http_row_says_whether_the_backlog_drained_before_it() -> None:
    def http_detail(**http: Any) -> str:
        run = results(http={**results()["http"], **http})
        return next(row[2] for row in table_rows(summarise(run)) if row[0].startswith("HTTP"))

    assert "after the backlog drained (4.5 s)" in http_detail(backlog_drained_after_s=4.5)
    assert "backlog still there" in http_detail(backlog_drained_after_s=None)
    assert "backlog" not in http_detail()


def test_a_phase_is_judged_by_its_overall_rate_and_its_middle_is_a_detail() -> None:
    row = next(row for row in table_rows(summarise(results())) if row[0].startswith("caselink saturation, ×1"))
    assert row[1] == "1,000 cases/s" and "middle (10th–90th percentile) 1,100 cases/s" in row[2]
    # 100 cases that settled in one batch: no middle rate, and the overall one does not pass.
    short = {"replicas": 1, "cases": 100, "cases_per_s": 160.8, "steady_cases_per_s": None, "latency_ms": {}}
    run = summarise(results(caselink={"fixed_rate": None, "saturation": [short]}))
    target = next(t for t in run["targets"] if t["unit"] == "cases/s")
    assert (target["measured"], target["met"]) == (160.8, False)
    row = next(row for row in table_rows(run) if row[0].startswith("caselink saturation"))
    assert row[1] == "161 cases/s" and "no middle rate" in row[2]


def test_a_phase_with_cpu_readings_gets_a_row_with_the_cost_per_case_and_its_ceiling() -> None:
    run = results()
    cpu = {"ms_per_case": {"intake": 1.0, "router": 1.5, "postgres": 0.5}, "total_ms_per_case": 3.0,
           "cores_busy": 1.9, "cores": 2, "ceiling_cases_per_s": 666.7}  # fmt: skip
    run["caselink"]["saturation"][0]["cpu"] = cpu
    rows = table_rows(summarise(run))
    [row] = [row for row in rows if "CPU per case" in row[0]]
    assert row[1] == "3.00 ms"
    assert row[2].startswith("router 1.50 · intake 1.00 · postgres 0.50 ms; 1.9 of 2 cores busy")
    assert "at most 667 cases/s" in row[2]


def test_the_durable_floor_gets_its_rows_and_a_ratio_of_its_own() -> None:
    cpu = {"ms_per_case": {"forwarders": 0.15, "postgres": 0.07}, "total_ms_per_case": 0.22,
           "cores_busy": 1.7, "cores": 2, "ceiling_cases_per_s": 9090.9}  # fmt: skip
    floor = {"messages": 1000, "hops": 4, "forwarders": 3, "durable": True, "per_s": 5000.0,
             "steady_per_s": 6000.0, "latency_ms": {"p99_ms": 900.0}, "cpu": cpu}  # fmt: skip
    summary = summarise(results(floor=floor))
    assert summary["ratios"]["caselink_vs_floor"] == {"1": 0.2, "2": 0.32}
    rows = table_rows(summary)
    [row] = [row for row in rows if row[0].startswith("floor")]
    assert row[0] == "floor: inbox + outbox in PostgreSQL, 3 forwarders" and row[1] == "5,000 msg/s"
    [cost] = [row for row in rows if row[0] == "  CPU per msg, floor"]
    assert cost[1] == "0.22 ms" and "at most 9,091 msgs/s" in cost[2]
    assert ("ratio caselink (×1) / floor", "0.2", "sustained cases/s ÷ sustained msg/s") in rows


def test_without_a_floor_its_ratio_is_none_and_it_has_no_row() -> None:
    summary = summarise(results())
    assert summary["ratios"]["caselink_vs_floor"] == {"1": None, "2": None}
    assert not [row for row in table_rows(summary) if row[0].startswith("floor")]


def test_the_http_phase_with_cpu_readings_gets_a_row_with_the_cost_per_request() -> None:
    cpu = {"ms_per_case": {"intake": 2.0, "postgres": 1.0}, "total_ms_per_case": 3.0,
           "cores_busy": 1.8, "cores": 2, "ceiling_cases_per_s": 666.7}  # fmt: skip
    rows = table_rows(summarise(results(http={**results()["http"], "cpu": cpu})))
    names = [row[0] for row in rows]
    [row] = [row for row in rows if row[0] == "  CPU per request, HTTP"]
    assert names.index(row[0]) == names.index("HTTP intake, 32 clients") + 1
    assert row[1] == "3.00 ms" and "at most 667 requests/s" in row[2]
    assert not any("CPU per request" in row[0] for row in table_rows(summarise(results())))
