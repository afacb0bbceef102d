"""The notifier's database work: store the jobs of a batch of case events, claim due jobs, and
record what each send did (delivery log, `notified` / `notification_failed`, dead letters).

The consumer never sends: it stores jobs in one transaction per batch and moves on, so a slow
or dead receiver cannot hold up a partition. The dispatcher (dispatcher.py) sends. Jobs due at
once can be stored already leased to the dispatcher, which then sends them without claiming
them back (`store_jobs(lease=...)`): the lease is what a claim would have written.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, tuple_, union, update
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.events import CaseEventView, CloudEvent, EventSource
from schemas.topics import dlq
from services.notifier import tables
from services.notifier.adapters.base import DeliveryResult
from services.notifier.domain import (
    ESCALATED,
    QUEUED,
    ChannelConfig,
    Job,
    NoisePolicy,
    Recipient,
    RecipientQuery,
    Step,
    offers_ended,
    offers_to_recall,
    plan_jobs,
    recipients_needed,
)
from services.notifier.messages import FACT_KEYS
from services.shared.logging import get_logger
from services.shared.outbox import OutboxMessage, emit_case_events, enqueue_many
from services.shared.tables import stations, users

log = get_logger(__name__)

SOURCE: EventSource = "caselink/notifier"
CONSUMER = "notifier.pushes"
_CHANNEL_FIELDS = ("url", "secret", "address", "phone", "template_id")
# What the notifier reads of a case event besides its envelope and the fields every event has:
# whom it concerns (recipients_needed) and the facts its push is worded from (FACT_KEYS).
PUSHED_EVENTS = CaseEventView(*FACT_KEYS, "worker_id", "notify_stations")


@dataclass(frozen=True)
class Incoming:
    """A case event (read with PUSHED_EVENTS, or in full) and where it was read (`topic/partition/offset`)."""

    event: CloudEvent
    origin: str


@dataclass(frozen=True)
class Lease:
    """Who stores jobs may lease up to `room` of those due at once to its dispatcher, until `until`."""

    until: datetime
    room: int


@dataclass(frozen=True)
class Stored:
    """What storing a batch did: how many jobs are new (or revived), and the new ones stored leased
    (sent by the dispatcher that holds the lease, without a claim)."""

    new: int
    leased: list[Job]

    @property
    def to_claim(self) -> bool:
        """Whether some new job waits for a claim (no lease room, revived, or due later)."""
        return self.new > len(self.leased)


@dataclass(frozen=True)
class Sent:
    """A job after a send: the job (its counters already include the send), the result, the channel
    it went over, the push's own delivery id when it was part of a digest, and the decided step."""

    job: Job
    result: DeliveryResult
    channel: str
    batch_id: uuid.UUID | None
    step: Step


def channel_configs(raw: list[dict[str, Any]] | None) -> tuple[ChannelConfig, ...]:
    """A network file's `notify` list as channel configs, in order."""
    if not raw:
        return ()
    try:
        return _channel_configs(tuple(tuple(c.items()) for c in raw))
    except TypeError:  # a value that cannot be hashed (not from a valid network file): not cached
        return _build_channel_configs(raw)


# A recipient's channels come back with every job of theirs the dispatcher claims: built once.
@functools.lru_cache(maxsize=4096)
def _channel_configs(items: tuple[tuple[tuple[str, Any], ...], ...]) -> tuple[ChannelConfig, ...]:
    return _build_channel_configs([dict(c) for c in items])


def _build_channel_configs(raw: list[dict[str, Any]]) -> tuple[ChannelConfig, ...]:
    return tuple(ChannelConfig(channel=c["channel"], **{k: c.get(k) for k in _CHANNEL_FIELDS}) for c in raw)


