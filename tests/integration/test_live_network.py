"""LiveNetwork (services/router/batch.py) on a real PostgreSQL: after its first full load a router
re-reads only the worker loads written since (by `changed_by`, the writer's transaction id) and the
workers it touched itself (`add_load`, `invalidate`), so

- loads committed by others after a refresh, or in flight during it, are seen by the next one;
- a refresh re-reads only the changed rows;
- a rolled-back transaction's snapshot-only load (`add_load`) or row write (`invalidate`) is undone
  by the next transaction's refresh, although the rolled-back row keeps its old `changed_by`,
  also when other transactions refreshed the same LiveNetwork meanwhile (commands run side by side);
- a change in the directory (`caselink network load`) reloads the whole network.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from schemas.events import CaseReceived, new_event
from services.router import batch
from services.router.batch import LiveNetwork
from services.router.domain import Network, Worker
from services.router.handlers import lock_workers
from services.router.policy import default_policy
from services.shared import directory
from services.shared.db import asyncpg_dsn, is_conflict, session_factory, sqlstate_of, transaction
from services.shared.migrate import upgrade_async
from services.shared.network import parse_network
from tests.support.network_builder import NetworkBuilder

pytestmark = pytest.mark.integration

WORKERS = ("w1", "w2", "w3")
BASE_LOAD = 1
_ADD_LOAD = text("UPDATE router.worker_load SET load = load + :n WHERE worker_id = :w")


def build_network(*, w1_capacity: int = 10, extra_worker: bool = False) -> NetworkBuilder:
    net = NetworkBuilder()
    net.station("M-LN", "city")
    township = net.subtree("LN", city="M-LN").townships[0]
    for worker_id in WORKERS:
        net.worker(worker_id, township, ["elderly_care"], capacity=w1_capacity if worker_id == "w1" else 10)
    if extra_worker:
        net.worker("w4", township, ["elderly_care"])
    return net


@pytest_asyncio.fixture(scope="module")
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    # No autovacuum: its ANALYZE takes a transaction id, and one in flight during a refresh holds
    # the snapshot's xmin back, so that refresh re-reads a few unchanged rows too (harmless, but
    # it would make the "only changed rows" assertions flaky).
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute("ALTER SYSTEM SET autovacuum = off")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()
    await upgrade_async(database_url)
    engine = create_async_engine(database_url)
    yield session_factory(engine)
    await engine.dispose()


@pytest_asyncio.fixture
async def live(sessions: async_sessionmaker[AsyncSession]) -> LiveNetwork:
    """A new router's LiveNetwork, on the base network with every worker at BASE_LOAD."""
    await load_directory(sessions, build_network())
    async with transaction(sessions) as session:
        await session.execute(text("UPDATE router.worker_load SET load = :n"), {"n": BASE_LOAD})
    return LiveNetwork()


@pytest.fixture
def reread(monkeypatch: pytest.MonkeyPatch) -> list[set[str]]:
    """The workers of every load update applied to a snapshot: for a refresh, the rows it re-read."""
    calls: list[set[str]] = []
    original = Network.update_loads_in_place

    def spy(self: Network, loads: Mapping[str, tuple[int, datetime | None]]) -> None:
        calls.append(set(loads))
        original(self, loads)

    monkeypatch.setattr(Network, "update_loads_in_place", spy)
    return calls


async def load_directory(sessions: async_sessionmaker[AsyncSession], net: NetworkBuilder) -> None:
    """What `caselink network load` does."""
    async with transaction(sessions) as session:
        await directory.load_network(session, parse_network(net.dump_yaml()))


async def refresh(sessions: async_sessionmaker[AsyncSession], live: LiveNetwork) -> Network:
    """One router transaction that only refreshes, and commits."""
    async with transaction(sessions) as session:
        return await live.refresh(session)


async def add_committed_load(sessions: async_sessionmaker[AsyncSession], worker_id: str, n: int) -> None:
    """Another replica's transaction moving a worker's load, committed."""
    async with transaction(sessions) as session:
        await session.execute(_ADD_LOAD, {"w": worker_id, "n": n})


def worker(network: Network, worker_id: str) -> Worker:
    found = network.worker(worker_id)
    assert found is not None, f"no worker {worker_id} in the snapshot"
    return found


def loads(network: Network) -> dict[str, int]:
    return {w: worker(network, w).load for w in WORKERS}


async def test_a_load_committed_after_a_refresh_is_seen_by_the_next(
    sessions: async_sessionmaker[AsyncSession], live: LiveNetwork
) -> None:
    await refresh(sessions, live)
    await add_committed_load(sessions, "w1", 3)
    assert loads(await refresh(sessions, live)) == {"w1": BASE_LOAD + 3, "w2": BASE_LOAD, "w3": BASE_LOAD}


