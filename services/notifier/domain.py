"""Notifier decisions: who gets a push for a case event, when it goes out, over which channel,
and what happens after each send (retry, fall back, give up).

Pure and synchronous: no broker, no database, no HTTP. The consumer looks recipients up (guided
by `recipients_needed`) and stores the `Job`s of `plan_jobs`; the dispatcher groups due jobs
(`sending_groups`), turns each group into a `Push` (`push_for`), and applies `after_send`.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any, Literal

from services.notifier.messages import (
    ACCEPTED,
    ASSIGNED,
    BEIJING,
    CLOSED,
    DECLINED,
    ESCALATED,
    OFFER_EXPIRED,
    QUEUED,
    REFERRED_BACK,
    ROUTED,
    SLA_BREACHED,
    SLA_WARNING,
    message_facts,
    render,
    render_digest,
)

__all__ = ["ASSIGNED", "ESCALATED", "QUEUED", "ROUTED", "SLA_BREACHED", "SLA_WARNING"]

# Fixed forever: changing it would give redelivered events new delivery ids, and receivers
# deduplicate on X-Caselink-Delivery.
DELIVERY_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:caselink:notifier:delivery")

Purpose = Literal["task", "escalation", "warning"]

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
        "count",
        "items",
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
    station_channels_of: tuple[str, ...] = ()  # station ids: their supervisors' shared channels

    @property
    def is_empty(self) -> bool:
        """True when the event needs no push at all."""
        return not self.user_ids and not self.supervisors_of and not self.station_channels_of


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
        station = (data["station_id"],)
        return RecipientQuery(supervisors_of=station, station_channels_of=station)
    if event_type == QUEUED:
        station = (data["waiting_at"],)
        return RecipientQuery(supervisors_of=station, station_channels_of=station)
    if event_type == ROUTED and data.get("notify_stations"):  # the rule asks higher tiers to know (crisis)
        stations = tuple(data["notify_stations"])
        return RecipientQuery(supervisors_of=stations, station_channels_of=stations)
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


# After any of these, the offer a case had open (if any) is no longer open: its worker answered, it
# lapsed or was withdrawn, or the case was moved, closed or offered to someone else. The router
# ends a held offer without an event of its own when a supervisor escalates, refers back, assigns
# or closes, so the events that move the case count too.
OFFER_ENDING = frozenset(
    {ACCEPTED, DECLINED, OFFER_EXPIRED, ESCALATED, REFERRED_BACK, QUEUED, CLOSED, ASSIGNED, ROUTED}
)


def concerns_pushes(event_type: str) -> bool:
    """Whether the notifier reads an event at all: it is pushed, or it ends an offer a push was about."""
    return event_type in _PURPOSES or event_type in OFFER_ENDING


def lapses_when_the_case_moves_on(event_type: str, data: dict[str, Any]) -> bool:
    """Whether a push of this event asks for something only while the case stays where the event
    put it, and says nothing true once an event of `offers_ended` moved it on: the task and the
    reminder to accept it (the offer ended), and a request to assign an escalated or queued case
    (it went further up, or someone was offered it). Such a push not yet sent is recalled; one that
    came from the same batch as the event that moved the case on is never sent at all."""
    if event_type in (ASSIGNED, ESCALATED, QUEUED):
        return True
    return event_type == SLA_WARNING and data.get("kind") == "accept"


def offers_ended(events: list[tuple[str, str, int]]) -> dict[str, int]:
    """For a batch of (event type, case id, sequence): each case's last offer-ending event's sequence.
    Every push of that case that lapses with its offer and comes from an earlier event is stale."""
    ended: dict[str, int] = {}
    for event_type, case_id, sequence in events:
        if event_type in OFFER_ENDING and sequence > ended.get(case_id, 0):
            ended[case_id] = sequence
    return ended


# `received` (intake) is a case's first event; the router's first, `routed`, is the second.
_FIRST_ROUTED = 2


def offers_to_recall(
    events: list[tuple[str, str, int]], ended: dict[str, int], stale_in_batch: set[str]
) -> dict[str, int]:
    """Of `ended`, the cases whose stored pushes must be looked at for stale ones.

    A batch that holds a case's first `routed` holds every event after it up to the one that ends an
    offer (a partition is read in order), so an offer push from before was planned in this batch, and
    `stale_in_batch` (cases with such a job) says whether there is one. That is a new case's usual
    batch (routed, escalated, assigned), which needs no look-up. The row of an in-batch job may also
    be older than the batch (a redelivery), so those cases are looked at too.
    """
    new_cases = {
        case_id for event_type, case_id, sequence in events if sequence == _FIRST_ROUTED and event_type == ROUTED
    }
    return {case_id: seq for case_id, seq in ended.items() if case_id in stale_in_batch or case_id not in new_cases}


@dataclass(frozen=True)
class NoisePolicy:
    """When non-urgent pushes wait: supervisors' digest window, and everyone's quiet hours.

    Critical cases are never held. Digests batch low- and medium-risk escalations per recipient
    into aligned windows of `digest_minutes` (0 = off). During quiet hours (Beijing wall clock,
    `start` inclusive to `end` exclusive, may wrap past midnight) every non-critical push waits
    for the morning and goes out with the others held for the same person.
    """

    digest_minutes: int = 10
    quiet_start: time | None = None
    quiet_end: time | None = None

    def __post_init__(self) -> None:
        if self.digest_minutes < 0:
            raise ValueError("digest_minutes must be 0 (off) or more")
        if (self.quiet_start is None) != (self.quiet_end is None) or (
            self.quiet_start is not None and self.quiet_start == self.quiet_end
        ):
            raise ValueError("quiet hours need a start and a different end")

    def quiet_until(self, moment: datetime) -> datetime | None:
        """The end of the quiet period `moment` falls in, or None outside quiet hours."""
        if self.quiet_start is None or self.quiet_end is None:
            return None
        local = moment.astimezone(BEIJING)
        clock = local.timetz().replace(tzinfo=None)
        start, end = self.quiet_start, self.quiet_end
        wraps = start > end
        inside = (clock >= start or clock < end) if wraps else (start <= clock < end)
        if not inside:
            return None
        day = local.date() + timedelta(days=1) if wraps and clock >= start else local.date()
        return datetime.combine(day, end, tzinfo=BEIJING)

    def schedule(
        self, purpose: Purpose, risk_level: str, now: datetime, deadline: datetime | None = None
    ) -> tuple[datetime, bool]:
        """When a push planned at `now` goes out, and whether it may share a digest.

        A push about a deadline (an offer to accept, a case to resolve) is never held past that
        deadline: a task seen at 07:00 for an offer that lapsed at 01:00 helps nobody, and the
        router would already have moved the case on.
        """
        if risk_level == "critical":
            return now, False
        due, batchable = now, False
        if self.digest_minutes and purpose == "escalation" and risk_level in ("low", "medium"):
            window = self.digest_minutes * 60
            # Aligned windows: everything of one window goes out together, on every replica.
            due = datetime.fromtimestamp((int(now.timestamp()) // window + 1) * window, tz=now.tzinfo)
            batchable = True
        quiet = self.quiet_until(due)
        if quiet is not None and (deadline is None or deadline > quiet):
            return quiet, True
        if deadline is not None and due > deadline:
            return now, False
        return due, batchable


@dataclass(frozen=True)
class Job:
    """One event's push to one recipient: what to say, the channels in fallback order, its state."""

    id: uuid.UUID
    event_id: str
    event_type: str
    case_id: str
    purpose: Purpose
    category: str
    risk_level: str
    resident_ref: str | None
    recipient: str
    channels: tuple[ChannelConfig, ...]
    facts: dict[str, Any]
    due_at: datetime
    batchable: bool = False
    channel_index: int = 0
    attempt: int = 0  # sends so far on the current channel
    attempts: int = 0  # sends so far on all channels
    # The sequence of the event, for a push that lapses when the case moves on (an offer's task or
    # reminder, an escalation's request to assign: lapses_when_the_case_moves_on); None otherwise.
    offer_sequence: int | None = None

    def stale_after(self, ended: dict[str, int]) -> bool:
        """Whether an event of `offers_ended` moved the case on after the event this push is about."""
        return self.offer_sequence is not None and self.offer_sequence < ended.get(self.case_id, 0)

    @property
    def channel(self) -> ChannelConfig | None:
        """The channel the next send uses; None when the recipient has none configured."""
        return self.channels[self.channel_index] if self.channel_index < len(self.channels) else None

    @property
    def delivery_id(self) -> uuid.UUID:
        """The delivery id of this job's send on its current channel."""
        return delivery_id_for(self.event_id, _channel_key(self.channels, self.channel_index), self.recipient)


