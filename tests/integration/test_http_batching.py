"""POST /v1/referrals' group commit against a real PostgreSQL: requests that arrive while a batch is
being written are stored together in one transaction, each with its own answer — its own case,
the case of an earlier request with its key, or its own refusal — and one bad request never costs
the others theirs. The app runs in-process (no broker needed: the batch stops at the outbox)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from services.intake import handlers
from services.intake.access import TokenCache, confirm_caller
from services.intake.api import router
from services.intake.batching import GroupCommit
from services.intake.errors import install_error_handlers
from services.intake.referral_batch import HttpSubmission
from services.shared.db import asyncpg_dsn, create_engine, session_factory, transaction
from services.shared.demo import demo_network
from services.shared.directory import create_token, hash_token, load_network
from services.shared.embedded import start_infrastructure
from services.shared.migrate import upgrade_async
from services.shared.settings import Settings
from tests.support.api_client import ROOM, ROOM_WORKER, referral

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SYSTEM = "sys-portal"
DOOMED = "a second token of the room worker"
POISON = "poison: the database refuses this summary"


@dataclass
class Db:
    url: str
    tokens: dict[str, str]

    async def sql(self, query: str, *params: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(asyncpg_dsn(self.url))
        try:
            return list(await conn.fetch(query, *params))
        finally:
            await conn.close()


@pytest_asyncio.fixture(scope="module")
async def db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Db]:
    infra = start_infrastructure(Path(tmp_path_factory.mktemp("batching")), kafka_bootstrap="127.0.0.1:9")
    try:
        await upgrade_async(infra.database_url)
        engine = create_engine(Settings(database_url=infra.database_url))
        async with transaction(session_factory(engine)) as session:
            await load_network(session, demo_network())
            tokens = {user: await create_token(session, user_id=user) for user in (ROOM_WORKER, SYSTEM)}
            tokens[DOOMED] = await create_token(session, user_id=ROOM_WORKER)  # revoked by a test
        await engine.dispose()
        db = Db(infra.database_url, tokens)
        # A real database error for one kind of request: the guilty item of a batch.
        await db.sql(
            "CREATE FUNCTION intake.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.summary = '{POISON}' THEN RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END $$"
        )
        await db.sql(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON intake.cases "
            "FOR EACH ROW EXECUTE FUNCTION intake.refuse_poison()"
        )
        yield db
    finally:
        infra.stop()


class HeldWriter:
    """The app's batch writer, which can be held so that requests pile up into one batch."""

    def __init__(self, sessions: Any, resident_key: str) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.sizes: list[int] = []
        self.received = 0  # items handed to the writer so far, held or not
        self._sessions, self._key = sessions, resident_key

    async def __call__(self, items: Sequence[HttpSubmission]) -> list[Any]:
        self.received += len(items)
        await self.open.wait()
        self.sizes.append(len(items))
        return await handlers.write_http_batch(self._sessions, items, resident_key=self._key)


