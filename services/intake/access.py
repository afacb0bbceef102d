"""Who is calling and what they may see: bearer tokens, case visibility, supervisors' scope; and
the access log of who read which case."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.intake import tables
from services.intake.domain import may_see_case
from services.intake.errors import ApiError
from services.shared.directory import User, ancestors, authenticate
from services.shared.settings import Settings

bearer = HTTPBearer(auto_error=False)

# Identifiers in paths and queries: printable, no NUL (PostgreSQL text cannot hold one).
_IDENTIFIER = r"^[^\x00-\x1f]+$"
CaseId = Annotated[str, Path(min_length=1, max_length=100, pattern=_IDENTIFIER, examples=["3f2b…"])]
StationId = Annotated[str, Path(min_length=1, max_length=100, pattern=_IDENTIFIER, examples=["T-360402101"])]
StationQuery = Annotated[
    str | None, Query(min_length=1, max_length=100, pattern=_IDENTIFIER, description="default: the caller's station")
]


def sessions_of(request: Request) -> async_sessionmaker[AsyncSession]:
    """The app's database sessions."""
    return request.app.state.sessions


def settings_of(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


async def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> User:
    """The user of the bearer token, or 401."""
    if credentials is None:
        raise ApiError(401, "an Authorization: Bearer <token> header is required")
    async with sessions_of(request)() as session:
        user = await authenticate(session, credentials.credentials)
    if user is None:
        raise ApiError(401, "the bearer token is unknown or revoked")
    return user


CurrentUser = Annotated[User, Depends(current_user)]


# Connections the pool keeps for intake's consumers (submissions, projection, command results).
RESERVED_CONNECTIONS = 3


def request_slots(pool_size: int) -> asyncio.Semaphore:
    """How many requests may hold a `request_session` at once: the pool less the consumers' share.

    Beyond the pool's size the engine opens overflow connections and closes them again on return;
    under steady load that is a new connection (fork, TLS attempt, codec introspection) per
    request or so, slower than waiting here for a pooled one."""
    return asyncio.Semaphore(max(1, pool_size - RESERVED_CONNECTIONS))


async def request_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session for a whole request; closed (rolled back unless committed) when the route returns."""
    async with request.app.state.request_slots, sessions_of(request)() as session:
        yield session


RequestSession = Annotated[AsyncSession, Depends(request_session, scope="function")]


async def user_in_request_session(
    session: RequestSession, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> User:
    """`current_user`, looked up in the transaction the route then writes in: one connection and
    one transaction per request instead of two. Still checked before the body is parsed (401, not
    422, for a bad token), and a token revoked before that transaction began is refused."""
    if credentials is None:
        raise ApiError(401, "an Authorization: Bearer <token> header is required")
    user = await authenticate(session, credentials.credentials)
    if user is None:
        raise ApiError(401, "the bearer token is unknown or revoked")
    return user


UserInRequestSession = Annotated[User, Depends(user_in_request_session)]


async def visible_case(session: AsyncSession, user: User, case_id: str) -> Any:
    """The case's read-model row if the user may see it; 404 otherwise, whether or not it exists
    (whether a case exists is itself information)."""
    case = (await session.execute(select(tables.cases).where(tables.cases.c.case_id == case_id))).first()
    if case is not None:
        path: set[str] = set()
        if user.role == "supervisor":
            path = set(await ancestors(session, case.room_id)) | set(await ancestors(session, case.station_id))
        if may_see_case(user, assignee_id=case.assignee_id, room_id=case.room_id, stations_on_path=path):
            return case
    raise ApiError(404, f"no case '{case_id}' visible to this user")


async def record_case_read(session: AsyncSession, *, user: User, case_id: str, route: str) -> None:
    """Add a read of a case's data by `user` through `route` to the access log (intake.case_reads);
    commits with the caller's transaction, so a read that is answered is a read that is logged."""
    await session.execute(tables.case_reads.insert().values(user_id=user.id, case_id=case_id, route=route))


def require_supervisor(user: User) -> str:
    """The supervisor's home station; 403 for anyone else."""
    if user.role != "supervisor" or user.station_id is None:
        raise ApiError(403, "only supervisors may do this")
    return user.station_id


async def require_in_scope(session: AsyncSession, user: User, station_id: str) -> None:
    """403 unless the station is the supervisor's own or below it."""
    home = require_supervisor(user)
    if home not in await ancestors(session, station_id):
        raise ApiError(403, f"station '{station_id}' is not {home} or below it")
