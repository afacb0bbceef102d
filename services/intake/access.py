"""Who is calling and what they may see: bearer tokens, case visibility, supervisors' scope; and
the access log of who read which case."""

from __future__ import annotations

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
