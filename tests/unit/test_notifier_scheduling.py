"""When pushes go out and what follows a send: digest windows, quiet hours, backoff, fallbacks, digests."""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from services.notifier.domain import (
    ESCALATED,
    ChannelConfig,
    Job,
    NoisePolicy,
    Recipient,
    RetryPolicy,
    Step,
    after_send,
    digest_id_for,
    plan_jobs,
    push_for,
    sending_groups,
)
from services.notifier.messages import BEIJING

HOOK = ChannelConfig(channel="webhook", url="https://example.org/hooks/s-0007", secret="s3cret")
SMS = ChannelConfig(channel="sms", phone="13900000000")
NIGHT = NoisePolicy(digest_minutes=10, quiet_start=time(22, 0), quiet_end=time(7, 0))
DIGESTS = NoisePolicy(digest_minutes=10)
NO_JITTER = RetryPolicy(attempts=4, base_delay=0.5, max_delay=30.0, jitter=0.0)
RNG = random.Random(0)


def beijing(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2024, 6, day, hour, minute, second, tzinfo=BEIJING)


NOW = beijing(3, 10, 3, 27)


RESOLVE_BY = {
    "critical": "2024-06-06T06:00:00+00:00",
    "low": "2024-07-03T06:00:00+00:00",
    "medium": "2024-06-17T06:00:00+00:00",
    "high": "2024-06-10T06:00:00+00:00",
}


def _job(
    case_id: str = "c-1",
    *,
    risk: str = "medium",
    recipient: str = "s-0007",
    channels: tuple[ChannelConfig, ...] = (HOOK, SMS),
    noise: NoisePolicy = DIGESTS,
    now: datetime = NOW,
    **state: Any,
) -> Job:
    """An escalation job as the consumer plans it, then moved to `state` (channel_index, attempt...)."""
    data = {
        "case_id": case_id,
        "status": "escalated",
        "tier": "county",
        "station_id": "C-360402",
        "category": "elderly_care",
        "risk_level": risk,
        "resident_ref": "rr-9c1f0e7a",
        "from_tier": "township",
        "reason": "no_capacity",
        "resolve_by": RESOLVE_BY[risk],
    }
    [job] = plan_jobs(
        ESCALATED, data, f"event-{case_id}", [Recipient(recipient, "user", list(channels))], now=now, noise=noise
    )
    return replace(job, **state)


# --- NoisePolicy.schedule ------------------------------------------------------------------------


def test_critical_push_goes_out_now_and_alone_even_in_quiet_hours() -> None:
    midnight = beijing(3, 23, 30)
    for purpose in ("task", "escalation", "warning"):
        assert NIGHT.schedule(purpose, "critical", midnight) == (midnight, False)


@pytest.mark.parametrize("risk", ["low", "medium"])
def test_low_and_medium_escalations_wait_for_the_next_aligned_digest_window(risk: str) -> None:
    assert NoisePolicy(digest_minutes=10).schedule("escalation", risk, NOW) == (beijing(3, 10, 10), True)


def test_an_escalation_planned_exactly_on_a_window_boundary_waits_for_the_next_one() -> None:
    assert NoisePolicy(digest_minutes=10).schedule("escalation", "low", beijing(3, 10, 0)) == (beijing(3, 10, 10), True)


def test_digest_windows_are_aligned_whatever_time_zone_now_is_given_in() -> None:
    due, _ = NoisePolicy(digest_minutes=10).schedule("escalation", "medium", NOW.astimezone(UTC))
    assert due == beijing(3, 10, 10)


def test_high_risk_escalation_is_not_digested() -> None:
    assert NoisePolicy(digest_minutes=10).schedule("escalation", "high", NOW) == (NOW, False)


@pytest.mark.parametrize("purpose", ["task", "warning"])
def test_tasks_and_warnings_are_not_digested(purpose: str) -> None:
    assert NoisePolicy(digest_minutes=10).schedule(purpose, "medium", NOW) == (NOW, False)


def test_digest_window_zero_turns_digests_off() -> None:
    assert NoisePolicy(digest_minutes=0).schedule("escalation", "low", NOW) == (NOW, False)


def test_a_task_late_in_the_evening_waits_for_seven_next_morning_and_may_join_a_digest() -> None:
    assert NIGHT.schedule("task", "medium", beijing(3, 23, 30)) == (beijing(4, 7, 0), True)


def test_a_push_after_midnight_waits_for_seven_the_same_morning() -> None:
    assert NIGHT.schedule("task", "medium", beijing(4, 1, 0)) == (beijing(4, 7, 0), True)


