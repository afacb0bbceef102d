"""Which database errors a consumer waits out (retry forever) rather than count against a message,
and which a transaction is simply run again for (`retry_conflicts`)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError

from services.shared.db import CONFLICT_RETRIES, is_transient_db_error, retry_conflicts


class ServerError(Exception):
    """What SQLAlchemy's asyncpg adapter puts in `.orig`: the server's SQLSTATE as `sqlstate`."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"server error {sqlstate}")
        self.sqlstate = sqlstate


def wrapped(sqlstate: str) -> DBAPIError:
    return DBAPIError("SELECT 1", None, ServerError(sqlstate))


@pytest.mark.parametrize(
    "sqlstate",
    ["57P03", "57P01", "57P02", "53300", "08006", "08001", "40P01", "40001", "55P03"],
    ids=["starting_up", "admin_shutdown", "crash_shutdown", "too_many_connections", "connection_failure",
         "cannot_connect", "deadlock", "serialization_failure", "lock_not_available"],
)  # fmt: skip
def test_a_restarting_or_unreachable_database_is_waited_out_not_counted_against_the_message(sqlstate: str) -> None:
    assert is_transient_db_error(wrapped(sqlstate))


@pytest.mark.parametrize("sqlstate", ["23505", "22P02", "42P01"], ids=["unique", "bad_text", "no_table"])
def test_an_error_in_the_request_itself_is_not_transient(sqlstate: str) -> None:
    assert not is_transient_db_error(wrapped(sqlstate))


class Transaction:
    """A unit of work failing with the given SQLSTATEs, one per run, then succeeding."""

    def __init__(self, *failures: str) -> None:
        self.failures = list(failures)
        self.runs = 0

    async def __call__(self) -> str:
        self.runs += 1
        if self.failures:
            raise wrapped(self.failures.pop(0))
        return "committed"


@pytest.mark.parametrize("sqlstate", ["40P01", "40001", "55P03"])
async def test_a_transaction_that_lost_a_conflict_is_run_again_at_once(sqlstate: str) -> None:
    run = Transaction(sqlstate, sqlstate)
    assert await retry_conflicts(run, what="test") == "committed"
    assert run.runs == 3


async def test_conflicts_lost_every_time_are_the_callers_after_the_retries() -> None:
    run = Transaction(*["40P01"] * (CONFLICT_RETRIES + 1))
    with pytest.raises(DBAPIError):
        await retry_conflicts(run, what="test")
    assert run.runs == CONFLICT_RETRIES + 1


@pytest.mark.parametrize("sqlstate", ["57P03", "08006", "23505"])
async def test_other_errors_are_not_run_again(sqlstate: str) -> None:
    run = Transaction(sqlstate)
    with pytest.raises(DBAPIError):
        await retry_conflicts(run, what="test")
    assert run.runs == 1
