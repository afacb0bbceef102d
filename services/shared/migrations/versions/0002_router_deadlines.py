"""router: deadlines, offer counting and the fixed need of each case

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    add = lambda column: op.add_column("cases", column, schema="router")  # noqa: E731
    # Cases routed before this revision get the defaults of the policy they were routed under.
    add(sa.Column("need_specialty", sa.Text(), nullable=True))
    add(sa.Column("need_certification", sa.Text(), nullable=False, server_default="none"))
    add(sa.Column("policy_version", sa.Integer(), nullable=True))
    add(sa.Column("target_station_id", sa.Text(), nullable=True))
    add(sa.Column("floor_station_id", sa.Text(), nullable=True))
    add(sa.Column("received_at", _TIMESTAMP, nullable=True))
    add(sa.Column("accept_warn_at", _TIMESTAMP, nullable=True))
    add(sa.Column("resolve_by", _TIMESTAMP, nullable=True))
    add(sa.Column("resolve_warn_at", _TIMESTAMP, nullable=True))
    add(sa.Column("resolve_breached", sa.Boolean(), nullable=False, server_default="false"))
    add(sa.Column("offers_made", postgresql.JSONB(astext_type=sa.Text()), nullable=False, server_default="{}"))
    add(sa.Column("passed_over", postgresql.ARRAY(sa.Text()), nullable=False, server_default="{}"))
    add(sa.Column("next_due_at", _TIMESTAMP, nullable=True))
    op.execute(
        "UPDATE router.cases SET need_specialty = category, target_station_id = station_id, "
        "floor_station_id = station_id, received_at = created_at, resolve_by = created_at + interval '30 days', "
        "offers_made = CASE WHEN status = 'offered' THEN jsonb_build_object(tier, 1) ELSE '{}' END, "
        "next_due_at = CASE WHEN status = 'offered' THEN accept_by ELSE created_at + interval '30 days' END"
    )
    for name in ("need_specialty", "target_station_id", "floor_station_id", "received_at", "resolve_by"):
        op.alter_column("cases", name, nullable=False, schema="router")
    op.alter_column("cases", "need_certification", server_default=None, schema="router")
    op.create_index(op.f("ix_cases_next_due_at"), "cases", ["next_due_at"], unique=False, schema="router")


def downgrade() -> None:
    op.drop_index(op.f("ix_cases_next_due_at"), table_name="cases", schema="router")
    for name in (
        "next_due_at",
        "passed_over",
        "offers_made",
        "resolve_breached",
        "resolve_warn_at",
        "resolve_by",
        "accept_warn_at",
        "received_at",
        "floor_station_id",
        "target_station_id",
        "policy_version",
        "need_certification",
        "need_specialty",
    ):
        op.drop_column("cases", name, schema="router")