def test_quiet_hours_are_read_on_the_beijing_clock_not_the_utc_date() -> None:
    # 23:30 Beijing on the 3rd is 15:30 UTC on the 3rd; 01:00 Beijing on the 4th is 17:00 UTC on the 3rd.
    assert NIGHT.quiet_until(beijing(3, 23, 30).astimezone(UTC)) == beijing(4, 7, 0)
    assert NIGHT.quiet_until(beijing(4, 1, 0).astimezone(UTC)) == beijing(4, 7, 0)


def test_quiet_hours_end_exactly_at_their_end_time() -> None:
    assert NIGHT.quiet_until(beijing(4, 7, 0)) is None
    assert NIGHT.schedule("task", "high", beijing(4, 7, 0)) == (beijing(4, 7, 0), False)
    assert NIGHT.quiet_until(beijing(4, 6, 59, 59)) == beijing(4, 7, 0)


def test_quiet_hours_start_exactly_at_their_start_time() -> None:
    assert NIGHT.quiet_until(beijing(3, 22, 0)) == beijing(4, 7, 0)
    assert NIGHT.quiet_until(beijing(3, 21, 59, 59)) is None


def test_a_high_risk_escalation_in_quiet_hours_waits_and_may_join_a_digest() -> None:
    assert NIGHT.schedule("escalation", "high", beijing(3, 23, 30)) == (beijing(4, 7, 0), True)


def test_a_digest_window_that_closes_inside_quiet_hours_waits_for_the_morning() -> None:
    assert NIGHT.schedule("escalation", "medium", beijing(3, 21, 55)) == (beijing(4, 7, 0), True)


def test_a_digest_window_that_closes_as_quiet_hours_end_goes_out_then() -> None:
    assert NIGHT.schedule("escalation", "low", beijing(4, 6, 55)) == (beijing(4, 7, 0), True)


def test_a_quiet_window_within_one_day_holds_pushes_until_its_end() -> None:
    lunch = NoisePolicy(digest_minutes=0, quiet_start=time(12, 0), quiet_end=time(13, 0))

    assert lunch.schedule("warning", "high", beijing(3, 12, 30)) == (beijing(3, 13, 0), True)
    assert lunch.schedule("warning", "high", beijing(3, 12, 0)) == (beijing(3, 13, 0), True)
    assert lunch.schedule("warning", "high", beijing(3, 13, 0)) == (beijing(3, 13, 0), False)
    assert lunch.schedule("warning", "high", beijing(3, 11, 59)) == (beijing(3, 11, 59), False)
    assert lunch.quiet_until(beijing(3, 23, 30)) is None


def test_without_quiet_hours_nothing_is_ever_quiet() -> None:
    assert NoisePolicy().quiet_until(beijing(3, 3, 0)) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"quiet_start": time(22, 0), "quiet_end": time(22, 0)},
        {"quiet_start": time(22, 0)},
        {"quiet_end": time(7, 0)},
        {"digest_minutes": -1},
    ],
)
def test_noise_policy_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        NoisePolicy(**kwargs)


def test_planned_jobs_carry_the_schedule_of_the_noise_policy() -> None:
    assert (_job(risk="medium").due_at, _job(risk="medium").batchable) == (beijing(3, 10, 10), True)
    assert (_job(risk="high").due_at, _job(risk="high").batchable) == (NOW, False)
    night = _job(risk="high", noise=NIGHT, now=beijing(3, 23, 30))
    assert (night.due_at, night.batchable) == (beijing(4, 7, 0), True)


# --- after_send ----------------------------------------------------------------------------------


def _after(job: Job, *, ok: bool = False, retryable: bool = True) -> Step:
    return after_send(job, ok=ok, retryable=retryable, retry=NO_JITTER, now=NOW, rng=RNG)


def test_a_successful_send_delivers_the_job() -> None:
    assert _after(_job(attempt=1, attempts=1), ok=True) == Step("delivered", 0, 1, NOW)


@pytest.mark.parametrize(("attempt", "wait"), [(1, 0.5), (2, 1.0), (3, 2.0)])
def test_a_retryable_failure_with_attempts_left_retries_the_same_channel_after_the_backoff(
    attempt: int, wait: float
) -> None:
    step = _after(_job(attempt=attempt, attempts=attempt))
    assert step == Step("retry", 0, attempt, NOW + timedelta(seconds=wait))


def test_a_permanent_failure_falls_back_to_the_next_channel_at_once() -> None:
    assert _after(_job(attempt=1, attempts=1), retryable=False) == Step("fallback", 1, 0, NOW)


def test_a_channel_that_used_all_its_attempts_hands_over_to_the_next_channel() -> None:
    assert _after(_job(attempt=4, attempts=4)) == Step("fallback", 1, 0, NOW)


def test_the_last_channel_keeps_its_retries() -> None:
    assert _after(_job(channel_index=1, attempt=1, attempts=5)) == Step("retry", 1, 1, NOW + timedelta(seconds=0.5))


def test_a_job_fails_when_its_last_channel_is_exhausted() -> None:
    assert _after(_job(channel_index=1, attempt=4, attempts=8)) == Step("failed", 1, 4, NOW)


