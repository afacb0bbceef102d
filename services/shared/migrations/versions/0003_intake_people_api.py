"""intake: escalation queue, offer weight, stream positions, command results

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 00:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    for column in (
        sa.Column("weight", sa.Integer(), nullable=True),
        sa.Column("escalation_reason", sa.Text(), nullable=True),
        sa.Column("escalation_station_id", sa.Text(), nullable=True),
        sa.Column("escalated_at", _TIMESTAMP, nullable=True),
        sa.Column("escalation_closed_at", _TIMESTAMP, nullable=True),
    ):
        op.add_column("cases", column, schema="intake")
    op.create_index(op.f("ix_cases_assignee_id"), "cases", ["assignee_id"], unique=False, schema="intake")
    op.create_index(
        op.f("ix_cases_escalation_station_id_escalation_closed_at"),
        "cases",
        ["escalation_station_id", "escalation_closed_at"],
        unique=False,
        schema="intake",
    )
    # Existing rows are numbered in an arbitrary order; new ones in arrival order.
    op.add_column("case_events", sa.Column("position", sa.BigInteger(), sa.Identity(), nullable=False), schema="intake")
    op.create_unique_constraint(op.f("uq_case_events_position"), "case_events", ["position"], schema="intake")
    op.create_table(
        "command_results",
        sa.Column("command_id", sa.UUID(as_uuid=False), nullable=False),
        sa.Column("case_id", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), server_default="", nullable=False),
        sa.Column("decided_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("command_id", name=op.f("pk_command_results")),
        schema="intake",
    )


def downgrade() -> None:
    op.drop_table("command_results", schema="intake")
    op.drop_constraint(op.f("uq_case_events_position"), "case_events", schema="intake", type_="unique")
    op.drop_column("case_events", "position", schema="intake")
    op.drop_index(op.f("ix_cases_escalation_station_id_escalation_closed_at"), table_name="cases", schema="intake")
    op.drop_index(op.f("ix_cases_assignee_id"), table_name="cases", schema="intake")
    for name in ("escalation_closed_at", "escalated_at", "escalation_station_id", "escalation_reason", "weight"):
        op.drop_column("cases", name, schema="intake")
