"""The migrations build exactly the schema the code's tables describe, and can be undone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import services.intake.tables
import services.notifier.tables
import services.router.tables
import services.shared.tables  # noqa: F401  (registers every table on the metadata)
from services.shared.db import SCHEMAS, metadata
from services.shared.migrate import alembic_config, upgrade_async

pytestmark = pytest.mark.integration


def _compare(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={
            "include_schemas": True,
            "version_table_schema": "shared",
            "include_name": lambda name, type_, parent: type_ != "schema" or name in SCHEMAS,
        },
    )
    return list(compare_metadata(context, metadata))


async def _differences(database_url: str) -> list[Any]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_compare)
    finally:
        await engine.dispose()


async def test_migrated_database_matches_the_tables_in_code(database_url: str) -> None:
    await upgrade_async(database_url)
    assert await _differences(database_url) == []


async def test_every_migration_can_be_undone_and_redone(database_url: str) -> None:
    await upgrade_async(database_url)
    await asyncio.to_thread(command.downgrade, alembic_config(database_url), "base")
    await upgrade_async(database_url)
    assert await _differences(database_url) == []