def job_id_for(event_id: str, recipient: str) -> uuid.UUID:
    """The id of the job pushing an event to a recipient: the same on every redelivery."""
    return uuid.uuid5(DELIVERY_NAMESPACE, f"job:{event_id}:{recipient}")


def plan_jobs(
    event_type: str,
    data: dict[str, Any],
    event_id: str,
    recipients: list[Recipient],
    *,
    now: datetime,
    noise: NoisePolicy,
    waiting_since: datetime | None = None,
) -> list[Job]:
    """One job per recipient of an event ([] for events that notify nobody), scheduled by `noise`."""
    purpose = purpose_of(event_type)
    facts = message_facts(event_type, data, waiting_since)
    if purpose is None or render(facts, now) is None:
        return []
    deadline = _deadline_of(facts)
    if event_type in _ABOUT_TO_LAPSE and deadline is not None and deadline <= now:
        # Read long after it was written (a replay from a DLQ, a notifier down for hours): a task
        # or a warning about a deadline that has passed helps nobody; the router moved the case on.
        return []
    risk = str(data.get("risk_level") or "unknown")
    due_at, batchable = noise.schedule(purpose, risk, now, deadline)
    # The sequence of the event that put the case where the push is about (Job.offer_sequence).
    offer_sequence = data.get("sequence") if lapses_when_the_case_moves_on(event_type, data) else None
    jobs: dict[str, Job] = {}
    for recipient in recipients:
        # The caller may list a supervisor both directly and via several lookups.
        jobs.setdefault(
            recipient.id,
            Job(
                id=job_id_for(event_id, recipient.id),
                event_id=event_id,
                event_type=event_type,
                case_id=data["case_id"],
                purpose=purpose,
                category=str(data.get("category") or "unknown"),
                risk_level=risk,
                resident_ref=data.get("resident_ref"),
                recipient=recipient.id,
                channels=tuple(recipient.channels),
                facts=facts,
                due_at=due_at,
                batchable=batchable,
                offer_sequence=offer_sequence,
            ),
        )
    return list(jobs.values())


