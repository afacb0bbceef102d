"""Routing a poll batch of received cases in one transaction: one network snapshot, one look-up of
who served each resident, one reservation statement, bulk writes, three statements of events.

Safety is the per-message path's (handlers.py): every reservation is a conditional UPDATE that
only succeeds while the worker is on duty and the case still fits, so a stale snapshot can cost a
retry but never overfill a worker. The batch's worker rows are locked in worker-id order before
they are updated, the order every other router transaction takes them in, so replicas queue
instead of deadlocking (`lock_workers`). A reservation that no longer fits (another replica took the capacity
meanwhile) is not made, and only the cases offered to that worker are decided again, on loads read
afresh; the rest of the batch keeps its reservations. If some still do not fit after
PLACEMENT_ATTEMPTS, the messages go through the per-message path one by one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import SessionTransaction

from schemas.events import STATUS_AFTER, CaseReceived
from services.router import tables
from services.router.domain import CaseFacts, Network
from services.router.handlers import SOURCE, decision_events, load_network, lock_workers, row_from_state
from services.router.lifecycle import Context, Decision, admit
from services.router.policy import Policy
from services.shared.consuming import OneByOne
from services.shared.logging import get_logger
from services.shared.outbox import emit_case_events
from services.shared.time import utc_now

log = get_logger(__name__)
# Snapshots tried before the batch goes one by one: a failed reservation means another router took
# the capacity between our read and our update, and a fresh read usually gets it right.
PLACEMENT_ATTEMPTS = 3

# Moves on with every write to shared.stations or shared.users (a statement trigger, migration 0009).
_VERSION = "(SELECT version FROM shared.directory_version) AS directory"
# The oldest transaction a statement's snapshot does not see as committed, its own included: a
# row written later, or by a transaction open then (this one too, which may still roll back), has
# changed_by >= it.
_XMIN = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
_VERSION_AND_XMIN = text(f"SELECT {_VERSION}, {_XMIN} AS xmin")
# The directory's version, the loads written since the last look, and those this router wrote or
# added to in a transaction that may have rolled back (the rows are then as they were, changed_by
# too), with the new xmin; one statement, so one snapshot and one round trip, even with no rows.
_VERSION_AND_CHANGED_LOADS = text(
    f"WITH s AS (SELECT {_VERSION}, {_XMIN} AS xmin) "
    "SELECT s.*, w.worker_id, w.load, w.idle_since FROM s "
    "LEFT JOIN router.worker_load w ON w.changed_by >= :since OR w.worker_id = ANY(CAST(:touched AS text[]))"
)
_ROUTED_ALREADY = text("SELECT case_id FROM router.cases WHERE case_id = ANY(CAST(:ids AS text[]))")
_SERVED_BEFORE = text(
    "SELECT DISTINCT resident_ref, worker_id FROM router.offers "
    "WHERE resident_ref = ANY(CAST(:refs AS text[])) AND (outcome IS NULL OR outcome = 'accepted')"
)
_RESERVE = text(
    "UPDATE router.worker_load wl SET load = wl.load + r.weight, idle_since = now(), updated_at = now() "
    "FROM unnest(CAST(:ids AS text[]), CAST(:weights AS integer[])) AS r(worker_id, weight), shared.users u "
    "WHERE wl.worker_id = r.worker_id AND u.id = wl.worker_id AND u.on_duty AND wl.load + r.weight <= u.capacity "
    "RETURNING wl.worker_id"
)


class LiveNetwork:
    """The network a router keeps between batches: stations and workers reloaded only when the
    directory changed, loads brought up to date at the start of every batch (only those written
    since the last look, by changed_by), this batch's offers applied as they are decided (so two
    cases of one batch see each other's load).

    The snapshot is this object's alone and is updated in place; a caller reads it only until
    its next await (decisions are synchronous), so nobody sees it change under them."""

    def __init__(self) -> None:
        self._network: Network | None = None
        self._version: int | None = None
        self._since = 0  # the xmin of the snapshot the loads were last read in
        # Workers each transaction wrote, or gave load in the snapshot alone: re-read at every
        # refresh until another transaction read them after this one ended (the command
        # consumer's transactions run side by side on one LiveNetwork).
        self._touched: dict[SessionTransaction, set[str]] = {}
        self._transaction: SessionTransaction | None = None  # the one that refreshed last

    async def refresh(self, session: AsyncSession) -> Network:
        """A snapshot as fresh as this transaction can see (one cheap statement, or a full load)."""
        # Ended before this look at their rows (this transaction is active, whether begun yet or not).
        ended = [t for t in self._touched if not t.is_active]
        rows: Sequence[Row[Any]]
        # Decided now, not after the await: a concurrent first refresh may load the network
        # meanwhile, and these rows then have no loads to apply.
        first = self._network is None
        if first:
            rows = [(await session.execute(_VERSION_AND_XMIN)).one()]
        else:
            touched = sorted(set().union(*self._touched.values()))
            rows = (await session.execute(_VERSION_AND_CHANGED_LOADS, {"since": self._since, "touched": touched})).all()
        transaction = session.sync_session.get_transaction()  # begun by now
        version = rows[0].directory
        # The xmin of a statement before the load: whatever the load misses was written at or after it.
        self._since = rows[0].xmin
        # No version row (deleted by hand): nothing tells a change, so every batch reloads.
        if first or self._network is None or version is None or version != self._version:
            self._network, self._version = await load_network(session), version
        else:
            changed = {row.worker_id: (row.load, row.idle_since) for row in rows if row.worker_id is not None}
            self._network.update_loads_in_place(changed)
        for done in ended:  # their rows, committed or rolled back, were just read as they are
            self._touched.pop(done, None)  # (a concurrent refresh may have dropped it already)
        self._transaction = transaction
        return self._network

    def add_load(self, worker_id: str, weight: int, *, at: datetime) -> Network:
        """The snapshot with `weight` more on the worker (an offer this batch made at `at`), who is
        then the most recently busy, as the reservation will record."""
        assert self._network is not None, "refresh() first"
        worker = self._network.worker(worker_id)
        assert self._transaction is not None
        self._touched.setdefault(self._transaction, set()).add(worker_id)
        if worker is not None:
            self._network.update_loads_in_place({worker_id: (worker.load + weight, at)})
        return self._network

    async def get(self, session: AsyncSession) -> Network:
        """NetworkCache's interface for decide_and_apply: a refreshed snapshot every time."""
        return await self.refresh(session)

    def invalidate(self, session: AsyncSession, *worker_ids: str) -> None:
        """The session's transaction wrote these workers' rows: re-read them even if it rolls back."""
        if (transaction := session.sync_session.get_transaction()) is not None:
            self._touched.setdefault(transaction, set()).update(worker_ids)


