"""router: which transaction last changed a worker's load (routers re-read only the changed loads)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT_XACT = "pg_current_xact_id()::text::bigint"


def upgrade() -> None:
    op.add_column(
        "worker_load",
        sa.Column("changed_by", sa.BigInteger(), server_default=sa.text(f"({CURRENT_XACT})"), nullable=False),
        schema="router",
    )
    # Every write stamps the row, whichever statement made it: a reader that remembers the xmin of
    # its last snapshot finds every row changed since, or not yet committed then, by changed_by >= xmin.
    op.execute(
        "CREATE FUNCTION router.stamp_worker_load() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN NEW.changed_by := {CURRENT_XACT}; RETURN NEW; END $$"
    )
    op.execute(
        "CREATE TRIGGER worker_load_changed_by BEFORE INSERT OR UPDATE ON router.worker_load "
        "FOR EACH ROW EXECUTE FUNCTION router.stamp_worker_load()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER worker_load_changed_by ON router.worker_load")
    op.execute("DROP FUNCTION router.stamp_worker_load()")
    op.drop_column("worker_load", "changed_by", schema="router")
