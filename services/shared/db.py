"""Database access: one metadata for every service schema, the async engine, sessions."""

from __future__ import annotations

import itertools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, MetaData, case
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from schemas.enums import RiskLevel
from services.shared.logging import get_logger
from services.shared.settings import Settings

log = get_logger(__name__)
T = TypeVar("T")

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


# A plan for each execution of a prepared statement, never the generic one PostgreSQL caches after
# five: the services prepare their statements while the tables are small, and a generic plan made
# then (a sequential scan filtering `= ANY($1)`) stays until the first ANALYZE, costing rows × array
# length per batch once the tables grow. Statements run once per batch, so planning each is cheap.
PLANNING = {"plan_cache_mode": "force_custom_plan"}
CONNECT_TIMEOUT_SECONDS = 10.0
# Far above any statement of the services (milliseconds; a batch of 1,000 rows well under a second).
STATEMENT_TIMEOUT_SECONDS = 20.0


def create_engine(settings: Settings, *, url: str | None = None) -> AsyncEngine:
    """The async engine of one service process."""
    return create_async_engine(
        url or settings.require_database(),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
        connect_args=service_connect_kwargs(settings),
    )


def service_connect_kwargs(settings: Settings) -> dict[str, Any]:
    """The asyncpg arguments of every connection a service opens, pooled or raw (the outbox
    relay's): its application name, PLANNING and the TLS arguments."""
    return {
        "server_settings": {"application_name": settings.kafka_client_id, **PLANNING},
        # Seconds to open a connection (asyncpg's default is 60), and for any one statement (asyncpg's
        # default is none): a database that does not answer, frozen or cut off, is reported (intake: a
        # JSON 503) and retried instead of holding a request or a batch until it comes back.
        "timeout": CONNECT_TIMEOUT_SECONDS,
        "command_timeout": STATEMENT_TIMEOUT_SECONDS,
        **asyncpg_connect_kwargs(settings),
    }


# Modes that require TLS, built as an SSLContext of ours (asyncpg then never falls back to plain).
_TLS_MODES = ("require", "verify-ca", "verify-full")


def asyncpg_connect_kwargs(settings: Settings) -> dict[str, Any]:
    """The TLS arguments of every asyncpg connection (the engine's and raw ones like the outbox
    relay's): `{}` when CASELINK_DATABASE_SSL_MODE is unset, which leaves TLS to the URL's own
    parameters and asyncpg's default (`prefer`), as before."""
    mode = settings.database_ssl_mode
    files = {
        "CASELINK_DATABASE_SSL_ROOTCERT": settings.database_ssl_rootcert,
        "CASELINK_DATABASE_SSL_CERT": settings.database_ssl_cert,
        "CASELINK_DATABASE_SSL_KEY": settings.database_ssl_key,
    }
    if mode not in _TLS_MODES:
        for name, path in files.items():
            if path is not None:
                raise SystemExit(
                    f"{name} is set but CASELINK_DATABASE_SSL_MODE is {mode or 'unset'}: "
                    f"use {', '.join(_TLS_MODES)}, or unset it"
                )
        return {} if mode is None else {"ssl": mode}
    if settings.database_ssl_key is not None and settings.database_ssl_cert is None:
        raise SystemExit("CASELINK_DATABASE_SSL_KEY is set without CASELINK_DATABASE_SSL_CERT, its certificate")
    for name, path in files.items():
        if path is not None and not path.is_file():
            raise SystemExit(f"{name}: no such file {path}")
    return {"ssl": _ssl_context(settings)}


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    """require: encrypted; the certificate is checked only when a root certificate is given (as
    libpq does). verify-ca: the chain is checked against CASELINK_DATABASE_SSL_ROOTCERT (else the
    system's CA store). verify-full: the chain and the host name."""
    mode, rootcert = settings.database_ssl_mode, settings.database_ssl_rootcert
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if mode == "require" and rootcert is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = mode == "verify-full"
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            if rootcert is None:
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
            else:
                context.load_verify_locations(cafile=rootcert)
        except (OSError, ssl.SSLError) as exc:
            raise SystemExit(
                f"CASELINK_DATABASE_SSL_ROOTCERT: cannot load CA certificates from {rootcert}: {exc}"
            ) from None
    if settings.database_ssl_cert is not None:
        try:
            context.load_cert_chain(settings.database_ssl_cert, settings.database_ssl_key)
        except (OSError, ssl.SSLError) as exc:
            raise SystemExit(
                "CASELINK_DATABASE_SSL_CERT / CASELINK_DATABASE_SSL_KEY: cannot load the client certificate "
                f"{settings.database_ssl_cert} with key {settings.database_ssl_key or '(in the same file)'}: {exc}"
            ) from None
    return context


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


# deadlock_detected, serialization_failure, lock_not_available (a lock_timeout ran out):
# PostgreSQL aborted one of two concurrent transactions; running it again succeeds.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
# Times a transaction that met one of those is run again at once, before its caller's own retry
# policy (which waits, or redelivers the message) takes over.
CONFLICT_RETRIES = 3
# The server is going down or coming up (admin_shutdown, crash_shutdown, "the database system is
# starting up"), is full, or the connection broke (class 08). asyncpg raises these as server errors,
# which SQLAlchemy wraps in a plain DBAPIError: without this, a restart that takes a few seconds
# would use up a message's retries and dead-letter a perfectly good referral.
UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def is_conflict(exc: BaseException) -> bool:
    """A deadlock, serialization failure or lock timeout: the same transaction run again succeeds."""
    return sqlstate_of(exc) in RETRYABLE_SQLSTATES


async def retry_conflicts(run: Callable[[], Awaitable[T]], *, what: str) -> T:
    """`run()` (one whole transaction), run again at once when it lost a conflict with another one,
    up to CONFLICT_RETRIES times; then, or on any other error, the error is the caller's."""
    for attempt in itertools.count(1):
        try:
            return await run()
        except DBAPIError as exc:
            if attempt > CONFLICT_RETRIES or not is_conflict(exc):
                raise
            log.info("db.conflict_retried", what=what, attempt=attempt, sqlstate=sqlstate_of(exc))
    raise AssertionError("unreachable")


def sqlstate_of(exc: BaseException) -> str:
    """The SQLSTATE of the driver error a SQLAlchemy error wraps ("" when there is none)."""
    return str(getattr(getattr(exc, "orig", None), "sqlstate", None) or "")


def is_transient_db_error(exc: BaseException) -> bool:
    """True when the database is unreachable, restarting, or asked for the transaction to be retried,
    rather than the request being wrong."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    sqlstate = sqlstate_of(exc)
    if isinstance(exc, DBAPIError) and (
        sqlstate in RETRYABLE_SQLSTATES or sqlstate in UNAVAILABLE_SQLSTATES or sqlstate.startswith("08")
    ):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OSError | ConnectionError | TimeoutError)


def most_urgent_first(risk_level: ColumnElement[str]) -> ColumnElement[int]:
    """An ORDER BY key putting critical cases first, then high, medium, low."""
    return case({risk.value: -risk.rank for risk in RiskLevel}, value=risk_level, else_=1)
