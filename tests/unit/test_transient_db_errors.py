"""Which database errors a consumer waits out (retry forever) rather than count against a message."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError

from services.shared.db import is_transient_db_error


class ServerError(Exception):
    """What SQLAlchemy's asyncpg adapter puts in `.orig`: the server's SQLSTATE as `sqlstate`."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"server error {sqlstate}")
        self.sqlstate = sqlstate


def wrapped(sqlstate: str) -> DBAPIError:
    return DBAPIError("SELECT 1", None, ServerError(sqlstate))


@pytest.mark.parametrize(
    "sqlstate",
    ["57P03", "57P01", "57P02", "53300", "08006", "08001", "40P01", "40001"],
    ids=["starting_up", "admin_shutdown", "crash_shutdown", "too_many_connections", "connection_failure",
         "cannot_connect", "deadlock", "serialization_failure"],
)  # fmt: skip
def test_a_restarting_or_unreachable_database_is_waited_out_not_counted_against_the_message(sqlstate: str) -> None:
    assert is_transient_db_error(wrapped(sqlstate))


@pytest.mark.parametrize("sqlstate", ["23505", "22P02", "42P01"], ids=["unique", "bad_text", "no_table"])
def test_an_error_in_the_request_itself_is_not_transient(sqlstate: str) -> None:
    assert not is_transient_db_error(wrapped(sqlstate))