async def route_received_batch(
    session: AsyncSession, received: list[CaseReceived], *, policy: Policy, live: LiveNetwork
) -> list[Decision]:
    """Route a batch of newly received cases in order: routed → escalated… → assigned | queued each."""
    ids = [event.data.case_id for event in received]
    # A case is routed once, even if a second `received` for it came in (its events repeat it).
    done = set((await session.execute(_ROUTED_ALREADY, {"ids": ids})).scalars())
    todo: list[CaseReceived] = []
    for event in received:
        if event.data.case_id not in done:
            done.add(event.data.case_id)
            todo.append(event)
    if not todo:
        return []
    served: dict[str, set[str]] = defaultdict(set)
    refs = sorted({event.data.resident_ref for event in todo})
    for row in await session.execute(_SERVED_BEFORE, {"refs": refs}):
        served[row.resident_ref].add(row.worker_id)
    placed: list[tuple[CaseReceived, Decision]] = []
    held: set[str] = set()  # the worker rows this transaction locked
    for _ in range(PLACEMENT_ATTEMPTS):
        # Loads as they are now: a failed attempt's offers were never made, and this re-reads them.
        network = await live.refresh(session)
        decided, reservations = _decide(todo, policy, network, live, {ref: set(ws) for ref, ws in served.items()})
        full = await _reserve(session, reservations, held)
        # The cases offered to a worker who no longer had room are decided again on fresh loads;
        # the others keep their reservations.
        placed += [(event, decision) for event, decision in decided if _offered_to(decision) not in full]
        todo = [event for event, decision in decided if _offered_to(decision) in full]
        if not todo:
            break
    else:
        raise OneByOne("capacity kept changing under the batch's snapshots")
    await _store(session, placed)
    events = [event for _, decision in placed for event in decision_events(decision)]
    assert all(STATUS_AFTER[name] is not None for name, _ in events), "a received case's events all move it"
    await emit_case_events(session, events, source=SOURCE)
    for _, decision in placed:
        state = decision.state
        log.debug("router.case_routed", case_id=state.facts.case_id, rule=state.rule, status=state.status)
    return [decision for _, decision in placed]


def _decide(
    todo: list[CaseReceived], policy: Policy, network: Network, live: LiveNetwork, served: dict[str, set[str]]
) -> tuple[list[tuple[CaseReceived, Decision]], dict[str, int]]:
    """Every case's decision in order on the snapshot, each seeing the offers made before it."""
    placed: list[tuple[CaseReceived, Decision]] = []
    reservations: dict[str, int] = defaultdict(int)
    for event in todo:
        data = event.data
        facts = CaseFacts(data.case_id, data.room_id, str(data.category), str(data.risk_level), data.resident_ref)
        ctx = Context(policy, network, utc_now(), frozenset(served.get(facts.resident_ref, ())))
        decision = admit(facts, ctx, received_at=event.time)
        if (offer := decision.offer) is not None:
            reservations[offer.worker_id] += offer.weight
            served.setdefault(facts.resident_ref, set()).add(offer.worker_id)
            network = live.add_load(offer.worker_id, offer.weight, at=ctx.now)
        placed.append((event, decision))
    return placed, reservations


async def _reserve(session: AsyncSession, reservations: dict[str, int], held: set[str]) -> set[str]:
    """Reserve each worker's share of the batch where it still fits; the workers it did not fit
    (another replica took the capacity meanwhile, or the worker went off duty)."""
    if not reservations:
        return set()
    workers = sorted(reservations)
    await lock_workers(session, workers, held)
    reserved = await session.execute(_RESERVE, {"ids": workers, "weights": [reservations[w] for w in workers]})
    return set(workers) - set(reserved.scalars())


def _offered_to(decision: Decision) -> str | None:
    return decision.offer.worker_id if decision.offer is not None else None


async def _store(session: AsyncSession, placed: list[tuple[CaseReceived, Decision]]) -> None:
    rows = [row_from_state(decision.state, received_at=event.time) for event, decision in placed]
    await session.execute(pg_insert(tables.cases).on_conflict_do_nothing(), rows)
    offers = [
        {
            "case_id": decision.state.facts.case_id,
            "worker_id": offer.worker_id,
            "tier": offer.tier,
            "station_id": offer.station_id,
            "resident_ref": decision.state.facts.resident_ref,
            "accept_by": offer.accept_by,
        }
        for _, decision in placed
        if (offer := decision.offer) is not None
    ]
    if offers:
        await session.execute(tables.offers.insert(), offers)
