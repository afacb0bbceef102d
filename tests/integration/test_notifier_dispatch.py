"""The notifier's jobs and dispatcher on a real PostgreSQL, pushing to real local HTTP receivers,
with a clock the test moves: retries, fallback, dead letters, dedupe, digests, quiet hours, and a
slow receiver that must not hold up anyone else."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Collection, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from schemas.events import CaseEvent, new_event
from services.notifier import dispatcher as dispatch_module
from services.notifier.channels import build_channels
from services.notifier.dispatcher import Dispatcher
from services.notifier.domain import NoisePolicy, RetryPolicy
from services.notifier.handlers import Incoming, Lease, Stored, store_jobs
from services.shared.db import transaction
from services.shared.embedded import start_postgres
from services.shared.migrate import upgrade_async
from services.shared.settings import quiet_hours_window
from tests.support.scripted_receiver import ScriptedReceiver

pytestmark = pytest.mark.integration

FAST = RetryPolicy(attempts=3, base_delay=2.0, max_delay=60.0, jitter=0.0)
START = datetime(2026, 11, 23, 1, 3, tzinfo=UTC)  # 09:03 in Beijing
ORIGIN_KEY, ORIGIN_VALUE = b"case-key", b'{"the": "original event"}'


class Clock:
    """Time as the test says it is."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_postgres(tmp_path_factory.mktemp("notifier"))
    try:
        asyncio.run(upgrade_async(url))
        yield url
    finally:
        process.stop()


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_async_engine(database_url)
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    await conn.execute(
        "TRUNCATE notifier.jobs, notifier.deliveries, shared.outbox, shared.case_heads, shared.users, "
        "shared.stations CASCADE"
    )
    await conn.execute("INSERT INTO shared.stations (id, name, tier) VALUES ('T-1', 'T', 'township')")
    yield conn
    await conn.close()


@pytest.fixture
async def receivers() -> AsyncIterator[dict[str, ScriptedReceiver]]:
    made = {name: ScriptedReceiver(default={"ok": True}) for name in ("fast", "slow", "backup", "sup")}
    for receiver in made.values():
        await receiver.start()
    yield made
    for receiver in made.values():
        await receiver.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


async def add_user(db: asyncpg.Connection, user_id: str, role: str, *urls: str) -> None:
    notify = json.dumps([{"channel": "webhook", "url": url} for url in urls])
    await db.execute(
        "INSERT INTO shared.users (id, name, role, station_id, notify) VALUES ($1, $1, $2, 'T-1', $3::jsonb)",
        user_id,
        role,
        notify,
    )


def case_data(case_id: str, risk: str, **extra: Any) -> dict[str, Any]:
    return {
        "case_id": case_id,
        "tier": "township",
        "station_id": "T-1",
        "category": "elderly_care",
        "risk_level": risk,
        "resident_ref": "rr-1",
        "sequence": 3,
        **extra,
    }


def assigned(case_id: str, worker: str, risk: str = "medium") -> CaseEvent:
    accept_by = (datetime.now(UTC) + timedelta(hours=3)).isoformat()  # a task is pushed only before it lapses
    data = case_data(case_id, risk, status="offered", worker_id=worker, accept_by=accept_by)
    return new_event("assigned", source="caselink/router", data={**data, "candidates_considered": 1, "score": 1.0})


def escalated(case_id: str, risk: str) -> CaseEvent:
    data = case_data(
        case_id, risk, status="escalated", from_tier="village", from_station_id="V-1", reason="no_capacity"
    )
    return new_event("escalated", source="caselink/router", data=data)


async def store(
    sessions: async_sessionmaker[AsyncSession],
    db: asyncpg.Connection,
    clock: Clock,
    *events: CaseEvent,
    noise: NoisePolicy | None = None,
) -> int:
    """Store the events' jobs for a claim; how many are new."""
    return (await store_leased(sessions, db, clock, *events, noise=noise)).new