async def store_jobs(
    session: AsyncSession, batch: list[Incoming], *, now: datetime, noise: NoisePolicy, lease: Lease | None = None
) -> Stored:
    """Plan and store the jobs of a batch of events, and recall the pushes its events made stale.

    A redelivered event adds nothing (one job per event and recipient). A job given up before
    becomes pending again with the recipient's current channels: that is how a dead letter
    replayed after fixing the network file gets its push out.

    With a `lease`, up to `lease.room` new jobs due now are stored leased until `lease.until`, and
    returned: the caller hands them to its dispatcher once the transaction committed. If it never
    does (the process died), the lease runs out and any dispatcher claims them, as after a crash
    between claim and send. Revived jobs are never leased here: their stored counters count.

    A task (or a reminder to accept) not yet sent when its offer ends is recalled, not sent later:
    held for the morning by quiet hours, or waiting out a receiver's retries, it would ask a worker
    to accept what is no longer theirs. A job a dispatcher holds is on its way and is left to it.
    """
    events = [(item.event.type, item.event.data.case_id, item.event.data.sequence) for item in batch]
    ended = offers_ended(events)
    stored, stale_cases = await _store_planned(session, batch, now=now, noise=noise, lease=lease, ended=ended)
    recall = offers_to_recall(events, ended, stale_cases)
    if not recall:
        return stored
    result = await session.execute(_RECALL, {"case_ids": list(recall), "sequences": list(recall.values()), "now": now})
    if recalled := int(result.rowcount or 0):  # type: ignore[attr-defined]
        log.info("notifier.pushes_recalled", jobs=recalled)
    return stored


async def _store_planned(
    session: AsyncSession,
    batch: list[Incoming],
    *,
    now: datetime,
    noise: NoisePolicy,
    lease: Lease | None,
    ended: dict[str, int],
) -> tuple[Stored, set[str]]:
    """Store the batch's planned jobs; what was stored, and the cases of jobs its events made stale."""
    dumped = [(item, item.event.data.model_dump(mode="json")) for item in batch]
    wanted = [(item, data, recipients_needed(item.event.type, data)) for item, data in dumped]
    wanted = [(item, data, query) for item, data, query in wanted if not query.is_empty]
    if not wanted:
        return Stored(0, []), set()
    directory = await _Directory.load(session, [query for _, _, query in wanted])
    waiting = await _first_job_times(session, [d["case_id"] for i, d, _ in wanted if i.event.type in _WAITING])
    # A job twice in one batch (its event delivered twice) is stored once.
    planned: dict[uuid.UUID, tuple[Job, str]] = {}
    for item, data, query in wanted:
        since = waiting.get(data["case_id"], item.event.time) if item.event.type in _WAITING else None
        jobs = plan_jobs(
            item.event.type,
            data,
            str(item.event.id),
            directory.recipients(query),
            now=now,
            noise=noise,
            waiting_since=since,
        )
        planned |= {job.id: (job, item.origin) for job in jobs}
    if not planned:
        return Stored(0, []), set()
    # Stored all the same (a redelivery must find it), but recalled in this transaction: never leased.
    stale = {job_id for job_id, (job, _) in planned.items() if job.stale_after(ended)}
    # Jobs due now take the lease's room in batch order; the others wait for a claim.
    leased: set[uuid.UUID] = set()
    if lease is not None:
        due = [job_id for job_id, (job, _) in planned.items() if job.due_at <= now and job_id not in stale]
        leased = set(due[: lease.room])
    leases = [lease.until if lease is not None and job_id in leased else None for job_id in planned]
    rows = [_row(job, origin) for job, origin in planned.values()]
    columns = {name: list(values) for name, values in zip(_JOB_COLUMNS, zip(*rows, strict=True), strict=True)}
    stored = [
        (uuid.UUID(str(job_id)), is_leased)
        for job_id, is_leased in await session.execute(_STORE_JOBS, {**columns, "leases": leases})
    ]
    new = len([job_id for job_id, _ in stored if job_id not in stale])
    leased_jobs = [planned[job_id][0] for job_id, is_leased in stored if is_leased]
    return Stored(new, leased_jobs), {planned[job_id][0].case_id for job_id in stale}


# A pending push about an offer, from before the case's last offer-ending event of the batch, and
# not held by a dispatcher (an expired lease is a crashed one's). A dispatcher's claim and this
# statement lock the same rows: whichever comes second sees the other's committed status or lease.
# A push given up on (`failed`) is recalled too: replaying its dead letter would otherwise make it
# pending again (_STORE_JOBS) and ask the worker to accept an offer that ended meanwhile.
_RECALL = text(
    "UPDATE notifier.jobs AS j SET status = 'recalled', finished_at = coalesce(j.finished_at, :now), "
    "lease_until = NULL "
    "FROM unnest(CAST(:case_ids AS text[]), CAST(:sequences AS integer[])) AS e(case_id, sequence) "
    "WHERE j.case_id = e.case_id AND j.offer_sequence < e.sequence AND j.status IN ('pending', 'failed') "
    "AND (j.lease_until IS NULL OR j.lease_until <= :now)"
)


