"""Notifier decisions: who gets a push for a case event, what it says, and how retries back off.

Pure and synchronous: no broker, no database, no HTTP. The handler looks recipients up
(guided by `recipients_needed`), calls `plan_pushes`, and hands each `Push` to a channel.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

ROUTED = "caselink.case.routed.v1"
ASSIGNED = "caselink.case.assigned.v1"
ESCALATED = "caselink.case.escalated.v1"
QUEUED = "caselink.case.queued.v1"
SLA_WARNING = "caselink.case.sla_warning.v1"
SLA_BREACHED = "caselink.case.sla_breached.v1"

# Fixed forever: changing it would give redelivered events new delivery ids, and receivers
# deduplicate on X-Caselink-Delivery.
DELIVERY_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:caselink:notifier:delivery")

Purpose = Literal["task", "escalation", "warning"]

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
TIER_EN = {
    "village": "village room",
    "township": "township station",
    "county": "county hub",
    "city": "city centre",
}
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

# Station staff read these texts in China; there is no DST, so a fixed offset is exact.
BEIJING = timezone(timedelta(hours=8), "CST")

# Whitelist of body keys: a push leaves the system, so nothing outside this set (in
# particular resident_ref or any resident field a future event might carry) may be copied.
BODY_KEYS = frozenset(
    {
        "delivery_id",
        "purpose",
        "case_id",
        "tier",
        "station_id",
        "category",
        "risk_level",
        "deadline",
        "text",
        "text_en",
    }
)


@dataclass(frozen=True)
class ChannelConfig:
    """One way to reach a recipient, as configured in the network file's `notify` list."""

    channel: str
    url: str | None = None
    secret: str | None = None
    address: str | None = None
    phone: str | None = None
    template_id: str | None = None  # sms: the gateway template; unset = the purpose's default


@dataclass(frozen=True)
class Recipient:
    """A user or a station (its supervisors' shared channels) with its channels in order."""

    id: str
    kind: Literal["user", "station"]
    channels: list[ChannelConfig] = field(default_factory=list)


@dataclass(frozen=True)
class RecipientQuery:
    """Whom the caller must look up before planning pushes for an event."""

    user_ids: list[str] = field(default_factory=list)
    supervisors_of: tuple[str, ...] = ()  # station ids
    station_channels_of: str | None = None

    @property
    def is_empty(self) -> bool:
        """True when the event needs no push at all."""
        return not self.user_ids and not self.supervisors_of and self.station_channels_of is None


@dataclass(frozen=True)
class Push:
    """One message to one recipient over one channel."""

    delivery_id: uuid.UUID
    event_id: str
    case_id: str
    purpose: Purpose
    recipient: str
    channel: ChannelConfig
    body: dict[str, Any]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a push is retried."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError("need 0 <= base_delay <= max_delay")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based) before the next one."""
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        # Cap the exponent so a huge attempt number cannot overflow float conversion.
        backoff = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 64))
        # Jitter only shortens the wait: replicas retrying the same receiver spread out,
        # and max_delay stays a true upper bound.
        return backoff * (1.0 - self.jitter * rng.random())


def delivery_id_for(event_id: str, channel: str, recipient: str) -> uuid.UUID:
    """The delivery id of a push: the same for every retry and every redelivery of the event."""
    return uuid.uuid5(DELIVERY_NAMESPACE, f"{event_id}:{channel}:{recipient}")


def recipients_needed(event_type: str, data: dict[str, Any]) -> RecipientQuery:
    """Tell the caller whom to look up for an event; an empty query means no push."""
    if event_type == ASSIGNED:
        return RecipientQuery(user_ids=[data["worker_id"]])
    if event_type == ESCALATED:
        station = data["station_id"]
        return RecipientQuery(supervisors_of=(station,), station_channels_of=station)
    if event_type == QUEUED:
        station = data["waiting_at"]
        return RecipientQuery(supervisors_of=(station,), station_channels_of=station)
    if event_type == ROUTED and data.get("notify_stations"):  # the rule asks higher tiers to know (crisis)
        return RecipientQuery(supervisors_of=tuple(data["notify_stations"]))
    if event_type in (SLA_WARNING, SLA_BREACHED):
        holder = [data["worker_id"]] if data.get("worker_id") else []
        if data.get("kind") == "accept" and holder:  # an offer about to lapse: a reminder to its worker
            return RecipientQuery(user_ids=holder)
        return RecipientQuery(user_ids=holder, supervisors_of=(data["station_id"],))
    return RecipientQuery()


_PURPOSES: dict[str, Purpose] = {
    ROUTED: "escalation",
    ASSIGNED: "task",
    ESCALATED: "escalation",
    QUEUED: "escalation",
    SLA_WARNING: "warning",
    SLA_BREACHED: "warning",
}


def purpose_of(event_type: str) -> Purpose | None:
    """Why an event is pushed (task, escalation, warning), or None if it is not pushed at all."""
    return _PURPOSES.get(event_type)


