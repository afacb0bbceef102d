"""The reliability and security suite runs on the integration tests' `caselink dev` stack.

Importing the fixtures registers them for this directory too (pytest finds fixtures by name in a
conftest), so the modules here share one stack of their own for the session.
"""

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.integration.conftest import (  # noqa: F401  (fixtures, found by name)
    Stack,
    producer,
    receiver,
    receiver_port,
    stack,
)
from tests.reliability.bench import ReliabilityBench
from tests.support.webhook_receiver import Receiver

# ---- the fault-injection bench (broker/database outage, crash mid-batch, graceful shutdown) ----


@pytest_asyncio.fixture(scope="session")
async def bench(
    receiver: Receiver,  # noqa: F811  (the session's webhook receiver fixture)
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ReliabilityBench]:
    """Embedded PostgreSQL and Tansu in this process; intake and a router (a notifier on demand) as
    killable subprocesses; one per session, shared by the fault tests (each leaves it healthy)."""
    harness = ReliabilityBench(tmp_path_factory.mktemp("reliability"), receiver=receiver)
    try:
        await harness.start_all()
        print(f"\nreliability bench up: {harness.timings}")
        yield harness
    finally:
        await harness.close()
