"""The services' connections plan each execution of a prepared statement for the table as it is now
(`services.shared.db.PLANNING`). With PostgreSQL's default, a statement prepared while its table was
small kept the generic plan made then until the first ANALYZE: in the bench, a saturation phase after
the fixed-rate one ran at 415 cases/s against 584 with this setting, PostgreSQL's CPU per case 1.43 ms
against 0.76, mostly in `= ANY($1)` filters read against every row."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text

from services.shared.db import create_engine
from services.shared.runtime import build_runtime
from services.shared.settings import Settings

pytestmark = pytest.mark.integration


async def test_every_service_connection_plans_each_execution(database_url: str) -> None:
    engine = create_engine(Settings(), url=database_url)
    try:
        async with engine.connect() as first, engine.connect() as second:
            for conn in (first, second):
                assert (await conn.execute(text("SHOW plan_cache_mode"))).scalar_one() == "force_custom_plan"
    finally:
        await engine.dispose()


async def test_the_outbox_relays_raw_connection_plans_each_execution_too(database_url: str) -> None:
    # The relay's own connection (not from the pool), opened as the relay opens it: its
    # DELETE … WHERE id = ANY($1) runs on every pass.
    settings = Settings(database_url=database_url, kafka_bootstrap="127.0.0.1:9")  # the broker is never reached
    runtime = build_runtime("router", settings)
    try:
        conn = await asyncpg.connect(runtime.relay._dsn, **runtime.relay._connect_kwargs)
        try:
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
        finally:
            await conn.close()
    finally:
        await runtime.engine.dispose()