def plan_pushes(event_type: str, data: dict[str, Any], event_id: str, recipients: list[Recipient]) -> list[Push]:
    """One push per (recipient, configured channel) for an event; [] for events that notify nobody."""
    message = _message_for(event_type, data)
    if message is None:
        return []
    purpose, deadline, text, text_en = message
    pushes: list[Push] = []
    seen: set[tuple[str, str]] = set()
    for recipient in recipients:
        # The caller may list a supervisor both directly and via several lookups.
        if (recipient.kind, recipient.id) in seen:
            continue
        seen.add((recipient.kind, recipient.id))
        used: dict[str, int] = {}
        for config in recipient.channels:
            delivery_id = delivery_id_for(event_id, _channel_key(config.channel, used), recipient.id)
            body = {
                "delivery_id": str(delivery_id),
                "purpose": purpose,
                "case_id": data["case_id"],
                "tier": data.get("tier"),
                "station_id": data.get("station_id"),
                "category": data.get("category"),
                "risk_level": data.get("risk_level"),
                "deadline": deadline,
                "text": text,
                "text_en": text_en,
            }
            pushes.append(
                Push(
                    delivery_id=delivery_id,
                    event_id=event_id,
                    case_id=data["case_id"],
                    purpose=purpose,
                    recipient=recipient.id,
                    channel=config,
                    body=body,
                )
            )
    return pushes


def _channel_key(channel: str, used: dict[str, int]) -> str:
    # Two channels of the same kind (say, two webhooks) must not share a delivery id, or the
    # second receiver would drop its push as a duplicate; the first keeps the plain name.
    count = used.get(channel, 0)
    used[channel] = count + 1
    return channel if count == 0 else f"{channel}#{count + 1}"


def _message_for(event_type: str, data: dict[str, Any]) -> tuple[Purpose, str | None, str, str] | None:
    category = data.get("category") or "unknown"
    risk = data.get("risk_level") or "unknown"
    category_zh = CATEGORY_ZH.get(category, category)
    category_en = category.replace("_", " ")
    risk_zh = RISK_ZH.get(risk, "未知")
    risk_en = risk
    case_zh = f"{category_zh}个案（风险：{risk_zh}）"
    case_en = f"{category_en} case (risk: {risk_en})"

    if event_type == ASSIGNED:
        deadline = data.get("accept_by")
        zh, en = _deadline_text(deadline)
        return (
            "task",
            deadline,
            f"新任务：{case_zh}，请在 {zh} 前接单" if deadline else f"新任务：{case_zh}，请尽快接单",
            f"New task: {case_en}, please accept by {en}" if deadline else f"New task: {case_en}, please accept",
        )
    if event_type == ESCALATED:
        from_zh, to_zh = _tier_zh(data.get("from_tier")), _tier_zh(data.get("tier"))
        from_en, to_en = _tier_en(data.get("from_tier")), _tier_en(data.get("tier"))
        reason = data.get("reason") or ""
        reason_zh = ESCALATION_REASON_ZH.get(reason, "其他")
        reason_en = ESCALATION_REASON_EN.get(reason, "other")
        return (
            "escalation",
            None,
            f"个案上转：{case_zh}已由{from_zh}上转至{to_zh}，原因：{reason_zh}，请尽快指派",
            f"Escalated: {case_en} moved from {from_en} to {to_en}, reason: {reason_en}; please assign",
        )
    if event_type == ROUTED:
        if not data.get("notify_stations"):
            return None
        station = data.get("station_id", "")
        return (
            "escalation",
            None,
            f"个案通报：{case_zh}已转至{_tier_zh(data.get('tier'))} {station}，按规则通报上级督导",
            f"For your information: {case_en} routed to {_tier_en(data.get('tier'))} {station}, per policy rule",
        )
    if event_type == QUEUED:
        waiting_at = data.get("waiting_at", "")
        return (
            "escalation",
            None,
            f"个案排队：{case_zh}暂无可接单社工，正在 {waiting_at} 等待指派",
            f"Queued: {case_en} has no eligible worker with capacity, waiting at {waiting_at}",
        )
    if event_type in (SLA_WARNING, SLA_BREACHED):
        deadline = data.get("deadline")
        zh, en = _deadline_text(deadline)
        kind = data.get("kind") or ""
        kind_zh = DEADLINE_KIND_ZH.get(kind, "")
        if event_type == SLA_WARNING:
            text = f"时限预警：{case_zh}的{kind_zh}时限将于 {zh} 到期"
            text_en = f"Deadline warning: {case_en}, {kind} deadline {en}"
        else:
            text = f"时限已过：{case_zh}的{kind_zh}时限已于 {zh} 到期"
            text_en = f"Deadline passed: {case_en}, {kind} deadline was {en}"
        return ("warning", deadline, text, text_en)
    return None


def _deadline_text(deadline: str | None) -> tuple[str, str]:
    if not deadline:
        return "未知时间", "an unknown time"
    try:
        moment = datetime.fromisoformat(deadline)
    except ValueError:
        return deadline, deadline
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    local = moment.astimezone(BEIJING)
    # The date matters: a low-risk offer may run 24 hours, so a bare HH:MM is ambiguous.
    return (
        f"{local.month}月{local.day}日 {local:%H:%M}",
        f"{local:%Y-%m-%d %H:%M} (Beijing time)",
    )


def _tier_zh(tier: str | None) -> str:
    return TIER_ZH.get(tier or "", tier or "未知层级")


def _tier_en(tier: str | None) -> str:
    return TIER_EN.get(tier or "", tier or "unknown tier")
