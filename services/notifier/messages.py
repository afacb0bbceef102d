"""What a push says: the texts (zh-CN and en) for each purpose, and the digest of several pushes.

Pure. The facts a text is made of are copied from the case event when the job is planned
(`message_facts`) and worded when it is sent (`render`), so a waiting time is counted up to
the moment the supervisor reads it. No resident data is ever among the facts: a push leaves the
system, and its recipient's role does not entitle them to more than category, risk and place.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

ROUTED = "caselink.case.routed.v1"
ASSIGNED = "caselink.case.assigned.v1"
ESCALATED = "caselink.case.escalated.v1"
QUEUED = "caselink.case.queued.v1"
SLA_WARNING = "caselink.case.sla_warning.v1"
SLA_BREACHED = "caselink.case.sla_breached.v1"
ACCEPTED = "caselink.case.accepted.v1"
DECLINED = "caselink.case.declined.v1"
OFFER_EXPIRED = "caselink.case.offer_expired.v1"
REFERRED_BACK = "caselink.case.referred_back.v1"
CLOSED = "caselink.case.closed.v1"

# Station staff read these texts in China; there is no DST, so a fixed offset is exact.
BEIJING = timezone(timedelta(hours=8), "CST")

CATEGORY_ZH = {
    "social_assistance": "社会救助",
    "elderly_care": "养老服务",
    "child_protection": "儿童保护",
    "disability_support": "助残服务",
    "mental_health": "心理健康",
    "crisis_intervention": "危机干预",
    "medical_social_work": "医务社工",
    "family_support": "家庭支持",
    "livelihood": "生计发展",
    "community_governance": "社区治理",
    "resource_linkage": "资源链接",
}
RISK_ZH = {"low": "低", "medium": "中", "high": "高", "critical": "紧急"}
TIER_ZH = {
    "village": "村（社区）社工室",
    "township": "乡镇（街道）社工站",
    "county": "县（区）社工总站",
    "city": "市社工支持中心",
}
TIER_EN = {"village": "village room", "township": "township station", "county": "county hub", "city": "city centre"}
ESCALATION_REASON_ZH = {
    "no_capacity": "无可用社工",
    "offer_expired": "接单超时",
    "declined": "被拒绝",
    "sla_breach": "超时未办结",
    "manual": "人工上转",
    "rule": "规则",
}
ESCALATION_REASON_EN = {
    "no_capacity": "no worker available",
    "offer_expired": "offer not accepted in time",
    "declined": "declined",
    "sla_breach": "not resolved in time",
    "manual": "manual escalation",
    "rule": "policy rule",
}
DEADLINE_KIND_ZH = {"accept": "接单", "resolve": "办结"}

# The event fields a text may use. Nothing else is copied into a job, whatever the event carries.
FACT_KEYS = (
    "case_id",
    "tier",
    "station_id",
    "category",
    "risk_level",
    "from_tier",
    "reason",
    "waiting_at",
    "accept_by",
    "resolve_by",
    "deadline",
    "kind",
)


@dataclass(frozen=True)
class Text:
    """One push's wording: Chinese first (what staff read), English beside it, and its deadline."""

    zh: str
    en: str
    deadline: str | None = None


def message_facts(event_type: str, data: dict[str, Any], waiting_since: datetime | None) -> dict[str, Any]:
    """The whitelisted facts of an event that its push will be worded from."""
    facts = {key: data[key] for key in FACT_KEYS if data.get(key) is not None}
    facts["event_type"] = event_type
    if data.get("notify_stations"):
        facts["notice"] = True
    if waiting_since is not None:
        facts["waiting_since"] = waiting_since.isoformat()
    return facts


def render(facts: dict[str, Any], now: datetime) -> Text | None:
    """The text of a push from its facts at `now`; None for an event that is not pushed."""
    case_zh, case_en = _case_words(facts)
    event_type = facts.get("event_type")
    if event_type == ASSIGNED:
        deadline = facts.get("accept_by")
        zh, en = deadline_text(deadline)
        if not deadline:
            return Text(f"新任务：{case_zh}，请尽快接单", f"New task: {case_en}, please accept")
        return Text(f"新任务：{case_zh}，请在 {zh} 前接单", f"New task: {case_en}, please accept by {en}", deadline)
    if event_type == ESCALATED:
        reason = str(facts.get("reason") or "")
        wait_zh, wait_en = _waiting(facts, now)
        due_zh, due_en, resolve_by = _resolve_by(facts)
        return Text(
            f"个案上转：{case_zh}已由{_tier_zh(facts.get('from_tier'))}上转至{_tier_zh(facts.get('tier'))}，"
            f"原因：{ESCALATION_REASON_ZH.get(reason, '其他')}{wait_zh}，请尽快指派{due_zh}",
            f"Escalated: {case_en} moved from {_tier_en(facts.get('from_tier'))} to {_tier_en(facts.get('tier'))}, "
            f"reason: {ESCALATION_REASON_EN.get(reason, 'other')}{wait_en}; please assign{due_en}",
            resolve_by,
        )
    if event_type == QUEUED:
        waiting_at = facts.get("waiting_at", "")
        wait_zh, wait_en = _waiting(facts, now)
        due_zh, due_en, resolve_by = _resolve_by(facts)
        return Text(
            f"个案排队：{case_zh}暂无可接单社工，正在 {waiting_at} 等待指派{wait_zh}{due_zh}",
            f"Queued: {case_en} has no eligible worker with capacity, waiting at {waiting_at}{wait_en}{due_en}",
            resolve_by,
        )
    if event_type == ROUTED and facts.get("notice"):
        station, tier = facts.get("station_id", ""), facts.get("tier")
        return Text(
            f"个案通报：{case_zh}已转至{_tier_zh(tier)} {station}，按规则通报上级督导",
            f"For your information: {case_en} routed to {_tier_en(tier)} {station}, per policy rule",
        )
    if event_type in (SLA_WARNING, SLA_BREACHED):
        return _deadline_notice(event_type, facts, case_zh, case_en)
    return None


