"""What pushes say: task, offer expiring, escalation, queued, crisis notice and SLA texts, zh-CN and en."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest

from services.notifier.messages import (
    ASSIGNED,
    BEIJING,
    ESCALATED,
    FACT_KEYS,
    QUEUED,
    ROUTED,
    SLA_BREACHED,
    SLA_WARNING,
    Text,
    deadline_text,
    message_facts,
    render,
    render_digest,
    waiting_words,
)

NOW = datetime(2024, 6, 3, 14, 0, tzinfo=BEIJING)
BEIJING_JUNE_10 = "2024-06-10 10:00 (Beijing time)"
CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")


def _data(**extra: object) -> dict[str, object]:
    return {
        "case_id": "c-20240603-0001",
        "status": "offered",
        "tier": "township",
        "station_id": "T-360402101",
        "category": "elderly_care",
        "risk_level": "high",
        "resident_ref": "rr-9c1f0e7a",
        "sequence": 3,
        **extra,
    }


ASSIGNED_DATA = _data(worker_id="w-0001", accept_by="2024-06-03T06:30:00Z")
ESCALATED_DATA = _data(
    status="escalated", tier="county", station_id="C-360402", from_tier="township", reason="no_capacity"
)
QUEUED_DATA = _data(status="queued", tier="city", station_id="M-3604", waiting_at="M-3604")
NOTICE_DATA = _data(status="routed", rule="crisis", risk_level="critical", notify_stations=["C-360402"])
OFFER_EXPIRING_DATA = _data(deadline="2024-06-03T06:30:00Z", kind="accept", worker_id="w-0001")
RESOLVE_DATA = _data(deadline="2024-06-10T02:00:00+00:00", kind="resolve")


def _text(event_type: str, data: dict[str, object], *, waiting: timedelta | None = None) -> Text:
    text = render(message_facts(event_type, data, None if waiting is None else NOW - waiting), NOW)
    assert text is not None
    return text


# --- tasks and deadlines -------------------------------------------------------------------------


def test_task_asks_to_accept_before_the_deadline_in_beijing_time_with_its_date() -> None:
    text = _text(ASSIGNED, ASSIGNED_DATA)

    assert text.zh == "新任务：养老服务个案（风险：高），请在 6月3日 14:30 前接单"
    assert text.en == "New task: elderly care case (risk: high), please accept by 2024-06-03 14:30 (Beijing time)"
    assert text.deadline == "2024-06-03T06:30:00Z"


def test_task_without_a_deadline_asks_to_accept_soon() -> None:
    text = _text(ASSIGNED, {**ASSIGNED_DATA, "accept_by": None})
    assert (text.zh, text.deadline) == ("新任务：养老服务个案（风险：高），请尽快接单", None)


def test_an_offer_about_to_lapse_tells_the_worker_it_will_go_to_someone_else() -> None:
    text = _text(SLA_WARNING, OFFER_EXPIRING_DATA)

    assert text.zh == "接单即将超时：养老服务个案（风险：高）请在 6月3日 14:30 前接单，否则将转给其他社工"
    assert text.en.startswith("Offer expiring: elderly care case (risk: high), accept by 2024-06-03 14:30")
    assert text.deadline == "2024-06-03T06:30:00Z"


def test_resolve_warning_and_breach_name_the_resolve_deadline() -> None:
    warning, breach = _text(SLA_WARNING, RESOLVE_DATA), _text(SLA_BREACHED, RESOLVE_DATA)

    assert warning.zh == "时限预警：养老服务个案（风险：高）的办结时限将于 6月10日 10:00 到期"
    assert breach.zh == "时限已过：养老服务个案（风险：高）的办结时限已于 6月10日 10:00 到期"
    assert warning.en == "Deadline warning: elderly care case (risk: high), resolve deadline " + BEIJING_JUNE_10
    assert breach.en == "Deadline passed: elderly care case (risk: high), resolve deadline was " + BEIJING_JUNE_10


def test_a_lapsed_offer_is_a_breach_of_the_accept_deadline_not_an_expiring_offer() -> None:
    assert _text(SLA_BREACHED, OFFER_EXPIRING_DATA).zh.startswith("时限已过：养老服务个案（风险：高）的接单时限已于")


@pytest.mark.parametrize(
    ("deadline", "zh", "en"),
    [
        ("2024-06-03T06:30:00Z", "6月3日 14:30", "2024-06-03 14:30 (Beijing time)"),
        ("2024-06-03T20:30:00+00:00", "6月4日 04:30", "2024-06-04 04:30 (Beijing time)"),  # the next day in Beijing
        ("2024-06-03T22:30:00+08:00", "6月3日 22:30", "2024-06-03 22:30 (Beijing time)"),
        ("2024-12-31T16:05:00", "1月1日 00:05", "2025-01-01 00:05 (Beijing time)"),  # no zone: UTC
    ],
)
def test_deadlines_are_beijing_wall_clock_with_the_date(deadline: str, zh: str, en: str) -> None:
    assert deadline_text(deadline) == (zh, en)


@pytest.mark.parametrize("deadline", [None, "", 42])
def test_a_missing_deadline_reads_as_unknown(deadline: object) -> None:
    assert deadline_text(deadline) == ("未知时间", "an unknown time")


def test_an_unparseable_deadline_is_shown_as_it_came() -> None:
    assert deadline_text("next Tuesday") == ("next Tuesday", "next Tuesday")


# --- escalations, queues and notices -------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "zh", "en"),
    [
        ("no_capacity", "无可用社工", "no worker available"),
        ("offer_expired", "接单超时", "offer not accepted in time"),
        ("declined", "被拒绝", "declined"),
        ("sla_breach", "超时未办结", "not resolved in time"),
        ("manual", "人工上转", "manual escalation"),
        ("rule", "规则", "policy rule"),
    ],
)
def test_escalation_gives_the_reason_and_how_long_the_case_has_waited(reason: str, zh: str, en: str) -> None:
    text = _text(ESCALATED, {**ESCALATED_DATA, "reason": reason}, waiting=timedelta(minutes=25))

    assert f"原因：{zh}，已等待 25 分钟，请尽快指派" in text.zh
    assert f"reason: {en}, waiting 25 min; please assign" in text.en


def test_escalation_names_both_tiers() -> None:
    text = _text(ESCALATED, ESCALATED_DATA)

    assert text.zh.startswith("个案上转：养老服务个案（风险：高）已由乡镇（街道）社工站上转至县（区）社工总站")
    assert "moved from township station to county hub" in text.en
    assert text.deadline is None


def test_escalation_without_a_known_start_of_waiting_leaves_the_wait_out() -> None:
    text = _text(ESCALATED, ESCALATED_DATA)
    assert "原因：无可用社工，请尽快指派" in text.zh and "等待" not in text.zh
    assert "waiting" not in text.en


def test_an_unknown_escalation_reason_reads_as_other() -> None:
    text = _text(ESCALATED, {**ESCALATED_DATA, "reason": "cosmic_rays"})
    assert "原因：其他" in text.zh and "reason: other" in text.en


def test_long_waits_are_told_in_hours_and_minutes() -> None:
    text = _text(ESCALATED, ESCALATED_DATA, waiting=timedelta(minutes=95))
    assert "已等待 1 小时 35 分钟" in text.zh and "waiting 1 h 35 min" in text.en


def test_the_wait_is_counted_up_to_the_moment_the_push_is_sent() -> None:
    facts = message_facts(ESCALATED, ESCALATED_DATA, NOW - timedelta(minutes=25))
    later = render(facts, NOW + timedelta(minutes=10))
    assert later is not None and "已等待 35 分钟" in later.zh


def test_escalated_and_queued_pushes_say_by_when_the_case_must_be_resolved() -> None:
    resolve_by = "2024-06-10T02:00:00+00:00"
    zh, en = deadline_text(resolve_by)

    escalated = _text(ESCALATED, {**ESCALATED_DATA, "resolve_by": resolve_by})
    queued = _text(QUEUED, {**QUEUED_DATA, "resolve_by": resolve_by})

    assert en == BEIJING_JUNE_10
    assert escalated.zh.endswith(f"请尽快指派，须于 {zh} 前办结")
    assert escalated.en.endswith(f"please assign (to be resolved by {en})")
    assert queued.zh.endswith(f"等待指派，须于 {zh} 前办结")
    assert queued.en.endswith(f"waiting at M-3604 (to be resolved by {en})")
    assert escalated.deadline == queued.deadline == resolve_by


def test_queued_case_names_where_it_waits_and_for_how_long() -> None:
    text = _text(QUEUED, QUEUED_DATA, waiting=timedelta(minutes=25))

    assert text.zh == "个案排队：养老服务个案（风险：高）暂无可接单社工，正在 M-3604 等待指派，已等待 25 分钟"
    assert text.en.endswith("waiting at M-3604, waiting 25 min")


def test_crisis_routing_notice_tells_higher_supervisors_where_the_case_went() -> None:
    text = _text(ROUTED, NOTICE_DATA)

    assert text.zh == "个案通报：养老服务个案（风险：紧急）已转至乡镇（街道）社工站 T-360402101，按规则通报上级督导"
    assert text.en.startswith("For your information:") and "T-360402101" in text.en


@pytest.mark.parametrize(
    ("seconds", "zh", "en"),
    [
        (-30, "不足 1 分钟", "under a minute"),
        (59, "不足 1 分钟", "under a minute"),
        (60, "1 分钟", "1 min"),
        (89 * 60 + 59, "89 分钟", "89 min"),
        (90 * 60, "1 小时 30 分钟", "1 h 30 min"),
        (95 * 60, "1 小时 35 分钟", "1 h 35 min"),
        (26 * 3600 + 5 * 60, "26 小时 5 分钟", "26 h 5 min"),
    ],
)
def test_waiting_time_words(seconds: float, zh: str, en: str) -> None:
    assert waiting_words(seconds) == (zh, en)


# --- every text ----------------------------------------------------------------------------------

PUSHED = [
    (ASSIGNED, ASSIGNED_DATA),
    (SLA_WARNING, OFFER_EXPIRING_DATA),
    (ESCALATED, ESCALATED_DATA),
    (QUEUED, QUEUED_DATA),
    (ROUTED, NOTICE_DATA),
    (SLA_WARNING, RESOLVE_DATA),
    (SLA_BREACHED, RESOLVE_DATA),
]


@pytest.mark.parametrize(("event_type", "data"), PUSHED)
def test_every_push_has_an_english_text_beside_the_chinese_one(event_type: str, data: dict[str, object]) -> None:
    text = _text(event_type, data, waiting=timedelta(minutes=95))

    assert CJK.search(text.zh)
    assert text.en and not CJK.search(text.en)


@pytest.mark.parametrize(("event_type", "data"), PUSHED)
def test_unknown_category_and_risk_still_read(event_type: str, data: dict[str, object]) -> None:
    text = _text(event_type, {**data, "category": "new_category", "risk_level": "extreme"})

    assert "new_category个案（风险：未知）" in text.zh
    assert "new category case (risk: extreme)" in text.en


@pytest.mark.parametrize(
    "event_type",
    ["caselink.case.received.v1", "caselink.case.accepted.v1", "caselink.case.notified.v1", "no.such.type"],
)
def test_events_that_are_not_pushed_have_no_text(event_type: str) -> None:
    assert render(message_facts(event_type, _data(), None), NOW) is None


def test_routing_without_a_notice_has_no_text() -> None:
    data = {**NOTICE_DATA, "notify_stations": []}
    assert render(message_facts(ROUTED, data, None), NOW) is None


def test_facts_keep_only_whitelisted_fields_of_the_event() -> None:
    leaky = {**ESCALATED_DATA, "resident": {"name": "王秀英"}, "address": "滨兴路 12 号", "summary": "独居"}
    facts = message_facts(ESCALATED, leaky, NOW)

    assert set(facts) <= {*FACT_KEYS, "event_type", "notice", "waiting_since"}
    assert "resident_ref" not in facts and "王秀英" not in str(facts)
    assert facts["waiting_since"] == NOW.isoformat()


def test_digest_counts_its_items_and_lists_them_most_urgent_first() -> None:
    items = [message_facts(QUEUED, {**QUEUED_DATA, "risk_level": risk}, None) for risk in ("low", "critical", "medium")]
    digest = render_digest(items, NOW)

    assert digest.zh.splitlines()[0] == "汇总提醒：共 3 条待处理通知"
    risks = [line.split("（")[1].split("）")[0] for line in digest.zh.splitlines()[1:]]
    assert risks == ["风险：紧急", "风险：中", "风险：低"]
    assert digest.en.splitlines()[0] == "Digest: 3 notices waiting"
    assert digest.deadline is None
