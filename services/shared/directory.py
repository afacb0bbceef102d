"""The station network and its users in the database: loading a network file, tokens, look-ups."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.shared.network import NetworkFile, NetworkFileError
from services.shared.tables import api_tokens, stations, users

TOKEN_PREFIX = "clk_"


@dataclass(frozen=True)
class User:
    """An authenticated caller."""

    id: str
    role: str
    station_id: str | None
    name: str = ""


@dataclass(frozen=True)
class StationRow:
    """A station as the services need it."""

    id: str
    name: str
    tier: str
    parent_id: str | None


async def load_network(session: AsyncSession, network: NetworkFile) -> tuple[int, int]:
    """Create or update every station and user of a network file (idempotent); return their counts.

    Parents and users' stations the file does not define must already be in the database, and
    stations in the database below those the file defines must still fit under them (a file may
    change a station's tier). If not, this raises NetworkFileError; the caller's transaction then
    rolls back whatever was written.
    """
    outside = network.outside_station_ids()
    if outside:
        # FOR SHARE: a concurrent load cannot change these stations' tiers (or remove them) until this
        # transaction, which relies on them, commits.
        rows = await session.execute(
            select(stations.c.id, stations.c.tier).where(stations.c.id.in_(sorted(outside))).with_for_update(read=True)
        )
        errors = network.outside_station_errors({row.id: row.tier for row in rows})
        if errors:
            raise NetworkFileError(errors)
    # Parents before children, so the foreign key on parent_id holds row by row.
    for station in network.stations_top_down():
        values: dict[str, Any] = {
            "id": station.id,
            "name": station.name,
            "tier": str(station.tier),
            "parent_id": station.parent,
            "notify": [channel.model_dump(mode="json") for channel in station.notify],
        }
        await session.execute(
            pg_insert(stations)
            .values(values)
            .on_conflict_do_update(index_elements=[stations.c.id], set_={**values, "updated_at": text("now()")})
        )
    # After the writes, so this transaction holds the row locks of the file's stations: a load adding a
    # child under one of them (it locks its parent FOR SHARE, above) either committed before and is seen
    # here, or waits for this commit and then checks against the new tier.
    defined = sorted({station.id for station in network.stations})
    if defined:
        children = await session.execute(
            select(stations.c.id, stations.c.tier, stations.c.parent_id).where(
                stations.c.parent_id.in_(defined), stations.c.id.not_in(defined)
            )
        )
        errors = network.outside_children_errors((row.id, row.tier, row.parent_id) for row in children)
        if errors:
            raise NetworkFileError(errors)
    for user in network.users:
        user_values: dict[str, Any] = {
            "id": user.id,
            "name": user.name,
            "role": str(user.role),
            "station_id": user.station,
            "specialties": [str(s) for s in user.specialties],
            "certification": str(user.certification),
            "capacity": user.capacity,
            "on_duty": user.on_duty,
            "notify": [channel.model_dump(mode="json") for channel in user.notify],
        }
        await session.execute(
            pg_insert(users)
            .values(user_values)
            .on_conflict_do_update(index_elements=[users.c.id], set_={**user_values, "updated_at": text("now()")})
        )
    # Every worker has a load row from the start; load itself is the router's and is never reset here.
    await session.execute(
        text(
            "INSERT INTO router.worker_load (worker_id, load, idle_since) "
            "SELECT id, 0, now() FROM shared.users WHERE role = 'worker' ON CONFLICT (worker_id) DO NOTHING"
        )
    )
    return len(network.stations), len(network.users)


def hash_token(token: str) -> str:
    """The stored form of a bearer token."""
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(session: AsyncSession, *, user_id: str) -> str:
    """Issue a new bearer token for a user; only its hash is stored."""
    exists = (await session.execute(select(users.c.id).where(users.c.id == user_id))).first()
    if exists is None:
        raise LookupError(f"no user with id '{user_id}' (load the network file first)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await session.execute(api_tokens.insert().values(token_hash=hash_token(token), user_id=user_id))
    return token


async def revoke_tokens(session: AsyncSession, *, user_id: str) -> int:
    """Revoke every live token of a user; return how many."""
    result = await session.execute(
        update(api_tokens)
        .where(api_tokens.c.user_id == user_id, api_tokens.c.revoked_at.is_(None))
        .values(revoked_at=text("now()"))
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# A constant text: asyncpg prepares it once per connection.
_LIVE_TOKENS = text(
    "SELECT t.token_hash, u.id, u.role, u.station_id, u.name FROM shared.api_tokens t "
    "JOIN shared.users u ON u.id = t.user_id "
    "WHERE t.token_hash = ANY(CAST(:hashes AS text[])) AND t.revoked_at IS NULL"
)


async def authenticate(session: AsyncSession, token: str) -> User | None:
    """The user a live token belongs to, or None."""
    token_hash = hash_token(token)
    return (await live_token_users(session, [token_hash])).get(token_hash)


async def live_token_users(session: AsyncSession, token_hashes: list[str]) -> dict[str, User]:
    """The users of those of these token hashes that are live (issued and not revoked), by hash."""
    rows = await session.execute(_LIVE_TOKENS, {"hashes": token_hashes})
    return {row.token_hash: User(id=row.id, role=row.role, station_id=row.station_id, name=row.name) for row in rows}


async def get_user(session: AsyncSession, user_id: str) -> User | None:
    """One user, or None."""
    row = (
        await session.execute(
            select(users.c.id, users.c.role, users.c.station_id, users.c.name).where(users.c.id == user_id)
        )
    ).first()
    return User(id=row.id, role=row.role, station_id=row.station_id, name=row.name) if row else None


async def get_station(session: AsyncSession, station_id: str) -> StationRow | None:
    """One station, or None."""
    row = (
        await session.execute(
            select(stations.c.id, stations.c.name, stations.c.tier, stations.c.parent_id).where(
                stations.c.id == station_id
            )
        )
    ).first()
    return StationRow(row.id, row.name, row.tier, row.parent_id) if row else None


async def ancestors(session: AsyncSession, station_id: str) -> list[str]:
    """The station and every station above it, nearest first."""
    rows = await session.execute(
        text(
            "WITH RECURSIVE up(id, parent_id, depth) AS ("
            " SELECT id, parent_id, 0 FROM shared.stations WHERE id = :id"
            " UNION ALL SELECT s.id, s.parent_id, up.depth + 1 FROM shared.stations s JOIN up ON s.id = up.parent_id)"
            " SELECT id FROM up ORDER BY depth"
        ),
        {"id": station_id},
    )
    return [row.id for row in rows]


async def subtree(session: AsyncSession, station_id: str) -> list[str]:
    """The station and every station below it."""
    rows = await session.execute(
        text(
            "WITH RECURSIVE down(id) AS ("
            " SELECT id FROM shared.stations WHERE id = :id"
            " UNION ALL SELECT s.id FROM shared.stations s JOIN down ON s.parent_id = down.id)"
            " SELECT id FROM down"
        ),
        {"id": station_id},
    )
    return [row.id for row in rows]