def _resolve_by(facts: dict[str, Any]) -> tuple[str, str, str | None]:
    """The case's resolve deadline as a clause of a supervisor's push (empty if the event had none)."""
    resolve_by = facts.get("resolve_by")
    if not resolve_by:
        return "", "", None
    zh, en = deadline_text(resolve_by)
    return f"，须于 {zh} 前办结", f" (to be resolved by {en})", resolve_by


def _deadline_notice(event_type: str, facts: dict[str, Any], case_zh: str, case_en: str) -> Text:
    deadline = facts.get("deadline")
    zh, en = deadline_text(deadline)
    kind = str(facts.get("kind") or "")
    if event_type == SLA_WARNING and kind == "accept":  # the offer is about to lapse to someone else
        return Text(
            f"接单即将超时：{case_zh}请在 {zh} 前接单，否则将转给其他社工",
            f"Offer expiring: {case_en}, accept by {en} or it goes to another worker",
            deadline,
        )
    kind_zh = DEADLINE_KIND_ZH.get(kind, "")
    if event_type == SLA_WARNING:
        return Text(
            f"时限预警：{case_zh}的{kind_zh}时限将于 {zh} 到期",
            f"Deadline warning: {case_en}, {kind} deadline {en}",
            deadline,
        )
    return Text(
        f"时限已过：{case_zh}的{kind_zh}时限已于 {zh} 到期",
        f"Deadline passed: {case_en}, {kind} deadline was {en}",
        deadline,
    )


def render_digest(items: list[dict[str, Any]], now: datetime) -> Text:
    """One message listing several pushes to the same person, most urgent first."""
    order = {"critical": 0, "high": 1, "medium": 2, "low": 3}
    ranked = sorted(items, key=lambda facts: order.get(str(facts.get("risk_level")), 4))
    lines = [(render(facts, now) or Text("", "")) for facts in ranked]
    count = len(items)
    zh = "\n".join([f"汇总提醒：共 {count} 条待处理通知"] + [f"{n}. {t.zh}" for n, t in enumerate(lines, 1)])
    en = "\n".join([f"Digest: {count} notices waiting"] + [f"{n}. {t.en}" for n, t in enumerate(lines, 1)])
    return Text(zh, en)


def deadline_text(deadline: object) -> tuple[str, str]:
    """A deadline as Beijing wall-clock text, in Chinese and in English."""
    if not isinstance(deadline, str) or not deadline:
        return "未知时间", "an unknown time"
    return _deadline_text(deadline)


# A job's deadline is worded when the job is stored and again when it is sent (or digested).
@functools.lru_cache(maxsize=4096)
def _deadline_text(deadline: str) -> tuple[str, str]:
    try:
        moment = datetime.fromisoformat(deadline)
    except ValueError:
        return deadline, deadline
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    local = moment.astimezone(BEIJING)
    # The date matters: a low-risk offer may run 24 hours, so a bare HH:MM is ambiguous.
    clock = f"{local.hour:02d}:{local.minute:02d}"  # not strftime, which costs more than the rest together
    day = f"{local.year:04d}-{local.month:02d}-{local.day:02d}"
    return f"{local.month}月{local.day}日 {clock}", f"{day} {clock} (Beijing time)"


def waiting_words(seconds: float) -> tuple[str, str]:
    """A waiting time in whole minutes (hours past 90 minutes), in Chinese and in English."""
    minutes = max(0, int(seconds // 60))
    if minutes < 1:
        return "不足 1 分钟", "under a minute"
    if minutes < 90:
        return f"{minutes} 分钟", f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} 小时 {rest} 分钟", f"{hours} h {rest} min"


def _waiting(facts: dict[str, Any], now: datetime) -> tuple[str, str]:
    since = facts.get("waiting_since")
    if not since:
        return "", ""
    zh, en = waiting_words((now - datetime.fromisoformat(since)).total_seconds())
    return f"，已等待 {zh}", f", waiting {en}"


def _case_words(facts: dict[str, Any]) -> tuple[str, str]:
    category = str(facts.get("category") or "unknown")
    risk = str(facts.get("risk_level") or "unknown")
    zh = f"{CATEGORY_ZH.get(category, category)}个案（风险：{RISK_ZH.get(risk, '未知')}）"
    return zh, f"{category.replace('_', ' ')} case (risk: {risk})"


def _tier_zh(tier: object) -> str:
    return TIER_ZH.get(str(tier or ""), str(tier or "未知层级"))


def _tier_en(tier: object) -> str:
    return TIER_EN.get(str(tier or ""), str(tier or "unknown tier"))