async def store_leased(
    sessions: async_sessionmaker[AsyncSession],
    db: asyncpg.Connection,
    clock: Clock,
    *events: CaseEvent,
    noise: NoisePolicy | None = None,
    lease: Lease | None = None,
) -> Stored:
    for event in events:
        await db.execute(
            "INSERT INTO shared.case_heads (case_id, last_sequence, status, tier, station_id) "
            "VALUES ($1, 3, 'offered', 'township', 'T-1') ON CONFLICT DO NOTHING",
            event.subject,
        )
    batch = [Incoming(event, f"caselink.case.events/0/{n}") for n, event in enumerate(events)]
    async with transaction(sessions) as session:
        return await store_jobs(session, batch, now=clock(), noise=noise or NoisePolicy(digest_minutes=0), lease=lease)


def dispatcher(
    sessions: async_sessionmaker[AsyncSession], http: httpx.AsyncClient, clock: Clock, **options: Any
) -> Dispatcher:
    async def read_origins(origins: Collection[str]) -> dict[str, tuple[bytes | None, bytes]]:
        return dict.fromkeys(origins, (ORIGIN_KEY, ORIGIN_VALUE))

    channels = build_channels(http, timeout=options.pop("timeout", 5.0))
    return Dispatcher(sessions, channels, options.pop("retry", FAST), read_origins=read_origins, clock=clock, **options)


async def outbox(db: asyncpg.Connection, ce_type: str | None = None, topic: str = "caselink.case.events") -> list[Any]:
    rows = await db.fetch("SELECT topic, key, payload, headers FROM shared.outbox WHERE topic = $1 ORDER BY id", topic)
    found = [(json.loads(r["payload"]) if topic == "caselink.case.events" else r["payload"], r) for r in rows]
    if ce_type is None:
        return found
    return [payload for payload, _ in found if payload["type"] == f"caselink.case.{ce_type}.v1"]