async def test_a_load_in_flight_during_a_refresh_is_seen_by_the_next_once_committed(
    sessions: async_sessionmaker[AsyncSession], live: LiveNetwork
) -> None:
    await refresh(sessions, live)
    async with transaction(sessions) as other:
        await other.execute(_ADD_LOAD, {"w": "w2", "n": 3})  # its transaction id is taken now
        await add_committed_load(sessions, "w3", 1)  # a later transaction id, committed first
        assert loads(await refresh(sessions, live)) == {"w1": BASE_LOAD, "w2": BASE_LOAD, "w3": BASE_LOAD + 1}
    assert loads(await refresh(sessions, live))["w2"] == BASE_LOAD + 3


async def test_a_refresh_rereads_only_the_changed_rows(
    sessions: async_sessionmaker[AsyncSession], live: LiveNetwork, reread: list[set[str]]
) -> None:
    await refresh(sessions, live)  # the full load
    reread.clear()
    await refresh(sessions, live)
    await add_committed_load(sessions, "w3", 2)
    network = await refresh(sessions, live)
    assert reread == [set(), {"w3"}]
    assert loads(network) == {"w1": BASE_LOAD, "w2": BASE_LOAD, "w3": BASE_LOAD + 2}


async def test_a_rolled_back_add_load_is_undone_by_the_next_transaction(
    sessions: async_sessionmaker[AsyncSession], live: LiveNetwork, reread: list[set[str]]
) -> None:
    async with sessions() as session, session.begin() as t1:
        await live.refresh(session)
        assert loads(live.add_load("w1", 2, at=datetime.now(UTC)))["w1"] == BASE_LOAD + 2
        await t1.rollback()  # the offer was never reserved
    reread.clear()
    assert loads(await refresh(sessions, live))["w1"] == BASE_LOAD
    await refresh(sessions, live)
    assert reread == [{"w1"}, set()]  # re-read once, by the first later transaction


async def test_a_rolled_back_write_is_undone_by_the_next_transaction(
    sessions: async_sessionmaker[AsyncSession], live: LiveNetwork
) -> None:
    async with sessions() as session, session.begin() as t1:
        await live.refresh(session)
        await session.execute(_ADD_LOAD, {"w": "w2", "n": 5})
        live.invalidate(session, "w2")
        assert loads(await live.refresh(session))["w2"] == BASE_LOAD + 5  # its own write
        await t1.rollback()
    assert loads(await refresh(sessions, live))["w2"] == BASE_LOAD


async def test_a_rolled_back_write_is_undone_when_other_transactions_refreshed_meanwhile(
    sessions: async_sessionmaker[AsyncSession], live: LiveNetwork
) -> None:
    """The command consumer's transactions share one LiveNetwork: another one's refresh between
    this one's write and its rollback must not make the router forget to re-read the row."""
    async with sessions() as session, session.begin() as t1:
        await session.execute(_ADD_LOAD, {"w": "w1", "n": 5})
        live.invalidate(session, "w1")  # written before this transaction's first refresh
        await refresh(sessions, live)  # another command's transaction
        assert loads(await live.refresh(session))["w1"] == BASE_LOAD + 5
        await refresh(sessions, live)  # and another, while this one is still open
        await t1.rollback()
    assert loads(await refresh(sessions, live))["w1"] == BASE_LOAD
    assert loads(await refresh(sessions, live))["w1"] == BASE_LOAD