_WAITING = (ESCALATED, QUEUED)

_JOB_COLUMNS = (
    "ids", "event_ids", "event_types", "case_ids", "purposes", "categories", "risk_levels", "resident_refs",
    "recipients", "channels", "messages", "batchables", "due_ats", "origins", "offer_sequences",
)  # fmt: skip
# One statement text whatever the batch size (asyncpg prepares it once per connection, and
# SQLAlchemy compiles nothing per batch). A job given up before becomes pending again, unleased.
_STORE_JOBS = text(
    "INSERT INTO notifier.jobs (id, event_id, event_type, case_id, purpose, category, risk_level, resident_ref, "
    "recipient, channels, message, batchable, due_at, origin, offer_sequence, lease_until) "
    "SELECT m.id, m.event_id, m.event_type, m.case_id, m.purpose, m.category, m.risk_level, m.resident_ref, "
    "m.recipient, CAST(m.channels AS jsonb), CAST(m.message AS jsonb), m.batchable, m.due_at, m.origin, "
    "m.offer_sequence, m.lease_until FROM unnest("
    "CAST(:ids AS uuid[]), CAST(:event_ids AS uuid[]), CAST(:event_types AS text[]), CAST(:case_ids AS text[]), "
    "CAST(:purposes AS text[]), CAST(:categories AS text[]), CAST(:risk_levels AS text[]), "
    "CAST(:resident_refs AS text[]), CAST(:recipients AS text[]), CAST(:channels AS text[]), "
    "CAST(:messages AS text[]), CAST(:batchables AS boolean[]), CAST(:due_ats AS timestamptz[]), "
    "CAST(:origins AS text[]), CAST(:offer_sequences AS integer[]), CAST(:leases AS timestamptz[])) "
    "AS m(id, event_id, event_type, case_id, purpose, category, risk_level, resident_ref, recipient, channels, "
    "message, batchable, due_at, origin, offer_sequence, lease_until) "
    "ON CONFLICT (event_id, recipient) DO UPDATE SET status = 'pending', channel_index = 0, attempt = 0, "
    "lease_until = NULL, finished_at = NULL, channels = EXCLUDED.channels, due_at = EXCLUDED.due_at "
    "WHERE notifier.jobs.status = 'failed' "
    "RETURNING notifier.jobs.id, notifier.jobs.lease_until IS NOT NULL"
)


def _row(job: Job, origin: str) -> tuple[Any, ...]:
    """A job's values in the order of _JOB_COLUMNS."""
    channels = [{k: v for k, v in dataclasses.asdict(c).items() if v is not None} for c in job.channels]
    return (
        str(job.id), job.event_id, job.event_type, job.case_id, job.purpose, job.category, job.risk_level,
        job.resident_ref, job.recipient, json.dumps(channels), json.dumps(job.facts), job.batchable, job.due_at,
        origin, job.offer_sequence,
    )  # fmt: skip


async def _first_job_times(session: AsyncSession, case_ids: list[str]) -> dict[str, datetime]:
    """When each case's first push was planned: close to when it entered the network."""
    if not case_ids:
        return {}
    jobs = tables.jobs.c
    rows = await session.execute(
        select(jobs.case_id, func.min(jobs.created_at)).where(jobs.case_id.in_(set(case_ids))).group_by(jobs.case_id)
    )
    return {case_id: first for case_id, first in rows}