def test_a_permanent_failure_on_the_last_channel_fails_the_job() -> None:
    assert _after(_job(channels=(HOOK,), attempt=1, attempts=1), retryable=False) == Step("failed", 0, 1, NOW)


def test_a_critical_case_falls_back_after_one_failed_send() -> None:
    assert _after(_job(risk="critical", attempt=1, attempts=1)) == Step("fallback", 1, 0, NOW)


def test_a_critical_case_on_its_last_channel_keeps_full_retries() -> None:
    job = _job(risk="critical", channel_index=1, attempt=3, attempts=4)
    assert _after(job) == Step("retry", 1, 3, NOW + timedelta(seconds=2.0))
    assert _after(replace(job, attempt=4, attempts=5)) == Step("failed", 1, 4, NOW)


def test_a_job_without_channels_fails_on_its_first_step() -> None:
    assert _after(_job(channels=()), retryable=False) == Step("failed", 0, 0, NOW)


# --- retry backoff -------------------------------------------------------------------------------


def test_backoff_doubles_from_the_base_delay_until_the_cap() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=3.0, jitter=0.0)
    rng = random.Random(1)

    assert [policy.delay(n, rng) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_jittered_backoff_stays_within_its_bounds_and_varies() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=30.0, jitter=0.2)
    rng = random.Random(42)

    for attempt in range(1, 8):
        nominal = min(30.0, 2.0 ** (attempt - 1))
        samples = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(nominal * 0.8 <= s <= nominal for s in samples)
        assert max(samples) - min(samples) > nominal * 0.1


def test_backoff_never_exceeds_the_cap_even_for_huge_attempt_numbers() -> None:
    assert RetryPolicy().delay(10_000, random.Random(0)) <= 30.0


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    policy = RetryPolicy()
    assert [policy.delay(n, random.Random(7)) for n in (1, 2, 3)] == [
        policy.delay(n, random.Random(7)) for n in (1, 2, 3)
    ]


@pytest.mark.parametrize(
    "kwargs",
    [{"attempts": 0}, {"base_delay": -1.0}, {"base_delay": 5.0, "max_delay": 1.0}, {"jitter": 1.5}],
)
def test_retry_policy_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


# --- sending groups and digests ------------------------------------------------------------------


def test_batchable_jobs_of_one_recipient_at_the_same_point_share_a_group() -> None:
    jobs = [_job("c-1"), _job("c-2"), _job("c-3")]
    assert sending_groups(jobs) == [jobs]


def test_jobs_that_are_not_batchable_always_go_alone() -> None:
    jobs = [_job("c-1", risk="high"), _job("c-2", risk="high"), _job("c-3", risk="critical")]
    assert sending_groups(jobs) == [[job] for job in jobs]


def test_different_recipients_never_share_a_group() -> None:
    mine, theirs = _job("c-1"), _job("c-2", recipient="s-0008")
    assert sending_groups([mine, theirs]) == [[mine], [theirs]]


def test_jobs_at_another_channel_or_attempt_go_in_another_group() -> None:
    first, moved, retried = _job("c-1"), _job("c-2", channel_index=1), _job("c-3", attempt=1, attempts=1)
    other_channels = _job("c-4", channels=(SMS,))
    assert sending_groups([first, moved, retried, other_channels]) == [[first], [moved], [retried], [other_channels]]


def test_a_non_batchable_job_does_not_join_the_digest_of_its_recipient() -> None:
    low, high, medium = _job("c-1", risk="low"), _job("c-2", risk="high"), _job("c-3", risk="medium")
    assert sending_groups([low, high, medium]) == [[low, medium], [high]]


def test_digest_id_does_not_depend_on_the_order_of_its_jobs() -> None:
    a, b, c = _job("c-1"), _job("c-2"), _job("c-3")
    assert digest_id_for([a, b, c]) == digest_id_for([c, a, b]) == digest_id_for([b, c, a])


def test_digest_id_differs_for_different_jobs_and_on_another_channel() -> None:
    a, b, c = _job("c-1"), _job("c-2"), _job("c-3")
    ids = {
        digest_id_for([a, b]),
        digest_id_for([a, c]),
        digest_id_for([a, b, c]),
        digest_id_for([replace(job, channel_index=1) for job in (a, b)]),
    }
    assert len(ids) == 4
    assert ids.isdisjoint({a.delivery_id, b.delivery_id, c.delivery_id})


def _night_digest() -> list[Job]:
    """Three escalations held overnight for one supervisor: low, high and medium risk."""
    evening = beijing(3, 23, 30)
    return [_job(f"c-{risk}", risk=risk, noise=NIGHT, now=evening) for risk in ("low", "high", "medium")]


