"""Notifier decisions: recipients, push planning, delivery ids, privacy of bodies, retry backoff."""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

import pytest

from services.notifier.domain import (
    ASSIGNED,
    BODY_KEYS,
    DELIVERY_NAMESPACE,
    ESCALATED,
    QUEUED,
    ROUTED,
    SLA_BREACHED,
    SLA_WARNING,
    ChannelConfig,
    Recipient,
    RecipientQuery,
    RetryPolicy,
    plan_pushes,
    recipients_needed,
)

EVENT_ID = "0b8f7a43-5a43-4e2a-9d8e-1f0c2b3a4d5e"
CASE_ID = "c-20240603-0001"
RESIDENT_NAME = "王秀英"
RESIDENT_ID_NUMBER = "36040219500101002X"
RESIDENT_PHONE = "13800138000"
RESIDENT_ADDRESS = "十里街道滨兴路 12 号"


def _hook(name: str) -> ChannelConfig:
    return ChannelConfig(channel="webhook", url=f"https://example.org/hooks/{name}", secret="s3cret")


def _base(**extra: object) -> dict[str, object]:
    return {
        "case_id": CASE_ID,
        "status": "offered",
        "tier": "township",
        "station_id": "T-360402101",
        "category": "elderly_care",
        "risk_level": "high",
        "resident_ref": "rr-9c1f0e7a",
        "sequence": 3,
        **extra,
    }


WORKER = Recipient(id="w-0001", kind="user", channels=[_hook("w-0001")])
SUPERVISOR = Recipient(
    id="s-0007",
    kind="user",
    channels=[_hook("s-0007"), ChannelConfig(channel="sms", phone="13900000000")],
)
COUNTY_STATION = Recipient(id="C-360402", kind="station", channels=[_hook("C-360402")])

ASSIGNED_DATA = _base(worker_id="w-0001", accept_by="2024-06-03T06:30:00Z", candidates_considered=4, score=0.42)
ESCALATED_DATA = _base(
    status="escalated",
    tier="county",
    station_id="C-360402",
    from_tier="township",
    from_station_id="T-360402101",
    reason="no_capacity",
)
QUEUED_DATA = _base(status="queued", tier="city", station_id="M-3604", waiting_at="M-3604")
SLA_DATA = _base(deadline="2024-06-10T02:00:00+00:00", kind="resolve")


def test_assigned_case_needs_only_the_offered_worker() -> None:
    assert recipients_needed(ASSIGNED, ASSIGNED_DATA) == RecipientQuery(user_ids=["w-0001"])


def test_escalated_case_needs_supervisors_and_shared_channels_of_the_new_station() -> None:
    query = recipients_needed(ESCALATED, ESCALATED_DATA)
    assert query == RecipientQuery(supervisors_of=("C-360402",), station_channels_of="C-360402")


def test_queued_case_needs_supervisors_and_shared_channels_where_it_waits() -> None:
    query = recipients_needed(QUEUED, QUEUED_DATA)
    assert query == RecipientQuery(supervisors_of=("M-3604",), station_channels_of="M-3604")


@pytest.mark.parametrize("event_type", [SLA_WARNING, SLA_BREACHED])
def test_sla_events_need_supervisors_of_the_case_station(event_type: str) -> None:
    assert recipients_needed(event_type, SLA_DATA) == RecipientQuery(supervisors_of=("T-360402101",))


def test_accept_warning_reminds_only_the_worker_holding_the_offer() -> None:
    data = _base(deadline="2024-06-03T06:30:00Z", kind="accept", worker_id="w-0001")
    assert recipients_needed(SLA_WARNING, data) == RecipientQuery(user_ids=["w-0001"])


def test_resolve_breach_reaches_the_worker_holding_the_case_and_the_station_supervisors() -> None:
    data = _base(deadline="2024-06-10T02:00:00Z", kind="resolve", worker_id="w-0001")
    query = recipients_needed(SLA_BREACHED, data)
    assert query == RecipientQuery(user_ids=["w-0001"], supervisors_of=("T-360402101",))


