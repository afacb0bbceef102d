"""Notifier decisions: recipients, job planning, pushes per channel, delivery ids, privacy of bodies."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from services.notifier.domain import (
    ASSIGNED,
    BODY_KEYS,
    DELIVERY_NAMESPACE,
    ESCALATED,
    OFFER_ENDING,
    QUEUED,
    ROUTED,
    SLA_BREACHED,
    SLA_WARNING,
    ChannelConfig,
    Job,
    NoisePolicy,
    Push,
    Recipient,
    RecipientQuery,
    concerns_pushes,
    job_id_for,
    offers_ended,
    offers_to_recall,
    plan_jobs,
    purpose_of,
    push_for,
    recipients_needed,
    sending_groups,
)
from services.notifier.messages import ACCEPTED, BEIJING, CLOSED, DECLINED, FACT_KEYS, OFFER_EXPIRED

EVENT_ID = "0b8f7a43-5a43-4e2a-9d8e-1f0c2b3a4d5e"
CASE_ID = "c-20240603-0001"
RESIDENT_REF = "rr-9c1f0e7a"
RESIDENT_NAME = "王秀英"
RESIDENT_ID_NUMBER = "36040219500101002X"
RESIDENT_PHONE = "13800138000"
RESIDENT_ADDRESS = "十里街道滨兴路 12 号"
NOW = datetime(2024, 6, 3, 14, 0, tzinfo=BEIJING)
# Digests off: every job is due at once and goes out alone, as the old one-push-per-event did.
AT_ONCE = NoisePolicy(digest_minutes=0)


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
        "resident_ref": RESIDENT_REF,
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


def _jobs(event_type: str, data: dict[str, Any], recipients: list[Recipient], event_id: str = EVENT_ID) -> list[Job]:
    return plan_jobs(event_type, data, event_id, recipients, now=NOW, noise=AT_ONCE)


def _pushes_on_every_channel(job: Job) -> list[Push]:
    return [push_for([replace(job, channel_index=i)], NOW) for i in range(len(job.channels))]


# --- whom to look up -----------------------------------------------------------------------------


def test_assigned_case_needs_only_the_offered_worker() -> None:
    assert recipients_needed(ASSIGNED, ASSIGNED_DATA) == RecipientQuery(user_ids=["w-0001"])


def test_escalated_case_needs_supervisors_and_shared_channels_of_the_new_station() -> None:
    query = recipients_needed(ESCALATED, ESCALATED_DATA)
    assert query == RecipientQuery(supervisors_of=("C-360402",), station_channels_of=("C-360402",))


def test_queued_case_needs_supervisors_and_shared_channels_where_it_waits() -> None:
    query = recipients_needed(QUEUED, QUEUED_DATA)
    assert query == RecipientQuery(supervisors_of=("M-3604",), station_channels_of=("M-3604",))


@pytest.mark.parametrize("event_type", [SLA_WARNING, SLA_BREACHED])
def test_sla_events_need_supervisors_of_the_case_station(event_type: str) -> None:
    assert recipients_needed(event_type, SLA_DATA) == RecipientQuery(supervisors_of=("T-360402101",))


def test_accept_warning_reminds_only_the_worker_holding_the_offer() -> None:
    data = _base(deadline="2024-06-03T06:30:00Z", kind="accept", worker_id="w-0001")
    assert recipients_needed(SLA_WARNING, data) == RecipientQuery(user_ids=["w-0001"])


def test_accept_warning_without_a_holder_goes_to_the_station_supervisors() -> None:
    data = _base(deadline="2024-06-03T06:30:00Z", kind="accept")
    assert recipients_needed(SLA_WARNING, data) == RecipientQuery(supervisors_of=("T-360402101",))


def test_resolve_breach_reaches_the_worker_holding_the_case_and_the_station_supervisors() -> None:
    data = _base(deadline="2024-06-10T02:00:00Z", kind="resolve", worker_id="w-0001")
    query = recipients_needed(SLA_BREACHED, data)
    assert query == RecipientQuery(user_ids=["w-0001"], supervisors_of=("T-360402101",))


def test_crisis_routing_informs_the_supervisors_and_shared_channels_of_the_stations_the_rule_names() -> None:
    data = _base(status="routed", rule="crisis", reason="risk critical", notify_stations=["C-360402"])
    assert recipients_needed(ROUTED, data) == RecipientQuery(
        supervisors_of=("C-360402",), station_channels_of=("C-360402",)
    )
    [job] = _jobs(ROUTED, data, [SUPERVISOR])
    assert job.purpose == "escalation"
    assert "T-360402101" in push_for([job], NOW).body["text"]


def test_routing_without_notify_stations_plans_nothing() -> None:
    data = _base(status="routed", rule="default", reason="fell through")
    assert recipients_needed(ROUTED, data).is_empty
    assert _jobs(ROUTED, data, [SUPERVISOR]) == []


@pytest.mark.parametrize(
    "event_type",
    ["caselink.case.received.v1", "caselink.case.accepted.v1", "caselink.case.notified.v1"],
)
def test_events_that_notify_nobody_need_no_lookup_and_plan_no_job(event_type: str) -> None:
    assert recipients_needed(event_type, _base()).is_empty
    assert purpose_of(event_type) is None
    assert _jobs(event_type, _base(), [WORKER]) == []


@pytest.mark.parametrize(
    ("event_type", "purpose"),
    [
        (ASSIGNED, "task"),
        (ESCALATED, "escalation"),
        (QUEUED, "escalation"),
        (ROUTED, "escalation"),
        (SLA_WARNING, "warning"),
        (SLA_BREACHED, "warning"),
    ],
)
def test_each_pushed_event_type_has_its_purpose(event_type: str, purpose: str) -> None:
    assert purpose_of(event_type) == purpose


# --- jobs and their pushes -----------------------------------------------------------------------


def test_assigned_case_becomes_a_task_push_with_the_accept_deadline_in_beijing_time() -> None:
    [job] = _jobs(ASSIGNED, ASSIGNED_DATA, [WORKER])
    push = push_for([job], NOW)

    assert push.purpose == "task"
    assert push.recipient == "w-0001"
    assert push.channel == WORKER.channels[0]
    assert push.case_id == CASE_ID
    assert push.event_id == EVENT_ID
    assert push.body["deadline"] == "2024-06-03T06:30:00Z"
    assert push.body["text"] == "新任务：养老服务个案（风险：高），请在 6月3日 14:30 前接单"
    assert "accept by 2024-06-03 14:30" in push.body["text_en"]
    assert push.body["delivery_id"] == str(push.delivery_id)


def test_a_new_job_starts_due_now_on_its_first_channel_with_no_sends() -> None:
    [job] = _jobs(ESCALATED, ESCALATED_DATA, [SUPERVISOR])

    assert (job.due_at, job.batchable) == (NOW, False)
    assert (job.channel_index, job.attempt, job.attempts) == (0, 0, 0)
    assert job.channel == SUPERVISOR.channels[0]
    assert job.id == job_id_for(EVENT_ID, "s-0007")


def test_escalation_push_names_both_tiers_and_the_reason_in_chinese() -> None:
    jobs = _jobs(ESCALATED, ESCALATED_DATA, [SUPERVISOR, COUNTY_STATION])

    assert {job.purpose for job in jobs} == {"escalation"}
    body = push_for([jobs[0]], NOW).body
    assert "乡镇（街道）社工站" in body["text"] and "县（区）社工总站" in body["text"]
    assert "无可用社工" in body["text"]
    assert body["deadline"] is None
    assert body["tier"] == "county"


def test_escalation_is_one_job_per_recipient_carrying_its_channels_in_fallback_order() -> None:
    jobs = _jobs(ESCALATED, ESCALATED_DATA, [SUPERVISOR, COUNTY_STATION])

    assert [(job.recipient, [c.channel for c in job.channels]) for job in jobs] == [
        ("s-0007", ["webhook", "sms"]),
        ("C-360402", ["webhook"]),
    ]


def test_a_job_moved_to_its_next_channel_pushes_the_same_body_over_that_channel() -> None:
    [job] = _jobs(ESCALATED, ESCALATED_DATA, [SUPERVISOR])
    webhook, sms = _pushes_on_every_channel(job)

    assert (webhook.channel.channel, sms.channel.channel) == ("webhook", "sms")
    assert sms.channel == SUPERVISOR.channels[1]
    assert webhook.delivery_id != sms.delivery_id
    assert {**webhook.body, "delivery_id": None} == {**sms.body, "delivery_id": None}


def test_queued_case_is_an_escalation_push_naming_where_it_waits() -> None:
    [job] = _jobs(QUEUED, QUEUED_DATA, [COUNTY_STATION])
    push = push_for([job], NOW)

    assert push.purpose == "escalation"
    assert "M-3604" in push.body["text"]
    assert push.body["text"].startswith("个案排队：养老服务个案（风险：高）")


@pytest.mark.parametrize(("event_type", "prefix"), [(SLA_WARNING, "时限预警"), (SLA_BREACHED, "时限已过")])
def test_sla_events_become_warning_pushes_with_the_deadline(event_type: str, prefix: str) -> None:
    [job] = _jobs(event_type, SLA_DATA, [Recipient(id="s-1", kind="user", channels=[_hook("s-1")])])
    push = push_for([job], NOW)

    assert push.purpose == "warning"
    assert push.body["deadline"] == "2024-06-10T02:00:00+00:00"
    assert push.body["text"].startswith(prefix)
    assert "办结" in push.body["text"] and "6月10日 10:00" in push.body["text"]


def test_a_recipient_listed_twice_gets_one_job() -> None:
    [job] = _jobs(ESCALATED, ESCALATED_DATA, [SUPERVISOR, SUPERVISOR])
    assert job.channels == tuple(SUPERVISOR.channels)


def test_a_recipient_without_channels_keeps_a_job_with_nothing_to_push() -> None:
    # The dispatcher fails such a job with "no notify channel configured", so it is recorded.
    [job] = _jobs(ASSIGNED, ASSIGNED_DATA, [Recipient(id="w-0002", kind="user")])

    assert job.recipient == "w-0002"
    assert job.channels == () and job.channel is None
    with pytest.raises(ValueError, match="without channels"):
        push_for([job], NOW)


def test_unknown_category_and_missing_deadline_still_produce_readable_text() -> None:
    data = {**ASSIGNED_DATA, "category": "new_category"}
    del data["accept_by"]
    [job] = _jobs(ASSIGNED, data, [WORKER])
    body = push_for([job], NOW).body

    assert body["text"] == "新任务：new_category个案（风险：高），请尽快接单"
    assert body["deadline"] is None


# --- pushes about an offer that ended ------------------------------------------------------------


def test_a_task_push_is_stale_once_a_later_event_ends_its_offer() -> None:
    (task,) = _jobs(ASSIGNED, ASSIGNED_DATA, [WORKER])
    assert task.offer_sequence == 3
    assert task.stale_after(offers_ended([(OFFER_EXPIRED, CASE_ID, 5)]))
    assert task.stale_after(offers_ended([(ESCALATED, CASE_ID, 4)]))  # a supervisor moved the case


def test_a_task_push_is_not_stale_for_its_own_event_an_earlier_one_or_another_case() -> None:
    (task,) = _jobs(ASSIGNED, ASSIGNED_DATA, [WORKER])
    assert not task.stale_after(offers_ended([(ASSIGNED, CASE_ID, 3), (ROUTED, CASE_ID, 2)]))
    assert not task.stale_after(offers_ended([(DECLINED, "c-other", 9)]))


def test_events_that_do_not_end_an_offer_leave_its_task_push_alone() -> None:
    (task,) = _jobs(ASSIGNED, ASSIGNED_DATA, [WORKER])
    later = [(SLA_WARNING, CASE_ID, 4), ("caselink.case.notified.v1", CASE_ID, 5), (SLA_BREACHED, CASE_ID, 6)]
    assert offers_ended(later) == {}
    assert not task.stale_after(offers_ended(later))


def test_the_reminder_to_accept_lapses_with_the_offer_and_other_pushes_do_not() -> None:
    accept = _base(status="offered", worker_id="w-0001", deadline="2099-01-01T00:00:00Z", kind="accept", sequence=5)
    (reminder,) = _jobs(SLA_WARNING, accept, [WORKER])
    assert reminder.stale_after({CASE_ID: 6})
    resolve_warning = _jobs(SLA_WARNING, {**SLA_DATA, "sequence": 5}, [WORKER, SUPERVISOR])
    crisis = _base(status="routed", rule="crisis", reason="risk critical", notify_stations=["C-360402"], sequence=2)
    notice = _jobs(ROUTED, crisis, [SUPERVISOR])
    assert resolve_warning and notice
    assert all(job.offer_sequence is None and not job.stale_after({CASE_ID: 99}) for job in resolve_warning + notice)


@pytest.mark.parametrize(("event_type", "data"), [(ESCALATED, ESCALATED_DATA), (QUEUED, QUEUED_DATA)])
def test_a_request_to_assign_lapses_once_the_case_moved_on(event_type: str, data: dict[str, Any]) -> None:
    # Escalated V→T, T→C and offered at C in one transaction: T's supervisors need not assign it.
    (request,) = _jobs(event_type, {**data, "sequence": 3}, [SUPERVISOR])
    assert request.stale_after(offers_ended([(event_type, CASE_ID, 3), (ASSIGNED, CASE_ID, 4)]))
    assert request.stale_after(offers_ended([(ESCALATED, CASE_ID, 4)]))
    assert not request.stale_after(offers_ended([(event_type, CASE_ID, 3), (SLA_WARNING, CASE_ID, 4)]))


def test_the_last_offer_ending_event_of_each_case_counts() -> None:
    events = [(DECLINED, "c-1", 4), (CLOSED, "c-1", 7), (ACCEPTED, "c-2", 5), (OFFER_EXPIRED, "c-1", 6)]
    assert offers_ended(events) == {"c-1": 7, "c-2": 5}


def test_a_new_case_routed_and_offered_in_one_batch_needs_no_look_up_of_stored_pushes() -> None:
    events = [(ROUTED, "c-1", 2), (ESCALATED, "c-1", 3), (ASSIGNED, "c-1", 4)]
    assert offers_to_recall(events, offers_ended(events), stale_in_batch=set()) == {}


def test_stored_pushes_are_looked_at_when_the_batch_does_not_start_the_case() -> None:
    events = [(ROUTED, "c-new", 2), (ASSIGNED, "c-new", 3), (DECLINED, "c-old", 6), (ROUTED, "c-back", 9)]
    assert offers_to_recall(events, offers_ended(events), stale_in_batch=set()) == {"c-old": 6, "c-back": 9}


def test_a_redelivered_offer_whose_end_is_in_the_batch_is_looked_at_though_the_batch_starts_the_case() -> None:
    # Its job may have been stored by the first delivery, and be on its way or waiting.
    events = [(ROUTED, "c-1", 2), (ASSIGNED, "c-1", 3), (DECLINED, "c-1", 4)]
    assert offers_to_recall(events, offers_ended(events), stale_in_batch={"c-1"}) == {"c-1": 4}


def test_the_notifier_reads_every_offer_ending_event_though_most_push_nothing() -> None:
    assert all(concerns_pushes(event_type) for event_type in OFFER_ENDING)
    assert concerns_pushes(SLA_BREACHED)
    assert not concerns_pushes("caselink.case.notified.v1")
    assert not concerns_pushes("caselink.case.started.v1")


# --- delivery ids --------------------------------------------------------------------------------


def test_delivery_and_job_ids_are_the_same_when_the_event_is_planned_again() -> None:
    first = _jobs(ESCALATED, ESCALATED_DATA, [SUPERVISOR, COUNTY_STATION])
    again = _jobs(ESCALATED, ESCALATED_DATA, [SUPERVISOR, COUNTY_STATION])

    assert [job.id for job in first] == [job.id for job in again]
    assert [push_for([job], NOW).delivery_id for job in first] == [push_for([job], NOW).delivery_id for job in again]
    assert push_for([first[0]], NOW).delivery_id == uuid.uuid5(DELIVERY_NAMESPACE, f"{EVENT_ID}:webhook:s-0007")


def test_delivery_id_differs_per_event_recipient_and_channel() -> None:
    recipients = [SUPERVISOR, COUNTY_STATION]
    jobs = _jobs(ESCALATED, ESCALATED_DATA, recipients) + _jobs(
        ESCALATED, ESCALATED_DATA, recipients, event_id=str(uuid.uuid4())
    )
    pushes = [push for job in jobs for push in _pushes_on_every_channel(job)]

    assert len(pushes) == 6
    assert len({push.delivery_id for push in pushes}) == len(pushes)


def test_two_channels_of_the_same_kind_get_distinct_delivery_ids() -> None:
    two_hooks = Recipient(id="s-0008", kind="user", channels=[_hook("a"), _hook("b")])
    [job] = _jobs(ESCALATED, ESCALATED_DATA, [two_hooks])
    first, second = _pushes_on_every_channel(job)

    assert first.delivery_id == uuid.uuid5(DELIVERY_NAMESPACE, f"{EVENT_ID}:webhook:s-0008")
    assert second.delivery_id == uuid.uuid5(DELIVERY_NAMESPACE, f"{EVENT_ID}:webhook#2:s-0008")


# --- privacy -------------------------------------------------------------------------------------

SECRETS = (RESIDENT_NAME, RESIDENT_ID_NUMBER, RESIDENT_PHONE, RESIDENT_ADDRESS, RESIDENT_REF)


def _leaky(data: dict[str, object]) -> dict[str, object]:
    return {
        **data,
        "resident": {"name": RESIDENT_NAME, "id_number": RESIDENT_ID_NUMBER, "phone": RESIDENT_PHONE},
        "address": RESIDENT_ADDRESS,
        "summary": f"{RESIDENT_NAME} 独居，电话 {RESIDENT_PHONE}",
    }


def _assert_no_resident_data(push: Push) -> None:
    assert set(push.body) <= BODY_KEYS
    # Round-trip through JSON as a receiver would see it, then look for any trace.
    wire = json.dumps(json.loads(json.dumps(push.body, ensure_ascii=False)), ensure_ascii=False)
    for secret in SECRETS:
        assert secret not in wire


@pytest.mark.parametrize(
    ("event_type", "data"),
    [(ASSIGNED, ASSIGNED_DATA), (ESCALATED, ESCALATED_DATA), (QUEUED, QUEUED_DATA), (SLA_WARNING, SLA_DATA)],
)
def test_push_bodies_carry_no_resident_data_even_if_an_event_leaks_some(
    event_type: str, data: dict[str, object]
) -> None:
    jobs = _jobs(event_type, _leaky(data), [SUPERVISOR, COUNTY_STATION])

    assert jobs
    for job in jobs:
        assert set(job.facts) <= {*FACT_KEYS, "event_type", "notice", "waiting_since"}
        for push in _pushes_on_every_channel(job):
            _assert_no_resident_data(push)


def test_digest_bodies_carry_no_resident_data_even_if_the_events_leak_some() -> None:
    medium = {"risk_level": "medium"}
    jobs = [
        job
        for n, (event_type, data) in enumerate(
            [(ESCALATED, ESCALATED_DATA), (QUEUED, QUEUED_DATA), (ESCALATED, {**ESCALATED_DATA, "reason": "manual"})]
        )
        for job in plan_jobs(
            event_type,
            _leaky({**data, **medium, "case_id": f"c-{n}"}),
            f"event-{n}",
            [SUPERVISOR],
            now=NOW,
            noise=NoisePolicy(digest_minutes=10),
        )
    ]
    [group] = sending_groups(jobs)

    for index in range(len(SUPERVISOR.channels)):
        digest = push_for([replace(job, channel_index=index) for job in group], NOW)
        assert set(digest.body) == BODY_KEYS
        assert {key for item in digest.body["items"] for key in item} <= BODY_KEYS
        _assert_no_resident_data(digest)


def test_a_task_or_a_warning_read_after_its_deadline_is_not_pushed_but_a_breach_is() -> None:
    lapsed = NOW + timedelta(hours=1)  # the offer's accept_by was 30 minutes before
    warning = _base(deadline="2024-06-03T06:30:00Z", kind="accept", worker_id="w-0001")

    def planned(event_type: str, data: dict[str, Any]) -> int:
        return len(plan_jobs(event_type, data, EVENT_ID, [WORKER], now=lapsed, noise=AT_ONCE))

    assert (planned(ASSIGNED, ASSIGNED_DATA), planned(SLA_WARNING, warning), planned(SLA_BREACHED, warning)) == (
        0,
        0,
        1,
    )
    assert len(_jobs(ASSIGNED, ASSIGNED_DATA, [WORKER])) == 1  # read in time, it is pushed
