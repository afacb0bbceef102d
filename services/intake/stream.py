"""`GET /v1/stream`: the case events a caller may see, live, as Server-Sent Events, resumable
with Last-Event-ID (the event's position in intake's timeline).

A stream can stay open for hours, so its token is looked up again every few seconds: once it is
revoked the stream ends (after an `error` event saying why), and a user moved to another station
or role sees from then on what the new one may see."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import ColumnElement, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.intake import tables
from services.intake.access import CurrentUser, bearer, sessions_of
from services.intake.errors import error_responses
from services.shared.directory import User, hash_token, live_token_users, subtree

router = APIRouter()
POLL_SECONDS = 0.5
KEEP_ALIVE_SECONDS = 15.0
BATCH = 500
# Positions are taken when a row is inserted but become visible when it commits, so a lower
# position can appear after a higher one. A missing position is waited for this long before
# the stream moves past it (most gaps are numbers used by duplicate deliveries, never filled).
GAP_WAIT_SECONDS = 2.0
# How long a revoked token (or a user's old station) may go on seeing events.
RECHECK_TOKEN_SECONDS = 5.0


@router.get(
    "/v1/stream",
    tags=["people"],
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`id:` position, `event: case`, `data:`; a revoked token: `event: error`, then the end",
        },
        **error_responses(401),
    },
)
async def stream(
    request: Request,
    user: CurrentUser,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)] = None,
    resume_after: Annotated[int | None, Query(alias="last_event_id", ge=0, le=2**62)] = None,
) -> StreamingResponse:
    """Live case events this user may see; resume after a position with Last-Event-ID."""
    sessions = sessions_of(request)
    async with sessions() as session:
        visible = await _visibility(session, user)
        start = _resume_position(last_event_id, resume_after)
        if start is None:
            start = int(
                (await session.execute(select(func.coalesce(func.max(tables.case_events.c.position), 0)))).scalar_one()
            )
    assert credentials is not None  # CurrentUser has answered 401 without one
    reader = _Reader(user, hash_token(credentials.credentials), visible)
    return StreamingResponse(
        _events(request, sessions, reader, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _resume_position(header: str | None, query: int | None) -> int | None:
    if header is not None and header.strip().isdigit() and len(header.strip()) <= 18:
        return int(header.strip())
    return query


async def _visibility(session: AsyncSession, user: User) -> ColumnElement[bool]:
    """The events a user sees, as a condition on intake.case_events joined to intake.cases: those
    of the cases the user may see now (the same rules as GET /v1/cases), and those that happened
    while the case was at one of the user's stations or with the user (the event that ended a
    worker's offer or took the case away from a station, say)."""
    cases, events = tables.cases.c, tables.case_events.c
    if user.role == "system":
        return literal(True)
    on_path: list[ColumnElement[bool]] = []
    if user.role in ("worker", "supervisor") and user.station_id is not None:
        below = await subtree(session, user.station_id)
        on_path = [cases.room_id.in_(below), cases.station_id.in_(below), events.audience_stations.overlap(below)]
    if user.role == "worker":
        return or_(cases.assignee_id == user.id, events.audience_workers.contains([user.id]), *on_path)
    return or_(*on_path) if on_path else literal(False)


class _Reader:
    """Who reads a stream, through which token, and what they may see: checked again every
    RECHECK_TOKEN_SECONDS."""

    def __init__(self, user: User, token_hash: str, visible: ColumnElement[bool]) -> None:
        self.user = user
        self.token_hash = token_hash
        self.checked_at = time.monotonic()
        self.query = _query(visible)

    async def still_allowed(self, session: AsyncSession) -> bool:
        """False once the token is revoked; a changed user (station, role) gets their new visibility."""
        if time.monotonic() - self.checked_at < RECHECK_TOKEN_SECONDS:
            return True
        self.checked_at = time.monotonic()
        user = (await live_token_users(session, [self.token_hash])).get(self.token_hash)
        if user is None:
            return False
        if user != self.user:
            self.user, self.query = user, _query(await _visibility(session, user))
        return True


def _query(visible: ColumnElement[bool]) -> Any:
    events = tables.case_events.c
    return (
        select(events.position, events.event, visible.label("visible"))
        .select_from(tables.case_events.outerjoin(tables.cases, tables.cases.c.case_id == events.case_id))
        .order_by(events.position)
        .limit(BATCH)
    )


_REVOKED = {"error": {"code": "unauthorized", "message": "the bearer token was revoked", "fields": []}}


async def _events(
    request: Request, sessions: async_sessionmaker[AsyncSession], reader: _Reader, position: int
) -> AsyncIterator[str]:
    events = tables.case_events.c
    gap_seen_at: float | None = None
    quiet_since = time.monotonic()
    yield ": stream open\n\n"
    while not await request.is_disconnected():
        async with sessions() as session:
            if not await reader.still_allowed(session):
                yield f"event: error\ndata: {json.dumps(_REVOKED)}\n\n"
                return
            rows = (await session.execute(reader.query.where(events.position > position))).all()
        sent = False
        for row in rows:
            if row.position != position + 1:
                gap_seen_at = gap_seen_at or time.monotonic()
                if time.monotonic() - gap_seen_at < GAP_WAIT_SECONDS:
                    break
            gap_seen_at = None
            position = row.position
            if row.visible:
                sent = True
                yield _message(position, row.event)
        if sent:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= KEEP_ALIVE_SECONDS:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        if len(rows) < BATCH or gap_seen_at is not None:
            await asyncio.sleep(POLL_SECONDS)


def _message(position: int, event: Any) -> str:
    return f"id: {position}\nevent: case\ndata: {json.dumps(event, ensure_ascii=False, separators=(',', ':'))}\n\n"
