"""The router's units of work: load a case, let the pure domain decide, reserve capacity
concurrency-safely, store the new state and emit its events through the outbox.

Lock order, the same everywhere so concurrent routers cannot deadlock: the case's row in
router.cases (FOR UPDATE), then worker_load rows in worker-id order (`lock_workers`), then the case
heads in shared.case_heads and the rows in intake.cases, in case-id order (emit_case_events).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.commands import CaseCommand, CommandResult
from schemas.enums import CaseStatus
from schemas.events import STATUS_AFTER, CaseReceived, EventSource
from schemas.topics import CASE_COMMAND_RESULTS
from services.router import tables
from services.router.actions import decide_command
from services.router.domain import Assignment, CaseFacts, Need, Network, Station, Worker
from services.router.lifecycle import Actor, CaseState, CommandRefused, Context, Decision, admit
from services.router.policy import Policy
from services.shared.directory import get_user
from services.shared.logging import get_logger
from services.shared.outbox import emit_case_events, enqueue
from services.shared.tables import stations, users
from services.shared.time import utc_now

log = get_logger(__name__)
SOURCE: EventSource = "caselink/router"
# Another router may take the last capacity between our read and our reservation; look again.
MAX_PLACEMENT_ATTEMPTS = 5

Decide = Callable[[Context], Decision | None]


async def load_network(session: AsyncSession) -> Network:
    """The station tree and every worker with their current load, as the pure domain sees them."""
    station_rows = await session.execute(select(stations.c.id, stations.c.tier, stations.c.parent_id))
    worker_rows = await session.execute(
        select(
            users.c.id,
            users.c.station_id,
            users.c.specialties,
            users.c.certification,
            users.c.capacity,
            users.c.on_duty,
            tables.worker_load.c.load,
            tables.worker_load.c.idle_since,
        )
        .outerjoin(tables.worker_load, tables.worker_load.c.worker_id == users.c.id)
        .where(users.c.role == "worker", users.c.station_id.is_not(None))
    )
    return Network(
        stations={row.id: Station(row.id, row.tier, row.parent_id) for row in station_rows},
        workers=[
            Worker(
                id=row.id,
                station_id=row.station_id,
                specialties=frozenset(row.specialties),
                certification=row.certification,
                capacity=row.capacity,
                on_duty=row.on_duty,
                load=row.load or 0,
                idle_since=row.idle_since,
            )
            for row in worker_rows
        ],
    )


async def served_before(session: AsyncSession, resident_ref: str) -> frozenset[str]:
    """Workers who hold or accepted a case of this resident before (continuity of care)."""
    offers = tables.offers.c
    rows = await session.execute(
        select(offers.worker_id)
        .where(offers.resident_ref == resident_ref)
        .where((offers.outcome.is_(None)) | (offers.outcome == "accepted"))
        .distinct()
    )
    return frozenset(rows.scalars())


async def reserve_capacity(session: AsyncSession, assignment: Assignment) -> bool:
    """Add the case's weight to the worker's load if they are still on duty and it still fits; they
    become the most recently busy (the last among equals, CONTRACT §6's "idle longest").

    The conditional UPDATE is atomic under the row lock, so two routers can never both fill the
    last slot, and a worker taken off duty in between is never offered the case.
    """
    reserved = await session.execute(
        text(
            "UPDATE router.worker_load wl SET load = wl.load + :weight, idle_since = now(), updated_at = now() "
            "FROM shared.users u WHERE wl.worker_id = :worker AND u.id = wl.worker_id "
            "AND u.on_duty AND wl.load + :weight <= u.capacity RETURNING wl.load"
        ),
        {"worker": assignment.worker_id, "weight": assignment.weight},
    )
    return reserved.first() is not None


async def release_capacity(session: AsyncSession, worker_id: str, weight: int) -> None:
    """Give the case's weight back to the worker; they become the most recently busy."""
    await session.execute(
        text(
            "UPDATE router.worker_load SET load = load - :weight, idle_since = now(), updated_at = now() "
            "WHERE worker_id = :worker"
        ),
        {"worker": worker_id, "weight": weight},
    )


async def lock_case(session: AsyncSession, case_id: str, *, skip_locked: bool = False) -> CaseState | None:
    """The case's routing state, locked until commit; None if unknown (or locked, with skip_locked)."""
    query = select(tables.cases).where(tables.cases.c.case_id == case_id).with_for_update(skip_locked=skip_locked)
    row = (await session.execute(query)).mappings().first()
    return state_from_row(row) if row is not None else None


def state_from_row(row: RowMapping) -> CaseState:
    """A router.cases row as the pure domain's CaseState."""
    return CaseState(
        facts=CaseFacts(row["case_id"], row["room_id"], row["category"], row["risk_level"], row["resident_ref"]),
        status=row["status"],
        tier=row["tier"],
        station_id=row["station_id"],
        rule=row["rule"] or "",
        need=Need(row["need_specialty"], row["need_certification"], row["weight"]),
        target_station_id=row["target_station_id"],
        floor_station_id=row["floor_station_id"],
        resolve_by=row["resolve_by"],
        resolve_warn_at=row["resolve_warn_at"],
        resolve_breached=row["resolve_breached"],
        assignee_id=row["assignee_id"],
        accept_by=row["accept_by"],
        accept_warn_at=row["accept_warn_at"],
        offers_made=dict(row["offers_made"]),
        passed_over=frozenset(row["passed_over"]),
    )


def row_from_state(state: CaseState, *, received_at: datetime | None = None) -> dict[str, Any]:
    """The router.cases row of a CaseState (received_at only when the case is new)."""
    facts = state.facts
    row = {
        "case_id": facts.case_id,
        "room_id": facts.room_id,
        "category": facts.category,
        "risk_level": facts.risk_level,
        "resident_ref": facts.resident_ref,
        "status": state.status,
        "tier": state.tier,
        "station_id": state.station_id,
        "rule": state.rule,
        "assignee_id": state.assignee_id,
        "weight": state.need.weight,
        "need_specialty": state.need.specialty,
        "need_certification": state.need.certification,
        "target_station_id": state.target_station_id,
        "floor_station_id": state.floor_station_id,
        "accept_by": state.accept_by,
        "accept_warn_at": state.accept_warn_at,
        "resolve_by": state.resolve_by,
        "resolve_warn_at": state.resolve_warn_at,
        "resolve_breached": state.resolve_breached,
        "offers_made": state.offers_made,
        "passed_over": sorted(state.passed_over),
        "next_due_at": state.next_due_at,
        "updated_at": utc_now(),
    }
    return row | ({"received_at": received_at} if received_at is not None else {})


class NetworkSource(Protocol):
    """Where a decision gets its network snapshot: NetworkCache, or a router's LiveNetwork."""

    async def get(self, session: AsyncSession) -> Network: ...

    def invalidate(self, session: AsyncSession, *worker_ids: str) -> None: ...


class NetworkCache:
    """One network snapshot reused across decisions (a sweep tick); refreshed after it went stale.

    A stale snapshot is safe: reservations are conditional, and a failed one refreshes it.
    """

    def __init__(self) -> None:
        self._network: Network | None = None

    async def get(self, session: AsyncSession) -> Network:
        """The cached snapshot, loading it if there is none."""
        if self._network is None:
            self._network = await load_network(session)
        return self._network

    def invalidate(self, session: AsyncSession, *worker_ids: str) -> None:
        """Forget the snapshot: the session wrote these workers' loads."""
        self._network = None


async def decide_and_apply(
    session: AsyncSession,
    state: CaseState | None,
    decide: Decide,
    *,
    policy: Policy,
    resident_ref: str,
    networks: NetworkSource | None = None,
    received_at: datetime | None = None,
) -> Decision | None:
    """Run a pure decision on fresh enough data, reserve its offer, then store and emit it."""
    networks = networks or NetworkCache()
    served = await served_before(session, resident_ref)
    released: str | None = None
    held: set[str] = set()
    for _ in range(MAX_PLACEMENT_ATTEMPTS):
        decision = decide(Context(policy, await networks.get(session), utc_now(), served))
        if decision is None:
            return None
        offered = decision.offer.worker_id if decision.offer is not None else None
        await lock_workers(session, {decision.release, offered}, held)
        # Released before reserving, so the worker's own freed capacity counts if they are chosen again.
        if decision.release is not None and decision.release != released:
            await release_capacity(session, decision.release, decision.state.need.weight)
            released = decision.release
            networks.invalidate(session, decision.release)
        if decision.offer is None:
            break
        networks.invalidate(session, decision.offer.worker_id)
        if await reserve_capacity(session, decision.offer):
            break
    else:
        raise RuntimeError("capacity kept changing while placing the case; retrying the message")
    await _store(session, state, decision, received_at=received_at)
    await _emit(session, decision)
    return decision


_LOCK_WORKERS = text(
    "SELECT 1 FROM router.worker_load WHERE worker_id = ANY(CAST(:ids AS text[])) ORDER BY worker_id FOR UPDATE"
)
# Shorter than PostgreSQL's deadlock_timeout (1 s by default): a wait out of order gives up before
# the server would look for a deadlock, and a transaction merely finishing has time to commit.
OUT_OF_ORDER_LOCK_TIMEOUT = "500ms"
_OUT_OF_ORDER = text(f"SET LOCAL lock_timeout = '{OUT_OF_ORDER_LOCK_TIMEOUT}'")
# Back to the configured value (postgresql.conf, ALTER ROLE), not to 0: an operator's limit stays.
_IN_ORDER = text("SET LOCAL lock_timeout TO DEFAULT")


async def lock_workers(session: AsyncSession, wanted: Iterable[str | None], held: set[str]) -> None:
    """Lock the worker_load rows of `wanted` not in `held` (this transaction's), then add them to it.

    Two transactions deadlock when each waits for a row the other holds; they cannot while every
    transaction waits only for rows after all those it holds, in worker-id order, so that is how
    rows are waited for (in one statement). A row before the last one held, as a second placement
    attempt may want, is waited for only briefly: if it stays busy the statement fails with
    lock_not_available, and the caller runs the whole transaction again, which then takes its
    rows in order from the start. A single row after the last held is left to the UPDATE that follows.
    """
    new = sorted({worker for worker in wanted if worker} - held)
    if not new:
        return
    if held and new[0] < max(held):
        await session.execute(_OUT_OF_ORDER)
        await session.execute(_LOCK_WORKERS, {"ids": new})
        await session.execute(_IN_ORDER)
    elif len(new) > 1:
        await session.execute(_LOCK_WORKERS, {"ids": new})
    held.update(new)


async def _store(
    session: AsyncSession, before: CaseState | None, decision: Decision, *, received_at: datetime | None
) -> None:
    state = decision.state
    row = row_from_state(state, received_at=received_at)
    if before is None:
        await session.execute(pg_insert(tables.cases).values(row).on_conflict_do_nothing())
    else:
        await session.execute(update(tables.cases).where(tables.cases.c.case_id == state.facts.case_id).values(row))
    offers = tables.offers.c
    if decision.ended_offer is not None:
        worker, outcome = decision.ended_offer
        await session.execute(
            update(tables.offers)
            .where(offers.case_id == state.facts.case_id, offers.worker_id == worker, offers.outcome.is_(None))
            .values(outcome=outcome)
        )
    if (offer := decision.offer) is not None:
        await session.execute(
            tables.offers.insert().values(
                case_id=state.facts.case_id,
                worker_id=offer.worker_id,
                tier=offer.tier,
                station_id=offer.station_id,
                resident_ref=state.facts.resident_ref,
                accept_by=offer.accept_by,
            )
        )


# A case that moved up or waits goes to supervisors, whose push then says by when it must be resolved.
_CARRY_RESOLVE_BY = frozenset({"escalated", "queued"})


def decision_events(decision: Decision) -> list[tuple[str, dict[str, Any]]]:
    """A decision's events as (name, data) for `emit_case_events`: the case's facts, the event's
    fields and, for an event that moves the case, its status, tier and station after it."""
    facts = decision.state.facts
    common = {
        "case_id": facts.case_id,
        "category": facts.category,
        "risk_level": facts.risk_level,
        "resident_ref": facts.resident_ref,
    }
    events: list[tuple[str, dict[str, Any]]] = []
    for event in decision.events:
        data = {**common, **event.fields}
        if event.name in _CARRY_RESOLVE_BY:
            data["resolve_by"] = decision.state.resolve_by
        status = STATUS_AFTER[event.name]
        if status is not None:
            data |= {"status": status.value, "tier": event.tier, "station_id": event.station_id}
        events.append((event.name, data))
    return events


async def _emit(session: AsyncSession, decision: Decision) -> None:
    # Events that move the case and events that keep it (sla_*, which take their position from
    # the case head) are emitted in separate calls: each run of one kind in one, in order.
    runs = itertools.groupby(decision_events(decision), key=lambda event: STATUS_AFTER[event[0]] is not None)
    for _, run in runs:
        await emit_case_events(session, list(run), source=SOURCE)


async def route_received_case(
    session: AsyncSession, event: CaseReceived, *, policy: Policy, networks: NetworkSource | None = None
) -> Decision:
    """Route a newly received case and emit routed → escalated… → assigned | queued (on a fresh
    snapshot of the network, or `networks`': the router's LiveNetwork, which costs a few changed
    rows instead of the whole network per case)."""
    data = event.data
    facts = CaseFacts(
        case_id=data.case_id,
        room_id=data.room_id,
        category=str(data.category),
        risk_level=str(data.risk_level),
        resident_ref=data.resident_ref,
    )
    decision = await decide_and_apply(
        session,
        None,
        lambda ctx: admit(facts, ctx, received_at=event.time),
        policy=policy,
        resident_ref=facts.resident_ref,
        networks=networks,
        received_at=event.time,
    )
    assert decision is not None, "a received case is always routed"
    state = decision.state
    log.debug("router.case_routed", rule=state.rule, tier=state.tier, station_id=state.station_id, status=state.status)
    return decision


async def _actor(session: AsyncSession, user_id: str) -> Actor | None:
    user = await get_user(session, user_id)
    return Actor(user.id, user.role, user.station_id) if user is not None else None


async def apply_command(
    session: AsyncSession, command: CaseCommand, *, policy: Policy, networks: NetworkSource | None = None
) -> CommandResult:
    """Apply a worker's or supervisor's action and publish the router's answer to it."""
    state = await lock_case(session, command.case_id)
    if state is None:
        result = _result(command, "not_found", None, f"no routed case {command.case_id!r}")
    else:
        actor = await _actor(session, command.actor_id)
        try:
            # A refusal found on a retry must undo the capacity released on the first attempt.
            async with session.begin_nested():
                decision = await decide_and_apply(
                    session,
                    state,
                    lambda ctx: decide_command(state, command, actor, ctx),
                    policy=policy,
                    resident_ref=state.facts.resident_ref,
                    networks=networks,
                )
            assert decision is not None
            result = _result(command, "applied", decision.state.status)
        except CommandRefused as refused:
            result = _result(command, refused.outcome, state.status, refused.message)
    await enqueue(session, topic=CASE_COMMAND_RESULTS, key=command.case_id, payload=result.model_dump_json().encode())
    log.debug("router.command", action=command.action, outcome=result.outcome)
    return result


def _result(command: CaseCommand, outcome: Any, status: str | None, message: str = "") -> CommandResult:
    return CommandResult(
        command_id=command.command_id,
        case_id=command.case_id,
        action=command.action,
        outcome=outcome,
        status=CaseStatus(status) if status is not None else None,
        message=message,
    )