# Pushes that ask for something before a deadline; once it has passed they are not sent at all.
_ABOUT_TO_LAPSE = frozenset({ASSIGNED, SLA_WARNING})


def _deadline_of(facts: dict[str, Any]) -> datetime | None:
    raw = facts.get("accept_by") or facts.get("deadline")
    try:
        return datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        return None


def sending_groups(jobs: list[Job]) -> list[list[Job]]:
    """Due jobs in the groups that go out as one push: batchable jobs of one recipient and purpose at
    the same point of the same channel list share a digest; every other job goes alone."""
    groups: dict[tuple[Any, ...], list[Job]] = {}
    for job in jobs:
        key: tuple[Any, ...] = (
            (job.recipient, job.purpose, job.channels, job.channel_index, job.attempt) if job.batchable else (job.id,)
        )
        groups.setdefault(key, []).append(job)
    return list(groups.values())


def _named_deadline(job: Job, now: datetime) -> str | None:
    text = render(job.facts, now)
    return text.deadline if text is not None else None


def digest_id_for(jobs: list[Job]) -> uuid.UUID:
    """The delivery id of a digest: fixed by its jobs, so a re-sent digest is recognisably the same."""
    return uuid.uuid5(DELIVERY_NAMESPACE, "digest:" + ",".join(sorted(str(job.delivery_id) for job in jobs)))