def test_crisis_routing_informs_the_supervisors_the_rule_names() -> None:
    data = _base(status="routed", rule="crisis", reason="risk critical", notify_stations=["C-360402"])
    assert recipients_needed(ROUTED, data) == RecipientQuery(supervisors_of=("C-360402",))
    pushes = plan_pushes(ROUTED, data, EVENT_ID, [SUPERVISOR])
    assert {push.purpose for push in pushes} == {"escalation"}
    assert "T-360402101" in pushes[0].body["text"]


def test_routing_without_notify_stations_pushes_nothing() -> None:
    data = _base(status="routed", rule="default", reason="fell through")
    assert recipients_needed(ROUTED, data).is_empty
    assert plan_pushes(ROUTED, data, EVENT_ID, [SUPERVISOR]) == []


@pytest.mark.parametrize(
    "event_type",
    ["caselink.case.received.v1", "caselink.case.accepted.v1", "caselink.case.notified.v1"],
)
def test_events_that_notify_nobody_need_no_lookup_and_plan_no_push(event_type: str) -> None:
    assert recipients_needed(event_type, _base()).is_empty
    assert plan_pushes(event_type, _base(), EVENT_ID, [WORKER]) == []


def test_assigned_case_becomes_a_task_push_with_the_accept_deadline_in_beijing_time() -> None:
    [push] = plan_pushes(ASSIGNED, ASSIGNED_DATA, EVENT_ID, [WORKER])

    assert push.purpose == "task"
    assert push.recipient == "w-0001"
    assert push.channel == WORKER.channels[0]
    assert push.case_id == CASE_ID
    assert push.event_id == EVENT_ID
    assert push.body["deadline"] == "2024-06-03T06:30:00Z"
    assert push.body["text"] == "新任务：养老服务个案（风险：高），请在 6月3日 14:30 前接单"
    assert "accept by 2024-06-03 14:30" in push.body["text_en"]
    assert push.body["delivery_id"] == str(push.delivery_id)


def test_escalation_push_names_both_tiers_and_the_reason_in_chinese() -> None:
    pushes = plan_pushes(ESCALATED, ESCALATED_DATA, EVENT_ID, [SUPERVISOR, COUNTY_STATION])

    assert {p.purpose for p in pushes} == {"escalation"}
    text = pushes[0].body["text"]
    assert "乡镇（街道）社工站" in text and "县（区）社工总站" in text
    assert "无可用社工" in text
    assert pushes[0].body["deadline"] is None
    assert pushes[0].body["tier"] == "county"


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("no_capacity", "无可用社工"),
        ("offer_expired", "接单超时"),
        ("declined", "被拒绝"),
        ("sla_breach", "超时未办结"),
        ("manual", "人工上转"),
        ("rule", "规则"),
    ],
)
def test_every_escalation_reason_has_chinese_words(reason: str, words: str) -> None:
    [push] = plan_pushes(ESCALATED, {**ESCALATED_DATA, "reason": reason}, EVENT_ID, [COUNTY_STATION])
    assert f"原因：{words}" in push.body["text"]


def test_escalation_goes_to_every_channel_of_every_supervisor_and_the_station() -> None:
    pushes = plan_pushes(ESCALATED, ESCALATED_DATA, EVENT_ID, [SUPERVISOR, COUNTY_STATION])

    assert [(p.recipient, p.channel.channel) for p in pushes] == [
        ("s-0007", "webhook"),
        ("s-0007", "sms"),
        ("C-360402", "webhook"),
    ]


def test_queued_case_is_an_escalation_push_naming_where_it_waits() -> None:
    [push] = plan_pushes(QUEUED, QUEUED_DATA, EVENT_ID, [COUNTY_STATION])

    assert push.purpose == "escalation"
    assert "M-3604" in push.body["text"]
    assert push.body["text"].startswith("个案排队：养老服务个案（风险：高）")


@pytest.mark.parametrize(("event_type", "prefix"), [(SLA_WARNING, "时限预警"), (SLA_BREACHED, "时限已过")])
def test_sla_events_become_warning_pushes_with_the_deadline(event_type: str, prefix: str) -> None:
    [push] = plan_pushes(event_type, SLA_DATA, EVENT_ID, [Recipient(id="s-1", kind="user", channels=[_hook("s-1")])])

    assert push.purpose == "warning"
    assert push.body["deadline"] == "2024-06-10T02:00:00+00:00"
    assert push.body["text"].startswith(prefix)
    assert "办结" in push.body["text"] and "6月10日 10:00" in push.body["text"]


