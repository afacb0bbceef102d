"""shared: a version number of the station directory, moved on by every write to users or stations

Routers ask at every batch whether the directory changed since their last snapshot. They used to
count and take the newest `updated_at` of both tables, about 1.6 ms of PostgreSQL per batch on
the Jiujiang network, which was a third of PostgreSQL's statement time at 20 cases/s. The version
row is one index lookup. A statement trigger moves it on, whoever writes (`caselink network load`,
or an operator's SQL, deletes and TRUNCATE included); the count and the newest `updated_at` also
missed an operator's UPDATE that left `updated_at` as it was.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The version is the id of the last transaction that wrote the directory: readers see a transaction's
# writes all at once, so it moves once per transaction (`caselink network load` is thousands of
# statements; a row updated at each of them would grow a chain of versions walked at the next).
CURRENT_XACT = "pg_current_xact_id()::text::bigint"
TRIGGERS = {"stations": "stations_move_directory_version", "users": "users_move_directory_version"}


def upgrade() -> None:
    op.create_table(
        "directory_version",
        sa.Column("id", sa.SmallInteger(), server_default="1", nullable=False),
        sa.Column("version", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_directory_version")),
        schema="shared",
    )
    op.execute("INSERT INTO shared.directory_version DEFAULT VALUES")
    op.execute(
        "CREATE FUNCTION shared.move_directory_version() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN UPDATE shared.directory_version SET version = {CURRENT_XACT} WHERE version <> {CURRENT_XACT}; "
        "RETURN NULL; END $$"
    )
    for table, trigger in TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON shared.{table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION shared.move_directory_version()"
        )


def downgrade() -> None:
    for table, trigger in TRIGGERS.items():
        op.execute(f"DROP TRIGGER {trigger} ON shared.{table}")
    op.execute("DROP FUNCTION shared.move_directory_version()")
    op.drop_table("directory_version", schema="shared")