def push_for(group: list[Job], now: datetime) -> Push:
    """The push for a group of jobs (one job: its own message; several: a digest) at `now`."""
    first = group[0]
    channel = first.channel
    if channel is None:
        raise ValueError("a job without channels has nothing to push")
    if len(group) == 1:
        text = render(first.facts, now)
        if text is None:
            raise ValueError(f"{first.event_type} is not pushed")
        body = {
            "delivery_id": str(first.delivery_id),
            "purpose": first.purpose,
            "case_id": first.case_id,
            "tier": first.facts.get("tier"),
            "station_id": first.facts.get("station_id"),
            "category": first.category,
            "risk_level": first.risk_level,
            "deadline": text.deadline,
            "text": text.zh,
            "text_en": text.en,
        }
        return Push(first.delivery_id, first.event_id, first.case_id, first.purpose, first.recipient, channel, body)
    delivery_id = digest_id_for(group)
    digest = render_digest([job.facts for job in group], now)
    order = ("critical", "high", "medium", "low")
    ranked = sorted(group, key=lambda job: order.index(job.risk_level) if job.risk_level in order else len(order))
    risk = ranked[0].risk_level
    items = [
        {
            "case_id": job.case_id,
            "category": job.category,
            "risk_level": job.risk_level,
            "station_id": job.facts.get("station_id"),
            "deadline": _named_deadline(job, now),  # the one its push alone would name
        }
        for job in ranked
    ]
    body = {
        "delivery_id": str(delivery_id),
        "purpose": first.purpose,
        # Each case once, even when several of its events (escalated, then queued) share the digest.
        "case_id": ",".join(dict.fromkeys(job.case_id for job in ranked)),
        "tier": first.facts.get("tier"),
        "station_id": first.facts.get("station_id"),
        "category": first.category,
        "risk_level": risk,
        "deadline": None,
        "text": digest.zh,
        "text_en": digest.en,
        "count": len(group),
        "items": items,
    }
    return Push(delivery_id, first.event_id, first.case_id, first.purpose, first.recipient, channel, body)


Next = Literal["delivered", "retry", "fallback", "failed"]


@dataclass(frozen=True)
class Step:
    """What happens to a job after a send: done, the same channel later, the next channel now, or given up."""

    next: Next
    channel_index: int
    attempt: int
    due_at: datetime


def after_send(job: Job, *, ok: bool, retryable: bool, retry: RetryPolicy, now: datetime, rng: random.Random) -> Step:
    """Decide a job's next step from the result of the send just made (already counted in `job`).

    Channels are tried in the recipient's order. A channel keeps its retries (with backoff) while
    its failures may pass; then the next channel is tried at once. For a critical case a failed
    channel hands over after one send when another channel is left: reaching someone now matters
    more than waiting out one receiver's backoff.
    """
    if ok:
        return Step("delivered", job.channel_index, job.attempt, now)
    has_fallback = job.channel_index + 1 < len(job.channels)
    allowed = 1 if job.risk_level == "critical" and has_fallback else retry.attempts
    if retryable and job.attempt < allowed:
        return Step("retry", job.channel_index, job.attempt, now + timedelta(seconds=retry.delay(job.attempt, rng)))
    if has_fallback:
        return Step("fallback", job.channel_index + 1, 0, now)
    return Step("failed", job.channel_index, job.attempt, now)


def _channel_key(channels: tuple[ChannelConfig, ...], index: int) -> str:
    # Two channels of the same kind (say, two webhooks) must not share a delivery id, or the
    # second receiver would drop its push as a duplicate; the first keeps the plain name.
    if index >= len(channels):
        return "none"
    name = channels[index].channel
    count = sum(1 for config in channels[:index] if config.channel == name)
    return name if count == 0 else f"{name}#{count + 1}"