def test_a_recipient_listed_twice_gets_one_push_per_channel() -> None:
    pushes = plan_pushes(ESCALATED, ESCALATED_DATA, EVENT_ID, [SUPERVISOR, SUPERVISOR])
    assert len(pushes) == len(SUPERVISOR.channels)


def test_a_recipient_without_channels_gets_no_push() -> None:
    assert plan_pushes(ASSIGNED, ASSIGNED_DATA, EVENT_ID, [Recipient(id="w-0002", kind="user")]) == []


def test_unknown_category_and_missing_deadline_still_produce_readable_text() -> None:
    data = {**ASSIGNED_DATA, "category": "new_category"}
    del data["accept_by"]
    [push] = plan_pushes(ASSIGNED, data, EVENT_ID, [WORKER])
    assert push.body["text"] == "新任务：new_category个案（风险：高），请尽快接单"
    assert push.body["deadline"] is None


def test_delivery_id_is_the_same_when_the_event_is_planned_again() -> None:
    first = plan_pushes(ESCALATED, ESCALATED_DATA, EVENT_ID, [SUPERVISOR, COUNTY_STATION])
    again = plan_pushes(ESCALATED, ESCALATED_DATA, EVENT_ID, [SUPERVISOR, COUNTY_STATION])

    assert [p.delivery_id for p in first] == [p.delivery_id for p in again]
    assert first[0].delivery_id == uuid.uuid5(DELIVERY_NAMESPACE, f"{EVENT_ID}:webhook:s-0007")


def test_delivery_id_differs_per_event_recipient_and_channel() -> None:
    pushes = plan_pushes(ESCALATED, ESCALATED_DATA, EVENT_ID, [SUPERVISOR, COUNTY_STATION])
    other_event = plan_pushes(ESCALATED, ESCALATED_DATA, str(uuid.uuid4()), [SUPERVISOR, COUNTY_STATION])

    ids = {p.delivery_id for p in pushes + other_event}
    assert len(ids) == len(pushes) + len(other_event)


def test_two_channels_of_the_same_kind_get_distinct_delivery_ids() -> None:
    two_hooks = Recipient(id="s-0008", kind="user", channels=[_hook("a"), _hook("b")])
    first, second = plan_pushes(ESCALATED, ESCALATED_DATA, EVENT_ID, [two_hooks])

    assert first.delivery_id == uuid.uuid5(DELIVERY_NAMESPACE, f"{EVENT_ID}:webhook:s-0008")
    assert first.delivery_id != second.delivery_id


@pytest.mark.parametrize(
    ("event_type", "data"),
    [(ASSIGNED, ASSIGNED_DATA), (ESCALATED, ESCALATED_DATA), (QUEUED, QUEUED_DATA), (SLA_WARNING, SLA_DATA)],
)
def test_push_bodies_carry_no_resident_data_even_if_an_event_leaks_some(
    event_type: str, data: dict[str, object]
) -> None:
    leaky = {
        **data,
        "resident": {"name": RESIDENT_NAME, "id_number": RESIDENT_ID_NUMBER, "phone": RESIDENT_PHONE},
        "address": RESIDENT_ADDRESS,
        "summary": f"{RESIDENT_NAME} 独居，电话 {RESIDENT_PHONE}",
    }
    for push in plan_pushes(event_type, leaky, EVENT_ID, [SUPERVISOR, COUNTY_STATION]):
        assert set(push.body) == BODY_KEYS
        # Round-trip through JSON as a receiver would see it, then look for any trace.
        wire = json.dumps(json.loads(json.dumps(push.body, ensure_ascii=False)), ensure_ascii=False)
        for secret in (RESIDENT_NAME, RESIDENT_ID_NUMBER, RESIDENT_PHONE, RESIDENT_ADDRESS, "rr-9c1f0e7a"):
            assert secret not in wire


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