async def test_refreshes_side_by_side_both_forget_an_ended_transaction(
    sessions: async_sessionmaker[AsyncSession], live: LiveNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commands run concurrently on one LiveNetwork: a refresh that saw a transaction end, while
    another refresh also saw it end and dropped it meanwhile, must still get through."""
    async with sessions() as session, session.begin() as t1:
        await live.refresh(session)
        await session.execute(_ADD_LOAD, {"w": "w3", "n": 4})
        live.invalidate(session, "w3")
        await t1.rollback()
    async with sessions() as session, session.begin():
        execute = session.execute

        async def another_refresh_first(statement: Any, *args: Any, **kwargs: Any) -> Any:
            if statement is batch._VERSION_AND_CHANGED_LOADS:  # this refresh has noted t1 ended by now
                assert loads(await refresh(sessions, live))["w3"] == BASE_LOAD
            return await execute(statement, *args, **kwargs)

        monkeypatch.setattr(session, "execute", another_refresh_first)
        assert loads(await live.refresh(session))["w3"] == BASE_LOAD


async def test_two_first_refreshes_side_by_side_both_load_the_network(
    sessions: async_sessionmaker[AsyncSession], live: LiveNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new router's first command batch runs side by side: a first refresh whose statement
    returns after another one loaded the network must still load it (its row carries no loads;
    this raised AttributeError on `worker_id` and sent the batch round again)."""
    async with sessions() as session, session.begin():
        execute = session.execute

        async def another_refresh_meanwhile(statement: Any, *args: Any, **kwargs: Any) -> Any:
            result = await execute(statement, *args, **kwargs)
            if statement is batch._VERSION_AND_XMIN:
                assert loads(await refresh(sessions, live))["w1"] == BASE_LOAD
            return result

        monkeypatch.setattr(session, "execute", another_refresh_meanwhile)
        assert loads(await live.refresh(session)) == dict.fromkeys(WORKERS, BASE_LOAD)


async def test_a_directory_change_reloads_the_network(
    sessions: async_sessionmaker[AsyncSession], live: LiveNetwork
) -> None:
    network = await refresh(sessions, live)
    assert worker(network, "w1").capacity == 10
    assert network.worker("w4") is None
    await load_directory(sessions, build_network(w1_capacity=4, extra_worker=True))
    network = await refresh(sessions, live)
    assert worker(network, "w1").capacity == 4
    assert worker(network, "w4").load == 0


async def directory_version(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with transaction(sessions) as session:
        return int((await session.execute(text("SELECT version FROM shared.directory_version"))).scalar_one())


async def test_every_write_to_the_directory_moves_its_version_on(
    sessions: async_sessionmaker[AsyncSession], live: LiveNetwork
) -> None:
    writes = [
        "UPDATE shared.users SET on_duty = false WHERE id = 'w1'",
        "UPDATE shared.stations SET name = 'renamed' WHERE id = (SELECT min(id) FROM shared.stations)",
        "INSERT INTO shared.users (id, name, role) VALUES ('w-new', 'new', 'worker')",
        "DELETE FROM shared.users WHERE id = 'w-new'",
    ]
    for statement in writes:
        before = await directory_version(sessions)
        async with transaction(sessions) as session:
            await session.execute(text(statement))
        assert await directory_version(sessions) > before, statement


async def test_a_directory_change_by_hand_reloads_the_network(
    sessions: async_sessionmaker[AsyncSession], live: LiveNetwork
) -> None:
    assert worker(await refresh(sessions, live), "w1").on_duty
    async with transaction(sessions) as session:  # an operator's SQL, not `caselink network load`
        await session.execute(text("UPDATE shared.users SET on_duty = false WHERE id = 'w1'"))
    assert not worker(await refresh(sessions, live), "w1").on_duty


async def test_without_a_version_row_every_refresh_reloads_the_network(
    sessions: async_sessionmaker[AsyncSession], live: LiveNetwork
) -> None:
    async with transaction(sessions) as session:
        await session.execute(text("DELETE FROM shared.directory_version"))
    try:
        await refresh(sessions, live)
        async with transaction(sessions) as session:  # the trigger's update finds no row to move on
            await session.execute(text("UPDATE shared.users SET capacity = 3 WHERE id = 'w1'"))
        assert worker(await refresh(sessions, live), "w1").capacity == 3
    finally:
        async with transaction(sessions) as session:
            await session.execute(text("INSERT INTO shared.directory_version DEFAULT VALUES ON CONFLICT DO NOTHING"))


# ------------------------------------------------- a batch whose reservations another replica beat


async def received(sessions: async_sessionmaker[AsyncSession], n: int) -> CaseReceived:
    """A new case's `received` event (and its head, as intake writes it) for the township's room."""
    room = build_network().stations["V-LN-1-1"]["id"]
    data = {
        "case_id": f"lv-{n}-{uuid.uuid4()}", "status": "received", "tier": "village", "station_id": room,
        "category": "elderly_care", "risk_level": "medium", "resident_ref": f"ref-{n}", "sequence": 1,
        "room_id": room, "submitted_by": "w1",
    }  # fmt: skip
    async with transaction(sessions) as session:
        await session.execute(
            text("INSERT INTO shared.case_heads VALUES (:id, 1, 'received', 'village', :room)"),
            {"id": data["case_id"], "room": room},
        )
    return cast(CaseReceived, new_event("received", source="caselink/intake", data=data))


async def test_a_batch_decides_again_only_the_cases_of_a_worker_another_replica_filled_meanwhile(
    sessions: async_sessionmaker[AsyncSession], live: LiveNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = [await received(sessions, n) for n in range(6)]
    decided: list[list[tuple[str, str | None]]] = []  # per attempt: (case, worker offered)
    filled: list[str] = []
    decide, reserve = batch._decide, batch._reserve

    def spy_decide(*args: Any) -> Any:
        placed, reservations = decide(*args)
        decided.append([(e.data.case_id, d.offer.worker_id if d.offer else None) for e, d in placed])
        return placed, reservations

    async def racing_reserve(session: AsyncSession, reservations: dict[str, int], held: set[str]) -> set[str]:
        if not filled:  # another replica fills the first worker between our snapshot and our reservation
            filled.append(min(reservations))
            await add_committed_load(sessions, filled[0], 10 - BASE_LOAD)
        return await reserve(session, reservations, held)

    monkeypatch.setattr(batch, "_decide", spy_decide)
    monkeypatch.setattr(batch, "_reserve", racing_reserve)
    async with transaction(sessions) as session:
        decisions = await batch.route_received_batch(session, cases, policy=default_policy(), live=live)

    first, second = decided[0], decided[1]
    beaten = [case for case, worker in first if worker == filled[0]]
    assert beaten and [case for case, _ in second] == beaten  # only those are decided again
    final = {d.state.facts.case_id: (d.offer.worker_id if d.offer else None) for d in decisions}
    assert {case: final[case] for case, worker in first if worker != filled[0]} == {
        case: worker for case, worker in first if worker != filled[0]
    }  # the others keep their offers
    assert filled[0] not in final.values()
    async with sessions() as session:
        rows = await session.execute(text("SELECT worker_id, load FROM router.worker_load WHERE worker_id = ANY(:w)"),
                                     {"w": list(WORKERS)})  # fmt: skip
        load: dict[str, int] = {row.worker_id: row.load for row in rows}
    weights = {d.offer.worker_id: 0 for d in decisions if d.offer}
    for d in decisions:
        if d.offer:
            weights[d.offer.worker_id] += d.offer.weight
    assert load[filled[0]] == 10
    assert all(load[w] == BASE_LOAD + weights.get(w, 0) for w in WORKERS if w != filled[0])


async def test_a_transaction_waits_only_briefly_for_a_worker_before_one_it_holds(
    sessions: async_sessionmaker[AsyncSession], live: LiveNetwork
) -> None:
    """Two routers each holding a worker the other wants next (a second placement attempt of a
    command, a batch deciding again) wait for each other until PostgreSQL's deadlock check
    (deadlock_timeout, 1 s by default) kills one. Waiting without limit only for rows after the
    last one held, in worker-id order, they cannot: the one wanting a row before its own gives up
    first (lock_timeout, not a deadlock), and its transaction, run again, takes the rows in order."""
    async with sessions() as first, sessions() as second, first.begin(), second.begin():
        held_first: set[str] = set()
        held_second = {"w1"}
        await second.execute(_ADD_LOAD, {"n": 0, "w": "w1"})
        await lock_workers(first, ["w3", "w2"], held_first)
        assert held_first == {"w2", "w3"}
        waiting = asyncio.create_task(lock_workers(second, ["w1", "w2", "w3"], held_second))  # after w1: waits
        await asyncio.sleep(0.2)
        assert not waiting.done()
        with pytest.raises(DBAPIError) as lost:
            await lock_workers(first, ["w1"], held_first)  # before w2: waits briefly
        assert sqlstate_of(lost.value) == "55P03" and is_conflict(lost.value)
        await first.rollback()
        await asyncio.wait_for(waiting, 5)
        assert held_second == {"w1", "w2", "w3"}
    async with transaction(sessions) as session:  # a row before the last held, and free: taken
        held = {"w3"}
        await session.execute(_ADD_LOAD, {"n": 0, "w": "w3"})
        await lock_workers(session, ["w1"], held)
        assert held == {"w1", "w3"}
        # The brief wait is that statement's: the transaction's others wait as long as it takes.
        assert (await session.execute(text("SHOW lock_timeout"))).scalar_one() == "0"


async def test_among_equally_loaded_workers_the_one_offered_a_case_last_goes_last(
    sessions: async_sessionmaker[AsyncSession], live: LiveNetwork
) -> None:
    """CONTRACT §6's last tie-break, the one idle longest: an offer makes its worker the most
    recently busy, as a finished case does, so equals take turns (w1 and w2; the others are full)."""
    async with transaction(sessions) as session:  # as if no one had ever held a case
        await session.execute(text("UPDATE router.worker_load SET idle_since = NULL"))
        await session.execute(text("UPDATE router.worker_load SET load = 9 WHERE worker_id NOT IN ('w1', 'w2')"))
    await refresh(sessions, live)

    async def route(n: int, resident: str) -> str | None:
        case = await received(sessions, n)
        case = case.model_copy(update={"data": case.data.model_copy(update={"resident_ref": resident})})
        async with transaction(sessions) as session:
            [decision] = await batch.route_received_batch(session, [case], policy=default_policy(), live=live)
        return decision.offer.worker_id if decision.offer else None

    offered = [
        await route(0, "r-a"),  # w1 and w2 never had a case: w1 by id
        await route(1, "r-b"),  # w2: less loaded
        await route(2, "r-b"),  # equals: w2 served r-b before
        await route(3, "r-d"),  # w1: less loaded
        await route(4, "r-e"),  # equals: w2 was offered a case before w1 was
    ]

    assert offered == ["w1", "w2", "w2", "w1", "w2"]