class _Directory:
    """The users and station channels a batch of events needs, looked up in three queries."""

    def __init__(self) -> None:
        self.users: dict[str, Recipient] = {}
        self.supervisors: dict[str, list[Recipient]] = {}
        self.stations: dict[str, Recipient] = {}

    @classmethod
    async def load(cls, session: AsyncSession, queries: Iterable[RecipientQuery]) -> _Directory:
        queries = list(queries)
        found = cls()
        user_ids = {u for q in queries for u in q.user_ids}
        supervised = {s for q in queries for s in q.supervisors_of}
        station_ids = {s for q in queries for s in q.station_channels_of}
        if user_ids:
            rows = await session.execute(select(users.c.id, users.c.notify).where(users.c.id.in_(user_ids)))
            found.users = {r.id: Recipient(r.id, "user", list(channel_configs(r.notify))) for r in rows}
        if supervised:
            rows = await session.execute(
                select(users.c.id, users.c.station_id, users.c.notify)
                .where(users.c.station_id.in_(supervised), users.c.role == "supervisor")
                .order_by(users.c.id)
            )
            for r in rows:
                found.supervisors.setdefault(r.station_id, []).append(
                    Recipient(r.id, "user", list(channel_configs(r.notify)))
                )
        if station_ids:
            rows = await session.execute(select(stations.c.id, stations.c.notify).where(stations.c.id.in_(station_ids)))
            # A station without shared channels is simply not a recipient (unlike a user without any).
            found.stations = {
                r.id: Recipient(f"station-{r.id}", "station", list(channel_configs(r.notify))) for r in rows if r.notify
            }
        return found

    def recipients(self, query: RecipientQuery) -> list[Recipient]:
        """The recipients of one event, users first, in a stable order."""
        chosen = [self.users[u] for u in query.user_ids if u in self.users]
        for station in query.supervisors_of:
            chosen += self.supervisors.get(station, [])
        chosen += [self.stations[s] for s in query.station_channels_of if s in self.stations]
        return chosen


