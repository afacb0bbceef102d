"""The bench's arithmetic: percentiles, throughput, ratios, targets and profile summaries."""

from __future__ import annotations

import pytest

from services.bench.stats import (
    MIN_STEADY_SECONDS,
    LatencySummary,
    check_targets,
    percentile,
    ratio,
    throughput,
    top_frames,
)


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 100.0


def test_percentile_of_one_value_is_that_value_and_of_none_is_none() -> None:
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_percentile_outside_0_to_100_is_refused() -> None:
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], 101)


def test_latency_summary_reports_milliseconds_from_seconds() -> None:
    summary = LatencySummary.of_seconds([0.010, 0.020, 0.030])
    assert summary.count == 3
    assert summary.p50_ms == 20.0
    assert summary.max_ms == 30.0
    assert summary.mean_ms == 20.0


def test_latency_summary_of_nothing_has_no_percentiles() -> None:
    summary = LatencySummary.of_seconds([])
    assert summary.count == 0
    assert summary.p99_ms is None and summary.mean_ms is None


def test_throughput_counts_from_the_first_start_to_the_last_finish() -> None:
    result = throughput(100.0, [101.0, 102.0, 104.0, 102.5])
    assert result.items == 4
    assert result.seconds == 4.0
    assert result.per_s == 1.0
    assert result.steady_per_s is None  # too few finishes for a steady window


def test_steady_throughput_ignores_the_ramp_up_and_the_tail() -> None:
    # 100 items: a slow first 10 (1 s each), then 1 per 0.02 s, then a slow tail.
    finishes = [float(i) for i in range(1, 11)]
    finishes += [10 + 0.02 * i for i in range(1, 81)]
    finishes += [12 + float(i) for i in range(1, 11)]
    result = throughput(0.0, finishes)
    assert result.per_s == pytest.approx(100 / 22, abs=0.05)
    assert result.steady_per_s == pytest.approx(50, rel=0.05)


def test_a_middle_shorter_than_a_second_is_not_read_as_a_steady_rate() -> None:
    # 100 cases that settled in one batch within 7 ms, 0.6 s after they were published.
    finishes = [0.615 + 0.00007 * i for i in range(100)]
    result = throughput(0.0, finishes)
    assert result.steady_per_s is None
    assert result.per_s == pytest.approx(100 / 0.622, rel=0.01)
    # The same batch over a little more than the minimum is a rate again.
    spread = [0.615 + (MIN_STEADY_SECONDS * 1.3 / 99) * i for i in range(100)]
    assert throughput(0.0, spread).steady_per_s is not None


def test_throughput_of_nothing_finished_is_empty() -> None:
    result = throughput(0.0, [])
    assert (result.items, result.per_s, result.steady_per_s) == (0, None, None)


def test_ratio_is_none_without_a_denominator() -> None:
    assert ratio(30.0, 120.0) == 0.25
    assert ratio(30.0, 0.0) is None
    assert ratio(None, 10.0) is None
    assert ratio(10.0, None) is None


def test_targets_are_met_or_not_and_unmeasured_ones_say_so() -> None:
    checks = check_targets(cases_per_s=3200.0, p99_ms_at_rate=250.0, offered_rate=400.0, http_per_s=None)
    by_unit = {c.unit: c for c in checks}
    assert by_unit["cases/s"].met is True
    assert by_unit["ms"].met is None  # offered well below 500/s: the p99 target does not apply
    assert by_unit["req/s"].met is None


def test_p99_target_applies_at_500_per_second_offered() -> None:
    checks = check_targets(cases_per_s=10.0, p99_ms_at_rate=250.0, offered_rate=492.0, http_per_s=1600.0)
    assert [c.met for c in checks] == [False, False, True]


def test_top_frames_sum_self_and_total_samples_without_line_numbers() -> None:
    collapsed = "\n".join(
        [
            "main (app.py:1);handle (h.py:10);json_loads (j.py:5) 30",
            "main (app.py:1);handle (h.py:12);db_execute (db.py:7) 60",
            "main (app.py:1);idle (loop.py:3) 10",
            "garbage line",
        ]
    )
    frames = top_frames(collapsed, limit=3)
    assert frames["self"][0] == {"frame": "db_execute (db.py)", "samples": 60, "percent": 60.0}
    total = {row["frame"]: row["percent"] for row in frames["total"]}
    assert total["main (app.py)"] == 100.0
    assert total["handle (h.py)"] == 90.0


def test_top_frames_of_an_empty_profile_are_empty() -> None:
    assert top_frames("") == {"self": [], "total": []}