def test_a_group_of_several_jobs_becomes_one_digest_push() -> None:
    group = _night_digest()
    [sent] = sending_groups(group)
    push = push_for(sent, beijing(4, 7, 0))

    assert push.delivery_id == digest_id_for(group)
    assert push.body["delivery_id"] == str(push.delivery_id)
    assert (push.recipient, push.channel, push.purpose) == ("s-0007", HOOK, "escalation")
    assert push.body["count"] == 3
    assert [item["case_id"] for item in push.body["items"]] == ["c-high", "c-medium", "c-low"]  # most urgent first
    assert [item["deadline"] for item in push.body["items"]] == [RESOLVE_BY[r] for r in ("high", "medium", "low")]
    assert push.body["risk_level"] == "high"
    assert push.body["deadline"] is None  # the cases' deadlines differ: each item has its own


def test_a_digest_lists_the_most_urgent_first() -> None:
    text = push_for(_night_digest(), beijing(4, 7, 0)).body["text"]
    lines = text.splitlines()

    assert text.startswith("汇总提醒：共 3 条")
    assert len(lines) == 4
    assert [line[:2] for line in lines[1:]] == ["1.", "2.", "3."]
    assert "风险：高" in lines[1] and "风险：中" in lines[2] and "风险：低" in lines[3]


def test_a_digest_has_an_english_text_too() -> None:
    text_en = push_for(_night_digest(), beijing(4, 7, 0)).body["text_en"]
    assert text_en.startswith("Digest: 3 notices waiting")
    assert "(risk: high)" in text_en.splitlines()[1]


def test_a_digest_moved_to_the_next_channel_is_sent_there_under_a_new_id() -> None:
    group = [replace(job, channel_index=1) for job in _night_digest()]
    push = push_for(group, beijing(4, 7, 0))

    assert push.channel == SMS
    assert push.delivery_id == digest_id_for(group) != digest_id_for(_night_digest())


# --- deadlines and purposes ------------------------------------------------------------------------


def test_a_task_whose_offer_lapses_during_quiet_hours_goes_out_now() -> None:
    late = beijing(3, 23, 30)
    assert NIGHT.schedule("task", "medium", late, beijing(4, 2, 30)) == (late, False)


def test_a_task_whose_offer_outlasts_quiet_hours_waits_for_the_morning() -> None:
    assert NIGHT.schedule("task", "low", beijing(3, 23, 30), beijing(4, 23, 30)) == (beijing(4, 7), True)


def test_a_digest_window_is_not_waited_out_past_the_push_deadline() -> None:
    now = beijing(3, 10, 3)
    assert DIGESTS.schedule("escalation", "low", now, beijing(3, 10, 5)) == (now, False)


def test_held_jobs_of_different_purposes_never_share_a_digest() -> None:
    escalation = _job("c-1", noise=NIGHT, now=beijing(3, 23))
    task = replace(_job("c-2", noise=NIGHT, now=beijing(3, 23)), purpose="task")
    assert escalation.batchable and task.batchable
    assert sorted(len(group) for group in sending_groups([escalation, task])) == [1, 1]


def test_a_digest_of_warnings_gives_each_item_the_deadline_its_own_push_would_name() -> None:
    evening, morning = beijing(3, 23, 30), beijing(4, 7, 0)
    deadlines = {"c-1": "2024-06-05T02:00:00+00:00", "c-2": "2024-06-06T02:00:00+00:00"}
    jobs = [
        job
        for case_id, deadline in deadlines.items()
        for job in plan_jobs(
            "caselink.case.sla_warning.v1",
            {"case_id": case_id, "status": "accepted", "tier": "township", "station_id": "T-360402101",
             "category": "elderly_care", "risk_level": "medium", "resident_ref": "rr-1", "sequence": 5,
             "deadline": deadline, "kind": "resolve"},
            f"event-{case_id}",
            [Recipient("s-0007", "user", [HOOK])],
            now=evening,
            noise=NIGHT,
        )
    ]  # fmt: skip
    [group] = sending_groups(jobs)

    push = push_for(group, morning)

    assert push.body["count"] == 2
    assert {item["case_id"]: item["deadline"] for item in push.body["items"]} == deadlines


def test_a_digest_names_each_of_its_cases_once_most_urgent_first() -> None:
    evening, morning = beijing(3, 23, 30), beijing(4, 7, 0)
    jobs = [
        _job("c-low", risk="low", noise=NIGHT, now=evening),
        _job("c-high", risk="high", noise=NIGHT, now=evening),
        replace(_job("c-low", risk="low", noise=NIGHT, now=evening), id=uuid.uuid4(), event_id="event-c-low-queued"),
    ]
    [group] = sending_groups(jobs)

    push = push_for(group, morning)

    assert push.body["case_id"] == "c-high,c-low"
    assert [item["case_id"] for item in push.body["items"]] == ["c-high", "c-low", "c-low"]
