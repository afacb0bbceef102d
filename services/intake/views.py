"""Supervisors' read views: who am I, the escalation queue of a subtree, a station's workload."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import case, func, select

from services.intake import tables
from services.intake.access import (
    CurrentUser,
    StationId,
    StationQuery,
    require_in_scope,
    require_station,
    require_supervisor,
    sessions_of,
)
from services.intake.domain import HOLDING_STATUSES
from services.intake.errors import error_responses
from services.shared.db import most_urgent_first
from services.shared.directory import subtree
from services.shared.tables import stations, users
from services.shared.time import utc_now

router = APIRouter()
_FINISHED = ("resolved", "closed")
# Most urgent first: risk, then the longest wait, then the case id for a stable order.
_RISK_ORDER = most_urgent_first(tables.cases.c.risk_level)


class Me(BaseModel):
    """The user a token belongs to."""

    id: str
    name: str
    role: str
    station_id: str | None


class Escalation(BaseModel):
    """A case on the escalation queue, and why it is there."""

    case_id: str
    station_id: str = Field(description="where it waits (or waited) for a supervisor")
    tier: str = Field(description="the tier of `station_id` (the case may have moved since: see `status`)")
    category: str
    risk_level: str
    status: str
    reason: str = Field(description="no_capacity · offer_expired · declined · sla_breach · manual · rule")
    since: datetime
    waiting_seconds: int
    closed_at: datetime | None
    assignee_id: str | None


class EscalationPage(BaseModel):
    items: list[Escalation]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class StationInfo(BaseModel):
    id: str
    name: str
    tier: str
    parent_id: str | None


class ChildStation(BaseModel):
    id: str
    name: str
    tier: str
    open_cases: int


class WorkerLoad(BaseModel):
    id: str
    name: str
    specialties: list[str]
    certification: str
    capacity: int
    load: int = Field(description="weighted sum of the worker's offered, accepted and in-progress cases")
    on_duty: bool
    open_cases: int


class Workload(BaseModel):
    station: StationInfo
    open_cases: int
    escalations_open: int
    children: list[ChildStation]
    workers: list[WorkerLoad]


@router.get("/v1/me", response_model=Me, tags=["people"], responses=error_responses(401))
async def me(user: CurrentUser) -> Me:
    """Who the token belongs to: id, name, role and home station."""
    return Me(id=user.id, name=user.name, role=user.role, station_id=user.station_id)


@router.get(
    "/v1/escalations",
    response_model=EscalationPage,
    tags=["supervisors"],
    responses=error_responses(401, 403, 404, 422),
)
async def escalations(
    request: Request,
    user: CurrentUser,
    station_id: StationQuery = None,
    status: Literal["open", "closed", "all"] = "open",
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0, le=10_000_000),
) -> EscalationPage:
    """The escalation queue of a station and every station below it, most urgent first."""
    station = station_id or require_supervisor(user)
    cases = tables.cases.c
    async with sessions_of(request)() as session:
        if station_id is not None:
            await require_station(session, station_id, field="station_id")
        await require_in_scope(session, user, station)
        where = [cases.escalation_station_id.in_(await subtree(session, station)), cases.escalation_reason.is_not(None)]
        if status == "open":
            where.append(cases.escalation_closed_at.is_(None))
        elif status == "closed":
            where.append(cases.escalation_closed_at.is_not(None))
        total = (await session.execute(select(func.count()).select_from(tables.cases).where(*where))).scalar_one()
        rows = await session.execute(
            select(tables.cases, stations.c.tier.label("escalation_tier"))
            .join(stations, stations.c.id == cases.escalation_station_id)
            .where(*where)
            .order_by(_RISK_ORDER, cases.escalated_at, cases.case_id)
            .limit(limit)
            .offset(offset)
        )
        now = utc_now()
        items = [
            Escalation(
                case_id=row.case_id,
                station_id=row.escalation_station_id,
                tier=row.escalation_tier,
                category=row.category,
                risk_level=row.risk_level,
                status=row.status,
                reason=row.escalation_reason,
                since=row.escalated_at,
                waiting_seconds=int(((row.escalation_closed_at or now) - row.escalated_at).total_seconds()),
                closed_at=row.escalation_closed_at,
                assignee_id=row.assignee_id,
            )
            for row in rows
        ]
    next_offset = offset + len(items) if offset + len(items) < total else None
    return EscalationPage(items=items, total=total, limit=limit, offset=offset, next_offset=next_offset)


@router.get(
    "/v1/stations/{station_id}/workload",
    response_model=Workload,
    tags=["supervisors"],
    responses=error_responses(401, 403, 404),
)
async def workload(request: Request, station_id: StationId, user: CurrentUser) -> Workload:
    """A station's workers with specialties, load, capacity and duty; its open cases; its children."""
    require_supervisor(user)
    cases = tables.cases.c
    async with sessions_of(request)() as session:
        station = await require_station(session, station_id)
        await require_in_scope(session, user, station_id)
        open_here = (cases.station_id == station_id) & cases.status.not_in(_FINISHED)
        open_cases = (await session.execute(select(func.count()).where(open_here))).scalar_one()
        escalations_open = (
            await session.execute(
                select(func.count()).where(
                    cases.escalation_station_id == station_id, cases.escalation_closed_at.is_(None)
                )
            )
        ).scalar_one()
        children = await session.execute(
            select(stations.c.id, stations.c.name, stations.c.tier, func.count(cases.case_id).label("open_cases"))
            .outerjoin(tables.cases, (cases.station_id == stations.c.id) & cases.status.not_in(_FINISHED))
            .where(stations.c.parent_id == station_id)
            .group_by(stations.c.id)
            .order_by(stations.c.id)
        )
        holding = cases.status.in_(HOLDING_STATUSES)
        workers = await session.execute(
            select(
                users.c.id,
                users.c.name,
                users.c.specialties,
                users.c.certification,
                users.c.capacity,
                users.c.on_duty,
                func.coalesce(func.sum(case((holding, cases.weight), else_=0)), 0).label("load"),
                func.count(cases.case_id).filter(cases.status.not_in(_FINISHED)).label("open_cases"),
            )
            .outerjoin(tables.cases, cases.assignee_id == users.c.id)
            .where(users.c.station_id == station_id, users.c.role == "worker")
            .group_by(users.c.id)
            .order_by(users.c.id)
        )
        return Workload(
            station=StationInfo(id=station.id, name=station.name, tier=station.tier, parent_id=station.parent_id),
            open_cases=open_cases,
            escalations_open=escalations_open,
            children=[ChildStation(id=r.id, name=r.name, tier=r.tier, open_cases=r.open_cases) for r in children],
            workers=[
                WorkerLoad(
                    id=r.id,
                    name=r.name,
                    specialties=list(r.specialties),
                    certification=r.certification,
                    capacity=r.capacity,
                    load=int(r.load),
                    on_duty=r.on_duty,
                    open_cases=r.open_cases,
                )
                for r in workers
            ],
        )
