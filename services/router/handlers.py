"""The router's unit of work: a received case is routed by the pure domain, capacity is reserved
concurrency-safely, and the decision goes out as routed → escalated… → assigned | queued."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.events import CaseReceived, EventSource
from services.router import tables
from services.router.domain import Assignment, CaseFacts, Network, RoutingOutcome, Station, Worker, route_new_case
from services.router.policy import Policy
from services.shared.logging import get_logger
from services.shared.outbox import emit_case_event
from services.shared.tables import stations, users
from services.shared.time import utc_now

log = get_logger(__name__)
SOURCE: EventSource = "caselink/router"
# Another router may take the last capacity between our read and our reservation; look again.
MAX_PLACEMENT_ATTEMPTS = 5


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
    """Workers who held a case of this resident before (continuity of care)."""
    rows = await session.execute(
        select(tables.offers.c.worker_id)
        .where(tables.offers.c.resident_ref == resident_ref)
        .where(tables.offers.c.outcome.is_distinct_from("declined"))
        .where(tables.offers.c.outcome.is_distinct_from("expired"))
        .distinct()
    )
    return frozenset(rows.scalars())


async def reserve_capacity(session: AsyncSession, assignment: Assignment) -> bool:
    """Add the case's weight to the worker's load if they are still on duty and it still fits.

    The conditional UPDATE is atomic under the row lock, so two routers can never both fill the
    last slot, and a worker taken off duty in between is never offered the case.
    """
    reserved = await session.execute(
        text(
            "UPDATE router.worker_load wl SET load = wl.load + :weight, updated_at = now() "
            "FROM shared.users u WHERE wl.worker_id = :worker AND u.id = wl.worker_id "
            "AND u.on_duty AND wl.load + :weight <= u.capacity RETURNING wl.load"
        ),
        {"worker": assignment.worker_id, "weight": assignment.weight},
    )
    return reserved.first() is not None


async def route_received_case(session: AsyncSession, event: CaseReceived, *, policy: Policy) -> RoutingOutcome:
    """Route a newly received case and emit the decision."""
    data = event.data
    facts = CaseFacts(
        case_id=data.case_id,
        room_id=data.room_id,
        category=str(data.category),
        risk_level=str(data.risk_level),
        resident_ref=data.resident_ref,
    )
    served = await served_before(session, data.resident_ref)
    for _ in range(MAX_PLACEMENT_ATTEMPTS):
        outcome = route_new_case(
            facts, policy=policy, network=await load_network(session), now=utc_now(), served_before=served
        )
        if outcome.assignment is None or await reserve_capacity(session, outcome.assignment):
            break
    else:
        raise RuntimeError("capacity kept changing while placing the case; retrying the message")
    await _record(session, facts, outcome, weight=policy.load_weight[facts.risk_level])
    await _emit(session, data.model_dump(), outcome)
    log.info(
        "router.case_routed",
        rule=outcome.rule,
        tier=outcome.tier,
        station_id=outcome.station_id,
        assigned=outcome.assignment is not None,
        escalations=len(outcome.escalations),
    )
    return outcome


async def _record(session: AsyncSession, facts: CaseFacts, outcome: RoutingOutcome, *, weight: int) -> None:
    assignment = outcome.assignment
    await session.execute(
        pg_insert(tables.cases)
        .values(
            case_id=facts.case_id,
            room_id=facts.room_id,
            category=facts.category,
            risk_level=facts.risk_level,
            resident_ref=facts.resident_ref,
            status="offered" if assignment else "queued",
            tier=outcome.tier,
            station_id=outcome.station_id,
            rule=outcome.rule,
            assignee_id=assignment.worker_id if assignment else None,
            weight=weight,
            accept_by=assignment.accept_by if assignment else None,
        )
        .on_conflict_do_nothing()
    )
    if assignment:
        await session.execute(
            tables.offers.insert().values(
                case_id=facts.case_id,
                worker_id=assignment.worker_id,
                tier=assignment.tier,
                station_id=assignment.station_id,
                resident_ref=facts.resident_ref,
                accept_by=assignment.accept_by,
            )
        )


async def _emit(session: AsyncSession, received: dict[str, Any], outcome: RoutingOutcome) -> None:
    common = {key: received[key] for key in ("case_id", "category", "risk_level", "resident_ref")}
    explanation = outcome.explanation
    await emit_case_event(
        session,
        "routed",
        source=SOURCE,
        data={
            **common,
            "status": "routed",
            "tier": outcome.target_tier,
            "station_id": outcome.target_station_id,
            "rule": outcome.rule,
            "reason": outcome.reason,
            "policy_version": outcome.policy_version,
            "explanation": explanation,
        },
    )
    for step in outcome.escalations:
        await emit_case_event(
            session,
            "escalated",
            source=SOURCE,
            data={
                **common,
                "status": "escalated",
                "tier": step.to_tier,
                "station_id": step.to_station_id,
                "from_tier": step.from_tier,
                "from_station_id": step.from_station_id,
                "reason": step.reason,
            },
        )
    placed = {**common, "tier": outcome.tier, "station_id": outcome.station_id}
    if (assignment := outcome.assignment) is not None:
        await emit_case_event(
            session,
            "assigned",
            source=SOURCE,
            data={
                **placed,
                "status": "offered",
                "worker_id": assignment.worker_id,
                "accept_by": assignment.accept_by,
                "candidates_considered": assignment.candidates_considered,
                "score": assignment.score,
                "explanation": explanation,
            },
        )
    else:
        await emit_case_event(
            session, "queued", source=SOURCE, data={**placed, "status": "queued", "waiting_at": outcome.station_id}
        )