async def claim_due(session: AsyncSession, *, now: datetime, lease_until: datetime, limit: int) -> list[Job]:
    """Take up to `limit` due jobs no live dispatcher holds, leasing them until `lease_until`.

    SKIP LOCKED lets replicas claim side by side without waiting on each other; the lease (not
    the row lock, released at commit) is what keeps a claimed job from being sent twice, and its
    expiry is what hands a crashed dispatcher's jobs to another.
    """
    jobs = tables.jobs.c
    free = (jobs.status == "pending", jobs.due_at <= now, (jobs.lease_until.is_(None)) | (jobs.lease_until <= now))
    picked = (
        select(jobs.id, jobs.recipient, jobs.purpose, jobs.batchable)
        .where(*free)
        .order_by(jobs.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("picked")
    )
    # A recipient's batchable jobs due together are one digest (sending_groups): claim the rest of
    # every digest the limit cut into, or the end of a quiet night sends one person several.
    digests = select(picked.c.recipient, picked.c.purpose).where(picked.c.batchable)
    rest_of_digests = (
        select(jobs.id)
        .where(*free, jobs.batchable, tuple_(jobs.recipient, jobs.purpose).in_(digests))
        .with_for_update(skip_locked=True)
        .cte("rest_of_digests")
    )
    claimed = await session.execute(
        update(tables.jobs)
        .where(jobs.id.in_(union(select(picked.c.id), select(rest_of_digests.c.id))))
        .values(lease_until=lease_until)
        .returning(tables.jobs)
    )
    return [_job(row._mapping) for row in claimed]


def _job(row: Any) -> Job:
    return Job(
        id=uuid.UUID(str(row["id"])),
        event_id=str(row["event_id"]),
        event_type=row["event_type"],
        case_id=row["case_id"],
        purpose=row["purpose"],
        category=row["category"],
        risk_level=row["risk_level"],
        resident_ref=row["resident_ref"],
        recipient=row["recipient"],
        channels=channel_configs(row["channels"]),
        facts=dict(row["message"]),
        due_at=row["due_at"],
        batchable=row["batchable"],
        channel_index=row["channel_index"],
        attempt=row["attempt"],
        attempts=row["attempts"],
        offer_sequence=row["offer_sequence"],
    )


async def origins_of(session: AsyncSession, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Where each job's event was read, for dead letters."""
    rows = await session.execute(
        select(tables.jobs.c.id, tables.jobs.c.origin).where(tables.jobs.c.id.in_([str(j) for j in job_ids]))
    )
    return {uuid.UUID(str(job_id)): origin for job_id, origin in rows if origin}


async def record_sends(
    session: AsyncSession, sent: list[Sent], dead_letters: dict[uuid.UUID, tuple[str, bytes | None, bytes]]
) -> None:
    """Apply each send's step to its job; log finished channels; emit the delivery events.

    `dead_letters` holds, per given-up job, its origin and the original message (key, value):
    those go to `<topic>.dlq` in this same transaction, so a push given up is never silent.
    """
    await _apply_steps(session, sent)
    await _log_deliveries(session, [item for item in sent if item.step.next != "retry"])
    events: list[tuple[str, dict[str, Any]]] = []
    letters: list[OutboxMessage] = []
    for item in sent:
        job, step = item.job, item.step
        if step.next not in ("delivered", "failed"):
            continue
        common = {
            "case_id": job.case_id,
            "category": job.category,
            "risk_level": job.risk_level,
            "resident_ref": job.resident_ref,
            "channel": item.channel,
            "recipient": job.recipient,
            "attempts": job.attempts,
            "purpose": job.purpose,
        }
        if step.next == "delivered":
            events.append(("notified", common))
            continue
        events.append(("notification_failed", {**common, "error": item.result.error}))
        if job.id in dead_letters:
            origin, key, value = dead_letters[job.id]
            error = f"push to {job.recipient} given up after {job.attempts} attempts: {item.result.error}"
            headers = {"x-error": error[:1000], "x-origin": origin, "x-consumer": CONSUMER}
            letters.append(OutboxMessage(dlq(origin.rsplit("/", 2)[0]), key, value, headers))
    await emit_case_events(session, events, source=SOURCE)
    await enqueue_many(session, letters)


# One statement text whatever the batch size, as _STORE_JOBS (an executemany ran one UPDATE per job).
_APPLY_STEPS = text(
    "UPDATE notifier.jobs AS j SET status = s.status, channel_index = s.channel_index, attempt = s.attempt, "
    "attempts = s.attempts, due_at = s.due_at, finished_at = s.finished_at, lease_until = NULL "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:statuses AS text[]), CAST(:indexes AS integer[]), "
    "CAST(:attempt AS integer[]), CAST(:attempts AS integer[]), CAST(:dues AS timestamptz[]), "
    "CAST(:finished AS timestamptz[])) AS s(id, status, channel_index, attempt, attempts, due_at, finished_at) "
    "WHERE j.id = s.id"
)


async def _apply_steps(session: AsyncSession, sent: list[Sent]) -> None:
    """Move every job to its next step, in one statement (a job sent twice in the batch: its last step)."""
    steps = {item.job.id: item for item in sent}
    if not steps:
        return
    columns: dict[str, list[Any]] = {
        name: [] for name in ("ids", "statuses", "indexes", "attempt", "attempts", "dues", "finished")
    }
    for item in steps.values():
        job, step = item.job, item.step
        finished = step.next in ("delivered", "failed")
        columns["ids"].append(str(job.id))
        columns["statuses"].append(step.next if finished else "pending")
        columns["indexes"].append(step.channel_index)
        columns["attempt"].append(step.attempt)
        columns["attempts"].append(job.attempts)
        columns["dues"].append(job.due_at if finished else step.due_at)
        columns["finished"].append(step.due_at if finished else None)
    await session.execute(_APPLY_STEPS, columns)


async def _log_deliveries(session: AsyncSession, finished: list[Sent]) -> None:
    """Log each channel that is done with (delivered, or failed before a fallback or for good)."""
    if not finished:
        return
    rows = [
        {
            "delivery_id": str(item.job.delivery_id),
            "event_id": item.job.event_id,
            "case_id": item.job.case_id,
            "purpose": item.job.purpose,
            "recipient": item.job.recipient,
            "channel": item.channel,
            "status": "delivered" if item.step.next == "delivered" else "failed",
            "attempts": item.job.attempt,
            "last_error": item.result.error,
            "batch_id": str(item.batch_id) if item.batch_id else None,
        }
        for item in finished
    ]
    # One row per delivery id: a job re-claimed after its lease ran out may be here twice.
    rows = list({row["delivery_id"]: row for row in rows}.values())
    await session.execute(_LOG_DELIVERIES, {name: [row[name] for row in rows] for name in rows[0]})


# A replayed job sends again: its log rows show the latest outcome.
_LOG_DELIVERIES = text(
    "INSERT INTO notifier.deliveries (delivery_id, event_id, case_id, purpose, recipient, channel, status, "
    "attempts, last_error, batch_id) SELECT * FROM unnest(CAST(:delivery_id AS uuid[]), CAST(:event_id AS uuid[]), "
    "CAST(:case_id AS text[]), CAST(:purpose AS text[]), CAST(:recipient AS text[]), CAST(:channel AS text[]), "
    "CAST(:status AS text[]), CAST(:attempts AS integer[]), CAST(:last_error AS text[]), CAST(:batch_id AS uuid[])) "
    "ON CONFLICT (delivery_id) DO UPDATE SET status = EXCLUDED.status, attempts = EXCLUDED.attempts, "
    "last_error = EXCLUDED.last_error, batch_id = EXCLUDED.batch_id"
)
