"""Who is calling and what they may see: bearer tokens, case visibility, supervisors' scope; and
the access log of who read which case."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.referral import FieldError
from services.intake import tables
from services.intake.domain import may_see_case
from services.intake.errors import NO_BEARER, ApiError
from services.shared.directory import (
    StationRow,
    User,
    ancestors,
    authenticate,
    get_station,
    hash_token,
    live_token_users,
)
from services.shared.settings import Settings

bearer = HTTPBearer(auto_error=False)
_UNAUTHORIZED = "the bearer token is unknown or revoked"

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


def token_cache_of(request: Request) -> TokenCache:
    """The app's cache of live tokens (POST /v1/referrals)."""
    return request.app.state.token_cache


def settings_of(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


async def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> User:
    """The user of the bearer token, or 401."""
    if credentials is None:
        raise ApiError(401, NO_BEARER)
    async with sessions_of(request)() as session:
        user = await authenticate(session, credentials.credentials)
    if user is None:
        raise ApiError(401, _UNAUTHORIZED)
    request.state.caller_confirmed = True
    return user


CurrentUser = Annotated[User, Depends(current_user)]


TOKEN_CACHE_SECONDS = 5.0


class TokenCache:
    """Users of tokens recently found live, for POST /v1/referrals' early check (a 401 before the
    body is judged) without a query per request.

    Never the last word on a token: the transaction that stores a referral looks its token up
    again (and refuses it if revoked before that transaction began), and an answer that refuses
    the referral for another reason (403, 422) confirms the token first, so a revoked token gets
    401 as if there were no cache."""

    def __init__(
        self,
        *,
        ttl: float = TOKEN_CACHE_SECONDS,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._users: dict[str, tuple[User, float]] = {}

    def get(self, token_hash: str) -> User | None:
        """The user of a token found live less than `ttl` seconds ago, or None."""
        entry = self._users.get(token_hash)
        if entry is None:
            return None
        if self._clock() - entry[1] >= self._ttl:
            del self._users[token_hash]
            return None
        return entry[0]

    def put(self, token_hash: str, user: User) -> None:
        """Remember that the token was live just now."""
        if len(self._users) >= self._max_entries:
            self._users.clear()  # a flood of distinct tokens: start again rather than grow
        self._users[token_hash] = (user, self._clock())

    def forget(self, token_hash: str) -> None:
        """Drop a token found revoked (or whose user changed)."""
        self._users.pop(token_hash, None)


@dataclass(frozen=True, slots=True)
class Caller:
    """The user of a request's bearer token, and the token's hash (for the batch's check)."""

    user: User
    token_hash: str


async def referral_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Caller:
    """`current_user` for POST /v1/referrals, from the token cache when it can be (see TokenCache);
    still checked before the body is parsed: 401, not 422, for a bad token."""
    if credentials is None:
        raise ApiError(401, NO_BEARER)
    token_hash = hash_token(credentials.credentials)
    cache = token_cache_of(request)
    user = cache.get(token_hash)
    if user is not None:
        request.state.unconfirmed_token = token_hash
        return Caller(user, token_hash)
    async with sessions_of(request)() as session:
        user = (await live_token_users(session, [token_hash])).get(token_hash)
    if user is None:
        raise ApiError(401, _UNAUTHORIZED)
    cache.put(token_hash, user)
    request.state.caller_confirmed = True
    return Caller(user, token_hash)


ReferralCaller = Annotated[Caller, Depends(referral_caller)]


async def confirm_caller(request: Request) -> None:
    """401 unless the /v1 request's bearer token is live: what every other refusal (403, 404, 413,
    415, 422) checks first, so that a bad token is told so before anything about the request.

    A caller looked up for this request is confirmed already. One taken from the token cache is
    looked up again (it may have been revoked since). And where FastAPI refused the body before
    any dependency ran (a body that is not JSON), nobody looked at the token yet: it is looked up now.
    """
    if getattr(request.state, "caller_confirmed", False) or not request.url.path.startswith("/v1/"):
        return
    token_hash = getattr(request.state, "unconfirmed_token", None) or _bearer_hash(request)
    if token_hash is None:
        return  # no bearer at all: the route's own 401 (missing_bearer) answers that
    async with sessions_of(request)() as session:
        user = (await live_token_users(session, [token_hash])).get(token_hash)
    cache = token_cache_of(request)
    if user is None:
        cache.forget(token_hash)
        raise ApiError(401, _UNAUTHORIZED)
    cache.put(token_hash, user)
    request.state.caller_confirmed = True


def _bearer_hash(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return hash_token(token.strip()) if scheme.lower() == "bearer" and token.strip() else None


async def visible_case(session: AsyncSession, user: User, case_id: str) -> Any:
    """The case's read-model row if the user may see it; 404 otherwise, whether or not it exists
    (whether a case exists is itself information)."""
    case = (await session.execute(select(tables.cases).where(tables.cases.c.case_id == case_id))).first()
    if case is not None:
        path: set[str] = set()
        if user.role in ("worker", "supervisor"):
            path = set(await ancestors(session, case.room_id)) | set(await ancestors(session, case.station_id))
        if may_see_case(user, assignee_id=case.assignee_id, stations_on_path=path):
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


async def require_station(session: AsyncSession, station_id: str, *, field: str | None = None) -> StationRow:
    """The station; 404 if there is none (naming `field` when the id came as a query field)."""
    station = await get_station(session, station_id)
    if station is None:
        fields = [FieldError(field=field, message="unknown")] if field is not None else []
        raise ApiError(404, f"no station '{station_id}'", fields=fields)
    return station


async def require_in_scope(session: AsyncSession, user: User, station_id: str) -> None:
    """403 unless the station is the supervisor's own or below it."""
    home = require_supervisor(user)
    if home not in await ancestors(session, station_id):
        raise ApiError(403, f"station '{station_id}' is not {home} or below it")
