"""Alembic environment: async engine from the caselink settings, every service schema."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import services.intake.tables
import services.notifier.tables
import services.router.tables
import services.shared.tables  # noqa: F401  (registers the tables on the metadata)
from services.shared.db import SCHEMAS, asyncpg_connect_kwargs, metadata
from services.shared.settings import get_settings

config = context.config


def _run(connection: Connection) -> None:
    for schema in SCHEMAS:
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_schemas=True,
        version_table_schema="shared",
        include_name=lambda name, type_, parent: type_ != "schema" or name in SCHEMAS,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    # The same TLS settings as the services' own connections (CASELINK_DATABASE_SSL_*).
    engine = create_async_engine(
        config.get_main_option("sqlalchemy.url") or "", connect_args=asyncpg_connect_kwargs(get_settings())
    )
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


asyncio.run(_run_async())
