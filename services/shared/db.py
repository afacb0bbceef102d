"""Database access: one metadata for every service schema, the async engine, sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import MetaData
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from services.shared.settings import Settings

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

SCHEMAS = ("shared", "intake", "router", "notifier")


def create_engine(settings: Settings, *, url: str | None = None) -> AsyncEngine:
    """The async engine of one service process."""
    return create_async_engine(
        url or settings.require_database(),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
        connect_args={"server_settings": {"application_name": settings.kafka_client_id}},
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded values after commit (handlers read them to build events)."""
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit on success, roll back on any error."""
    async with sessions() as session, session.begin():
        yield session


def asyncpg_dsn(database_url: str) -> str:
    """The plain libpq form of a SQLAlchemy asyncpg URL, for raw asyncpg connections."""
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


# deadlock_detected, serialization_failure: PostgreSQL aborted one of two concurrent transactions
# (say, two routers moving load between the same workers in opposite order); running it again succeeds.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def is_transient_db_error(exc: BaseException) -> bool:
    """True when the database is unreachable, restarting, or asked for the transaction to be retried,
    rather than the request being wrong."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OSError | ConnectionError | TimeoutError)