@dataclass
class App:
    client: httpx.AsyncClient
    writer: HeldWriter
    commit: GroupCommit[HttpSubmission, Any]
    db: Db

    async def post(self, body: dict[str, Any], *, user: str = ROOM_WORKER, key: str | None = None,
                   token: str | None = None) -> httpx.Response:  # fmt: skip
        headers = {"Authorization": f"Bearer {token or self.db.tokens[user]}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return await self.client.post("/v1/referrals", json=body, headers=headers)

    async def queued(self, count: int, *, since: int) -> None:
        """Wait until `count` requests (counted from `since`, an earlier `writer.received`) reached
        the writer: in the batch it holds, or waiting for the next (a loaded machine is slow)."""
        deadline = time.monotonic() + 10
        while self.writer.received - since + self.commit.waiting < count:
            assert time.monotonic() < deadline, f"only {self.writer.received - since + self.commit.waiting} queued"
            await asyncio.sleep(0.01)

    async def pile_up(self, count: int, summary: str) -> list[asyncio.Task[httpx.Response]]:
        """Hold the writer and send `count` referrals with this summary; return once all reached it."""
        self.writer.open.clear()
        since = self.writer.received
        tasks = [asyncio.create_task(self.post(referral(summary=summary))) for _ in range(count)]
        await self.queued(count, since=since)
        return tasks

    async def held(self, *requests: Any) -> list[httpx.Response]:
        """Send the requests while the writer is held on a first batch, so they form the next one."""
        self.writer.open.clear()
        since = self.writer.received
        warm = asyncio.create_task(self.post(referral()))
        await self.queued(1, since=since)
        tasks = [asyncio.create_task(r) for r in requests]
        await self.queued(1 + len(requests), since=since)
        self.writer.open.set()
        assert (await warm).status_code == 202
        return list(await asyncio.gather(*tasks))


@pytest_asyncio.fixture
async def app(db: Db) -> AsyncIterator[App]:
    settings = Settings(database_url=db.url)
    engine = create_engine(settings)
    sessions = session_factory(engine)
    writer = HeldWriter(sessions, settings.resident_ref_key)
    commit: GroupCommit[HttpSubmission, Any] = GroupCommit(writer, retry_alone=handlers.worth_writing_alone)
    api = FastAPI()
    api.state.settings, api.state.sessions = settings, sessions
    api.state.referral_writer, api.state.token_cache = commit, TokenCache()
    install_error_handlers(api, confirm_caller=confirm_caller)
    api.include_router(router)
    commit.start()
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        yield App(client, writer, commit, db)
    await commit.stop()
    await engine.dispose()


async def cases_with(db: Db, summary: str) -> list[asyncpg.Record]:
    return await db.sql(
        "SELECT c.case_id, (SELECT count(*) FROM shared.outbox o WHERE o.key = convert_to(c.case_id, 'UTF8')) AS "
        "outbox FROM intake.cases c WHERE c.summary = $1",
        summary,
    )


async def test_requests_held_behind_one_batch_are_stored_together_each_with_its_own_case(app: App) -> None:
    summary = "batched together: ten requests, ten cases"
    answers = await app.held(*(app.post(referral(summary=summary)) for _ in range(10)))
    assert [a.status_code for a in answers] == [202] * 10
    case_ids = {a.json()["case_id"] for a in answers}
    assert len(case_ids) == 10 and all(a.json()["status"] == "received" for a in answers)
    assert app.writer.sizes[-1] == 10  # one transaction for all ten
    stored = await cases_with(app.db, summary)
    assert {r["case_id"] for r in stored} == case_ids and all(r["outbox"] == 1 for r in stored)


async def test_the_same_key_twice_in_one_batch_makes_one_case_and_a_later_repeat_finds_it(app: App) -> None:
    summary = "one key, three requests"
    answers = await app.held(*(app.post(referral(summary=summary), key="batch-key-1") for _ in range(3)))
    assert [a.status_code for a in answers] == [202] * 3
    assert len({a.json()["case_id"] for a in answers}) == 1
    again = await app.post(referral(summary=summary), key="batch-key-1")
    assert again.status_code == 202 and again.json()["case_id"] == answers[0].json()["case_id"]
    assert len(await cases_with(app.db, summary)) == 1
    # The same key from another user is that user's own.
    other = await app.post(referral(summary=summary, submitted_by=ROOM_WORKER), user=SYSTEM, key="batch-key-1")
    assert other.status_code == 202 and other.json()["case_id"] != answers[0].json()["case_id"]


async def test_one_key_with_two_different_referrals_in_one_batch_stores_the_first_and_refuses_the_second(
    app: App,
) -> None:
    first, second = "one key, first referral", "one key, a different referral"
    answers = await app.held(
        app.post(referral(summary=first), key="batch-key-2"), app.post(referral(summary=second), key="batch-key-2")
    )
    assert answers[0].status_code == 202
    assert answers[1].status_code == 422, answers[1].text
    assert [f["field"] for f in answers[1].json()["error"]["fields"]] == ["Idempotency-Key"]
    assert len(await cases_with(app.db, first)) == 1 and await cases_with(app.db, second) == []
    again = await app.post(referral(summary=second), key="batch-key-2")  # in a batch of its own: the same
    assert again.status_code == 422


async def test_repeats_of_a_stored_referral_get_its_case_though_another_referral_with_its_key_shares_their_batch(
    app: App,
) -> None:
    stored, other = "the referral stored first", "another referral under the same key"
    first = await app.post(referral(summary=stored), key="batch-key-3")
    assert first.status_code == 202
    answers = await app.held(
        app.post(referral(summary=other), key="batch-key-3"),
        app.post(referral(summary=stored), key="batch-key-3"),
        app.post(referral(summary=other), key="batch-key-3"),
        app.post(referral(summary=stored, submitted_by=ROOM_WORKER), key="batch-key-3"),  # as stored: the same
    )
    assert [a.status_code for a in answers] == [422, 202, 422, 202], [a.text for a in answers]
    assert {a.json()["case_id"] for a in answers if a.status_code == 202} == {first.json()["case_id"]}
    assert len(await cases_with(app.db, stored)) == 1 and await cases_with(app.db, other) == []


async def test_a_token_revoked_after_it_was_cached_is_refused_alone_in_its_batch(app: App, db: Db) -> None:
    doomed = db.tokens[DOOMED]
    assert (await app.post(referral(), token=doomed)).status_code == 202  # now in the token cache
    await db.sql("UPDATE shared.api_tokens SET revoked_at = now() WHERE token_hash = $1", hash_token(doomed))
    summary = "a revoked token among good ones"
    answers = await app.held(
        app.post(referral(summary=summary)),
        app.post(referral(summary=summary), token=doomed),
        app.post(referral(summary=summary)),
    )
    assert [a.status_code for a in answers] == [202, 401, 202]
    assert answers[1].json()["error"]["code"] == "unauthorized"
    assert len(await cases_with(app.db, summary)) == 2
    # Refused from now on before anything else, a bad body included (401 before 422).
    assert (await app.post({"room_id": ROOM}, token=doomed)).status_code == 401
    assert (await app.post(referral(room_id="V-360402102001"), token=doomed)).status_code == 401


@pytest.mark.parametrize(
    ("body", "good_token_status"),
    [
        (b"{not json", 422),  # FastAPI refuses it before any dependency looked at the token
        (b'{"summary": "\xff"}', 422),  # not UTF-8: FastAPI's own 400 until now
        (b"[" * 100 + b"]" * 100, 422),  # nested too deep: refused while the body is read
    ],
    ids=["garbage", "not-utf8", "too-deep"],
)
async def test_a_token_that_is_unknown_or_was_revoked_after_it_was_cached_is_401_before_a_bad_body(
    app: App, db: Db, body: bytes, good_token_status: int
) -> None:
    headers = {"Content-Type": "application/json"}
    good = await app.client.post(
        "/v1/referrals", content=body, headers={**headers, "Authorization": f"Bearer {db.tokens[SYSTEM]}"}
    )
    assert good.status_code == good_token_status, good.text
    unknown = await app.client.post(
        "/v1/referrals", content=body, headers={**headers, "Authorization": "Bearer clk_unknown"}
    )
    assert unknown.status_code == 401, unknown.text
    # A token in the cache but revoked since: the refusal confirms it first.
    token = await fresh_token(db, SYSTEM)
    assert (await app.post(referral(submitted_by=ROOM_WORKER), token=token)).status_code == 202  # now cached
    await db.sql("UPDATE shared.api_tokens SET revoked_at = now() WHERE token_hash = $1", hash_token(token))
    revoked = await app.client.post(
        "/v1/referrals", content=body, headers={**headers, "Authorization": f"Bearer {token}"}
    )
    assert revoked.status_code == 401, revoked.text


async def fresh_token(db: Db, user: str) -> str:
    engine = create_engine(Settings(database_url=db.url))
    try:
        async with transaction(session_factory(engine)) as session:
            return await create_token(session, user_id=user)
    finally:
        await engine.dispose()


async def test_a_room_that_is_not_a_village_room_is_refused_alone_in_its_batch(app: App) -> None:
    summary = "a township among village rooms"
    answers = await app.held(
        app.post(referral(summary=summary, submitted_by=ROOM_WORKER), user=SYSTEM),
        app.post(referral(summary=summary, room_id="T-360402101", submitted_by=ROOM_WORKER), user=SYSTEM),
        app.post(referral(summary=summary, room_id="V-nowhere", submitted_by=ROOM_WORKER), user=SYSTEM),
    )
    assert [a.status_code for a in answers] == [202, 422, 422]
    assert all(f["field"] == "room_id" for a in answers[1:] for f in a.json()["error"]["fields"])
    assert len(await cases_with(app.db, summary)) == 1


async def test_a_request_the_database_refuses_fails_alone_and_the_rest_of_its_batch_is_stored(app: App) -> None:
    summary = "stored although a neighbour in the batch was poisoned"
    answers = await app.held(
        app.post(referral(summary=summary), key="poison-neighbour-1"),
        app.post(referral(summary=POISON), key="poison-1"),
        app.post(referral(summary=summary), key="poison-neighbour-2"),
    )
    assert [a.status_code for a in answers] == [202, 500, 202]
    assert len(await cases_with(app.db, summary)) == 2
    assert await cases_with(app.db, POISON) == []
    assert await app.db.sql("SELECT 1 FROM intake.submission_keys WHERE key = 'poison-1'") == []  # nothing half-written


async def test_requests_pending_at_shutdown_are_stored_and_answered_before_the_writer_stops(app: App) -> None:
    summary = "pending at shutdown"
    tasks = await app.pile_up(5, summary)
    stopping = asyncio.create_task(app.commit.stop(grace=10))
    await asyncio.sleep(0.1)
    app.writer.open.set()
    await stopping
    answers = await asyncio.gather(*tasks)
    assert [a.status_code for a in answers] == [202] * 5
    assert len(await cases_with(app.db, summary)) == 5
    late = await app.post(referral(summary=summary))
    assert late.status_code == 503 and late.json()["error"]["code"] == "unavailable"


async def test_requests_the_writer_cannot_finish_at_shutdown_get_503_not_silence(app: App) -> None:
    summary = "stuck at shutdown"
    tasks = await app.pile_up(3, summary)
    await app.commit.stop(grace=0.2)
    answers = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert [a.status_code for a in answers] == [503] * 3
    assert await cases_with(app.db, summary) == []


async def test_a_forbidden_referral_names_the_field_that_forbids_it(app: App) -> None:
    someone_else = await app.post(referral(submitted_by="w-0001"))
    assert someone_else.status_code == 403, someone_else.text
    assert [f["field"] for f in someone_else.json()["error"]["fields"]] == ["submitted_by"]
    other_room = await app.post(referral(room_id="V-360402102001"))
    assert other_room.status_code == 403, other_room.text
    assert [f["field"] for f in other_room.json()["error"]["fields"]] == ["room_id"]