async def test_a_task_is_pushed_once_even_when_its_event_is_delivered_again(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    clock = Clock(START)
    await add_user(db, "w-1", "worker", receivers["fast"].url)
    event = assigned("c-1", "w-1")
    assert await store(sessions, db, clock, event) == 1
    assert await store(sessions, db, clock, event) == 0  # the redelivery adds no job
    sender = dispatcher(sessions, http, clock)

    assert await sender.run_once() == 1
    assert await sender.run_once() == 0
    assert len(receivers["fast"].requests) == 1
    [notified] = await outbox(db, "notified")
    assert (
        notified["data"] | {"channel": "webhook", "recipient": "w-1", "attempts": 1, "purpose": "task"}
        == (notified["data"])
    )
    [log] = await db.fetch("SELECT status, attempts, batch_id FROM notifier.deliveries")
    assert (log["status"], log["attempts"], log["batch_id"]) == ("delivered", 1, None)


async def test_a_failing_receiver_is_retried_with_backoff_then_delivered(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    clock = Clock(START)
    receivers["fast"].fail(2, 503)
    await add_user(db, "w-1", "worker", receivers["fast"].url)
    await store(sessions, db, clock, assigned("c-1", "w-1"))
    sender = dispatcher(sessions, http, clock)

    assert await sender.run_once() == 1  # 503
    clock.advance(seconds=1.9)
    assert await sender.run_once() == 0  # the first backoff (2 s) has not passed
    clock.advance(seconds=0.1)
    assert await sender.run_once() == 1  # 503 again; next wait 4 s
    clock.advance(seconds=4)
    assert await sender.run_once() == 1  # delivered

    delivery_ids = {r.headers["x-caselink-delivery"] for r in receivers["fast"].requests}
    assert len(receivers["fast"].requests) == 3 and len(delivery_ids) == 1
    [notified] = await outbox(db, "notified")
    assert notified["data"]["attempts"] == 3
    assert await outbox(db, "notification_failed") == []


async def test_a_push_given_up_is_reported_and_dead_lettered_with_its_origin(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    clock = Clock(START)
    receivers["fast"].fail(10, 503)
    await add_user(db, "w-1", "worker", receivers["fast"].url)
    await store(sessions, db, clock, assigned("c-1", "w-1"))
    sender = dispatcher(sessions, http, clock)

    for _ in range(3):
        assert await sender.run_once() == 1
        clock.advance(seconds=60)
    assert await sender.run_once() == 0

    [failure] = await outbox(db, "notification_failed")
    assert failure["data"]["attempts"] == 3 and "503" in failure["data"]["error"]
    [(payload, row)] = await outbox(db, topic="caselink.case.events.dlq")
    assert (bytes(row["key"]), bytes(payload)) == (ORIGIN_KEY, ORIGIN_VALUE)
    headers = json.loads(row["headers"]) if isinstance(row["headers"], str) else row["headers"]
    assert headers["x-origin"] == "caselink.case.events/0/0" and "503" in headers["x-error"]


async def test_a_dead_lettered_push_replayed_after_the_fix_goes_out(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    clock = Clock(START)
    await add_user(db, "w-1", "worker", "http://127.0.0.1:9/nobody-listens")
    event = assigned("c-1", "w-1")
    await store(sessions, db, clock, event)
    sender = dispatcher(sessions, http, clock, retry=RetryPolicy(attempts=1))
    await sender.run_once()
    assert len(await outbox(db, "notification_failed")) == 1

    # The network file is corrected, and the dead letter replayed onto the topic.
    await db.execute(
        "UPDATE shared.users SET notify = $1::jsonb", json.dumps([{"channel": "webhook", "url": receivers["fast"].url}])
    )
    assert await store(sessions, db, clock, event) == 1
    assert await sender.run_once() == 1
    assert len(receivers["fast"].requests) == 1 and len(await outbox(db, "notified")) == 1


@pytest.mark.parametrize(("risk", "sends_before_fallback"), [("critical", 1), ("medium", 3)])
async def test_the_next_channel_is_tried_when_one_fails_at_once_for_critical_cases(
    sessions: async_sessionmaker[AsyncSession],
    db: asyncpg.Connection,
    receivers: Any,
    http: httpx.AsyncClient,
    risk: str,
    sends_before_fallback: int,
) -> None:
    clock = Clock(START)
    receivers["fast"].fail(10, 503)
    await add_user(db, "w-1", "worker", receivers["fast"].url, receivers["backup"].url)
    await store(sessions, db, clock, assigned("c-1", "w-1", risk))
    sender = dispatcher(sessions, http, clock)

    for _ in range(10):
        await sender.run_once()
        if receivers["backup"].requests:
            break
        clock.advance(seconds=60)

    assert len(receivers["fast"].requests) == sends_before_fallback
    assert len(receivers["backup"].requests) == 1
    [notified] = await outbox(db, "notified")
    assert (notified["data"]["attempts"], notified["data"]["channel"]) == (sends_before_fallback + 1, "webhook")
    logged = await db.fetch("SELECT status FROM notifier.deliveries ORDER BY created_at, status")
    assert sorted(r["status"] for r in logged) == ["delivered", "failed"]


async def test_a_recipient_without_channels_is_reported_as_failed(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, http: httpx.AsyncClient
) -> None:
    clock = Clock(START)
    await add_user(db, "w-1", "worker")
    await store(sessions, db, clock, assigned("c-1", "w-1"))
    assert await dispatcher(sessions, http, clock).run_once() == 1
    [failure] = await outbox(db, "notification_failed")
    assert (failure["data"]["channel"], failure["data"]["attempts"]) == ("none", 0)
    assert "no notify channel" in failure["data"]["error"]


async def test_low_and_medium_escalations_reach_a_supervisor_as_one_digest_per_window(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    clock = Clock(START)  # 09:03 Beijing: the window closes at 09:10
    noise = NoisePolicy(digest_minutes=10)
    await add_user(db, "s-1", "supervisor", receivers["sup"].url)
    await store(sessions, db, clock, escalated("c-1", "low"), escalated("c-2", "medium"), noise=noise)
    clock.advance(minutes=2)
    await store(sessions, db, clock, escalated("c-3", "medium"), noise=noise)
    await store(sessions, db, clock, escalated("c-9", "critical"), noise=noise)
    sender = dispatcher(sessions, http, clock)

    assert await sender.run_once() == 1  # the critical one, at once
    assert "c-9" in receivers["sup"].json(0)["case_id"]
    clock.advance(minutes=4, seconds=59)  # 09:09:59
    assert await sender.run_once() == 0
    clock.advance(seconds=1)  # 09:10
    assert await sender.run_once() == 3

    assert len(receivers["sup"].requests) == 2
    digest = receivers["sup"].json(1)
    assert digest["count"] == 3 and {i["case_id"] for i in digest["items"]} == {"c-1", "c-2", "c-3"}
    assert digest["text"].startswith("汇总提醒：共 3 条") and "已等待" in digest["text"]
    notified = await outbox(db, "notified")
    assert sorted(n["data"]["case_id"] for n in notified) == ["c-1", "c-2", "c-3", "c-9"]
    batches = await db.fetch("SELECT DISTINCT batch_id FROM notifier.deliveries WHERE batch_id IS NOT NULL")
    assert [str(b["batch_id"]) for b in batches] == [digest["delivery_id"]]


async def test_a_crisis_notice_reaches_the_named_stations_supervisors_and_shared_channels(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    clock = Clock(START)
    await add_user(db, "s-1", "supervisor", receivers["sup"].url)
    channels = json.dumps([{"channel": "webhook", "url": receivers["backup"].url}])
    await db.execute("UPDATE shared.stations SET notify = $1::jsonb WHERE id = 'T-1'", channels)
    data = case_data("c-1", "critical", status="routed", rule="crisis", reason="risk critical", notify_stations=["T-1"])
    await store(sessions, db, clock, new_event("routed", source="caselink/router", data=data))

    assert await dispatcher(sessions, http, clock).run_once() == 2
    assert len(receivers["sup"].requests) == len(receivers["backup"].requests) == 1
    notified = await outbox(db, "notified")
    assert sorted(n["data"]["recipient"] for n in notified) == ["s-1", "station-T-1"]
    assert {n["data"]["purpose"] for n in notified} == {"escalation"}


async def test_a_claim_cut_short_by_its_limit_still_sends_each_supervisor_one_digest(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    clock = Clock(START)  # 09:03 Beijing: the window closes at 09:10
    noise = NoisePolicy(digest_minutes=10)
    await add_user(db, "s-1", "supervisor", receivers["sup"].url)
    await add_user(db, "s-2", "supervisor", receivers["backup"].url)
    await store(sessions, db, clock, *(escalated(f"c-{n}", "low") for n in range(6)), noise=noise)
    clock.advance(minutes=7)

    assert await dispatcher(sessions, http, clock, batch_size=4).run_once() == 12

    for receiver in (receivers["sup"], receivers["backup"]):
        assert len(receiver.requests) == 1, [r.get("count") for r in map(receiver.json, range(len(receiver.requests)))]
        assert receiver.json(0)["count"] == 6


async def test_quiet_hours_hold_non_critical_pushes_until_morning_but_never_critical_ones(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    clock = Clock(datetime(2026, 11, 22, 15, 30, tzinfo=UTC))  # 23:30 Beijing
    noise = NoisePolicy(0, *quiet_hours_window("22:00-07:00"))
    await add_user(db, "w-1", "worker", receivers["fast"].url)
    await store(sessions, db, clock, assigned("c-1", "w-1", "medium"), assigned("c-2", "w-1", "high"), noise=noise)
    await store(sessions, db, clock, assigned("c-3", "w-1", "critical"), noise=noise)
    sender = dispatcher(sessions, http, clock)

    assert await sender.run_once() == 1
    assert receivers["fast"].json(0)["case_id"] == "c-3"
    clock.now = datetime(2026, 11, 22, 22, 59, 59, tzinfo=UTC)  # 06:59:59 Beijing
    assert await sender.run_once() == 0
    clock.advance(seconds=1)
    assert await sender.run_once() == 2
    morning = receivers["fast"].json(1)
    assert morning["count"] == 2 and morning["risk_level"] == "high"


async def test_a_slow_receiver_does_not_delay_pushes_to_anyone_else(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    receivers["slow"].delay = 3.0
    await add_user(db, "w-slow", "worker", receivers["slow"].url)
    await add_user(db, "w-fast", "worker", receivers["fast"].url)
    clock = Clock(datetime.now(UTC))
    sender = dispatcher(sessions, http, lambda: datetime.now(UTC), poll_interval=0.05)
    await sender.start()
    try:
        began = time.monotonic()
        await store(sessions, db, clock, *(assigned(f"c-s{n}", "w-slow") for n in range(5)))
        sender.wake()
        await asyncio.sleep(0.3)  # the slow pushes are in flight now
        clock.now = datetime.now(UTC)
        await store(sessions, db, clock, *(assigned(f"c-f{n}", "w-fast") for n in range(20)))
        sender.wake()
        fast_stored = time.monotonic()
        await receivers["fast"].wait_for_requests(20)
        fast_done = max(r.at for r in receivers["fast"].requests) - fast_stored
        for _ in range(300):
            if len(await outbox(db, "notified")) == 25:
                break
            await asyncio.sleep(0.05)
    finally:
        await sender.stop()
    slow_done = min(r.at for r in receivers["slow"].requests) - began
    print(f"20 pushes to a fast receiver took {fast_done * 1000:.0f} ms while 5 to a 3 s receiver were in flight")
    assert len(receivers["fast"].requests) == 20 and len(receivers["slow"].requests) == 5
    assert fast_done < 1.0, fast_done
    assert slow_done < 1.0  # the slow receiver got its requests at once too; only its answers were slow
    assert len(await outbox(db, "notified")) == 25


async def test_stopping_lets_sends_in_flight_finish_and_records_them(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    receivers["slow"].delay = 1.0
    await add_user(db, "w-slow", "worker", receivers["slow"].url)
    sender = dispatcher(sessions, http, lambda: datetime.now(UTC), poll_interval=0.05)
    await sender.start()
    await store(sessions, db, Clock(datetime.now(UTC)), assigned("c-1", "w-slow"))
    sender.wake()
    await receivers["slow"].wait_for_requests(1)
    await sender.stop()
    [job] = await db.fetch("SELECT status, lease_until FROM notifier.jobs")
    assert (job["status"], job["lease_until"]) == ("delivered", None)
    assert len(await outbox(db, "notified")) == 1


async def test_no_more_jobs_are_claimed_while_the_recorder_is_behind(
    sessions: async_sessionmaker[AsyncSession],
    db: asyncpg.Connection,
    receivers: Any,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sent but not recorded, a job stays leased; if claiming went on while the database is slow
    to record, the leases of what waits would run out and those pushes go out twice."""
    await add_user(db, "w-fast", "worker", receivers["fast"].url)
    recording = asyncio.Event()
    record_sends = dispatch_module.record_sends

    async def slow_record(*args: Any) -> None:
        await recording.wait()
        await record_sends(*args)

    monkeypatch.setattr(dispatch_module, "record_sends", slow_record)
    sender = dispatcher(sessions, http, lambda: datetime.now(UTC), poll_interval=0.05, max_unrecorded=5)
    await sender.start()
    try:
        await store(sessions, db, Clock(datetime.now(UTC)), *(assigned(f"c-{n}", "w-fast") for n in range(12)))
        sender.wake()
        await receivers["fast"].wait_for_requests(5)
        await asyncio.sleep(0.5)  # several polls
        assert len(receivers["fast"].requests) == 5
        recording.set()
        await receivers["fast"].wait_for_requests(12)
    finally:
        await sender.stop()
    assert len(receivers["fast"].requests) == 12
    assert {r["status"] for r in await db.fetch("SELECT status FROM notifier.jobs")} == {"delivered"}


async def wait_for_notified(db: asyncpg.Connection, count: int) -> None:
    """Until `count` sends were recorded (a `notified` event each), for up to 5 s."""
    for _ in range(100):
        if len(await outbox(db, "notified")) >= count:
            return
        await asyncio.sleep(0.05)


def counting_claims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many jobs each of the dispatchers' claims took, from now on."""
    taken: list[int] = []
    claim_due = dispatch_module.claim_due

    async def counted(*args: Any, **kwargs: Any) -> list[Any]:
        jobs = await claim_due(*args, **kwargs)
        taken.append(len(jobs))
        return jobs

    monkeypatch.setattr(dispatch_module, "claim_due", counted)
    return taken


async def test_jobs_due_now_are_stored_leased_to_the_dispatcher_and_sent_without_a_claim(
    sessions: async_sessionmaker[AsyncSession],
    db: asyncpg.Connection,
    receivers: Any,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await add_user(db, "w-fast", "worker", receivers["fast"].url)
    claims = counting_claims(monkeypatch)
    sender = dispatcher(sessions, http, lambda: datetime.now(UTC), poll_interval=0.05)
    assert sender.reserve() is None  # not running: nothing to hand jobs to
    await sender.start()
    try:
        lease = sender.reserve()
        assert lease is not None and lease.room == 200  # max_in_flight
        stored = await store_leased(
            sessions, db, Clock(datetime.now(UTC)), *(assigned(f"c-{n}", "w-fast") for n in range(3)), lease=lease
        )
        assert (stored.new, len(stored.leased), stored.to_claim) == (3, 3, False)
        # Another replica's dispatcher does not take them: they are leased.
        assert await dispatcher(sessions, http, lambda: datetime.now(UTC)).run_once() == 0
        sender.take(lease, stored.leased)
        await receivers["fast"].wait_for_requests(3)
        await wait_for_notified(db, 3)
    finally:
        await sender.stop()
    assert sender.reserve() is None  # stopped
    assert len(receivers["fast"].requests) == 3 and len(await outbox(db, "notified")) == 3
    jobs = await db.fetch("SELECT status, lease_until FROM notifier.jobs")
    assert {(j["status"], j["lease_until"]) for j in jobs} == {("delivered", None)}
    assert sum(claims) == 0  # the claims that ran (polls) found nothing to take


async def test_jobs_beyond_the_dispatchers_room_are_left_for_its_claim(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    await add_user(db, "w-fast", "worker", receivers["fast"].url)
    sender = dispatcher(sessions, http, lambda: datetime.now(UTC), poll_interval=0.05, max_in_flight=2)
    await sender.start()
    try:
        lease = sender.reserve()
        assert lease is not None and lease.room == 2
        assert sender.reserve() is None  # the room is reserved until taken
        stored = await store_leased(
            sessions, db, Clock(datetime.now(UTC)), *(assigned(f"c-{n}", "w-fast") for n in range(5)), lease=lease
        )
        assert (stored.new, len(stored.leased), stored.to_claim) == (5, 2, True)
        sender.take(lease, stored.leased)
        sender.wake()
        await receivers["fast"].wait_for_requests(5)
        await wait_for_notified(db, 5)
    finally:
        await sender.stop()
    assert sorted(r["case_id"] for r in (receivers["fast"].json(n) for n in range(5))) == [f"c-{n}" for n in range(5)]
    assert len(await outbox(db, "notified")) == 5


async def test_a_lease_never_taken_runs_out_and_its_jobs_are_claimed(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    """The notifier died after storing leased jobs and before sending them."""
    clock = Clock(START)
    await add_user(db, "w-1", "worker", receivers["fast"].url)
    stored = await store_leased(
        sessions, db, clock, assigned("c-1", "w-1"), lease=Lease(until=START + timedelta(seconds=60), room=10)
    )
    assert len(stored.leased) == 1
    sender = dispatcher(sessions, http, clock)
    assert await sender.run_once() == 0
    clock.advance(seconds=60)
    assert await sender.run_once() == 1
    assert len(receivers["fast"].requests) == 1 and len(await outbox(db, "notified")) == 1


async def test_only_new_jobs_due_now_are_leased(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    """A digest's or a quiet night's job waits for its time, and a job revived from a dead letter
    keeps its stored state: both are claimed, never leased at store time."""
    clock = Clock(START)
    lease = Lease(until=START + timedelta(seconds=60), room=10)
    await add_user(db, "s-1", "supervisor", receivers["sup"].url)
    digest = await store_leased(sessions, db, clock, escalated("c-1", "low"), noise=NoisePolicy(10), lease=lease)
    assert (digest.new, digest.leased, digest.to_claim) == (1, [], True)

    await add_user(db, "w-1", "worker", "http://127.0.0.1:9/nobody-listens")
    event = assigned("c-2", "w-1")
    await store(sessions, db, clock, event)
    assert await dispatcher(sessions, http, clock, retry=RetryPolicy(attempts=1)).run_once() == 1  # given up
    revived = await store_leased(sessions, db, clock, event, lease=lease)
    assert (revived.new, revived.leased, revived.to_claim) == (1, [], True)
    [job] = await db.fetch("SELECT status, lease_until FROM notifier.jobs WHERE case_id = 'c-2'")
    assert (job["status"], job["lease_until"]) == ("pending", None)


async def test_stopping_waits_for_a_lease_being_stored_and_sends_its_jobs(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    """The service stops its dispatcher before its consumer: a batch storing under a lease meanwhile
    still has its pushes sent and recorded, not left leased for a minute."""
    await add_user(db, "w-fast", "worker", receivers["fast"].url)
    sender = dispatcher(sessions, http, lambda: datetime.now(UTC), poll_interval=0.05)
    await sender.start()
    lease = sender.reserve()
    assert lease is not None
    stopping = asyncio.create_task(sender.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done()
    stored = await store_leased(sessions, db, Clock(datetime.now(UTC)), assigned("c-1", "w-fast"), lease=lease)
    sender.take(lease, stored.leased)
    await asyncio.wait_for(stopping, 10)
    [job] = await db.fetch("SELECT status, lease_until FROM notifier.jobs")
    assert (job["status"], job["lease_until"]) == ("delivered", None)
    assert len(receivers["fast"].requests) == 1 and len(await outbox(db, "notified")) == 1


# ---------------------------------------------------------------- pushes about an offer that ended


def offer_ended(case_id: str, worker: str, how: str, sequence: int) -> CaseEvent:
    """The worker declined, or the offer lapsed or was withdrawn (the case is routed again)."""
    extra = {"reason": "not my area"} if how == "declined" else {}
    data = case_data(case_id, "low", status="routed", worker_id=worker, sequence=sequence, **extra)
    return new_event(how, source="caselink/router", data=data)


async def job_statuses(db: asyncpg.Connection) -> dict[str, str]:
    return {r["case_id"]: r["status"] for r in await db.fetch("SELECT case_id, status FROM notifier.jobs")}


async def test_a_task_held_for_the_morning_is_recalled_when_its_offer_is_withdrawn_in_the_night(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    clock = Clock(datetime(2026, 11, 22, 15, 30, tzinfo=UTC))  # 23:30 Beijing; a low-risk offer runs 24 h
    noise = NoisePolicy(0, *quiet_hours_window("22:00-07:00"))
    await add_user(db, "w-1", "worker", receivers["fast"].url)
    await store(sessions, db, clock, assigned("c-1", "w-1", "low"), assigned("c-2", "w-1", "low"), noise=noise)
    clock.advance(minutes=30)  # w-1 goes off duty: the router withdraws the offer of c-1
    await store(sessions, db, clock, offer_ended("c-1", "w-1", "offer_expired", sequence=4), noise=noise)
    assert await job_statuses(db) == {"c-1": "recalled", "c-2": "pending"}

    clock.now = datetime(2026, 11, 22, 23, 0, tzinfo=UTC)  # 07:00 Beijing
    assert await dispatcher(sessions, http, clock).run_once() == 1
    assert [r["case_id"] for r in (receivers["fast"].json(n) for n in range(len(receivers["fast"].requests)))] == [
        "c-2"
    ]
    assert [e["data"]["case_id"] for e in await outbox(db, "notified")] == ["c-2"]


async def test_a_task_waiting_out_a_receivers_retries_is_recalled_when_a_supervisor_moves_the_case(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    clock = Clock(START)
    receivers["fast"].fail(10, 503)
    await add_user(db, "w-1", "worker", receivers["fast"].url)
    await store(sessions, db, clock, assigned("c-1", "w-1"))
    sender = dispatcher(sessions, http, clock)
    assert await sender.run_once() == 1  # 503: retried in 2 s

    moved = case_data("c-1", "medium", status="escalated", sequence=5, from_tier="township", from_station_id="T-1")
    await store(
        sessions, db, clock, new_event("escalated", source="caselink/router", data=moved | {"reason": "manual"})
    )
    clock.advance(seconds=10)
    assert await sender.run_once() == 0
    assert len(receivers["fast"].requests) == 1
    assert await job_statuses(db) == {"c-1": "recalled"}
    assert await outbox(db, "notification_failed") == []  # recalled is not given up: nothing to report


async def test_a_task_whose_offer_ends_in_the_same_batch_is_neither_leased_nor_sent(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    clock = Clock(START)
    await add_user(db, "w-1", "worker", receivers["fast"].url)
    task, declined = assigned("c-1", "w-1"), offer_ended("c-1", "w-1", "declined", sequence=4)
    lease = Lease(until=START + timedelta(seconds=60), room=5)
    stored = await store_leased(sessions, db, clock, task, declined, lease=lease)
    assert (stored.new, stored.leased, stored.to_claim) == (0, [], False)
    assert await store(sessions, db, clock, task) == 0  # redelivered later: still recalled, not revived
    assert await dispatcher(sessions, http, clock).run_once() == 0
    assert receivers["fast"].requests == [] and await job_statuses(db) == {"c-1": "recalled"}


async def test_an_escalation_whose_case_was_offered_in_the_same_batch_asks_nobody_to_assign_it(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    # The router escalated the case and offered it at the new tier in one transaction.
    clock = Clock(START)
    await add_user(db, "s-1", "supervisor", receivers["sup"].url)
    await add_user(db, "w-1", "worker", receivers["fast"].url)
    up = escalated("c-1", "critical")
    task = assigned("c-1", "w-1", "critical")
    task = task.model_copy(update={"data": task.data.model_copy(update={"sequence": 4})})
    assert await store(sessions, db, clock, up, task) == 1  # the task only

    assert await dispatcher(sessions, http, clock).run_once() == 1
    assert receivers["sup"].requests == [] and len(receivers["fast"].requests) == 1
    statuses = await db.fetch("SELECT purpose, status FROM notifier.jobs WHERE case_id = 'c-1' ORDER BY purpose")
    assert [tuple(r) for r in statuses] == [("escalation", "recalled"), ("task", "delivered")]


async def test_a_task_already_handed_to_a_dispatcher_is_left_to_it(
    sessions: async_sessionmaker[AsyncSession], db: asyncpg.Connection, receivers: Any, http: httpx.AsyncClient
) -> None:
    clock = Clock(START)
    await add_user(db, "w-1", "worker", receivers["fast"].url)
    stored = await store_leased(
        sessions, db, clock, assigned("c-1", "w-1"), lease=Lease(until=START + timedelta(seconds=60), room=5)
    )
    await store(sessions, db, clock, offer_ended("c-1", "w-1", "declined", sequence=4))
    assert len(stored.leased) == 1 and await job_statuses(db) == {"c-1": "pending"}  # on its way: not recalled
