"""notifier: durable push jobs (retries, fallback, digests, quiet hours) and digest batches

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("event_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("case_id", sa.Text(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("risk_level", sa.Text(), nullable=False),
        sa.Column("resident_ref", sa.Text(), nullable=True),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("channels", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("message", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("channel_index", sa.Integer(), server_default="0", nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("origin", sa.Text(), nullable=True),
        sa.Column("batchable", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("due_at", _TIMESTAMP, nullable=False),
        sa.Column("lease_until", _TIMESTAMP, nullable=True),
        sa.Column("created_at", _TIMESTAMP, server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", _TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("event_id", "recipient", name=op.f("uq_jobs_event_id_recipient")),
        schema="notifier",
    )
    op.create_index(
        "ix_jobs_pending_due",
        "jobs",
        ["due_at"],
        unique=False,
        schema="notifier",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.add_column("deliveries", sa.Column("batch_id", postgresql.UUID(as_uuid=False), nullable=True), schema="notifier")
    # The delivery id already names (event, channel, recipient), and tells apart two channels of
    # one kind (a second webhook), which this constraint could not.
    op.drop_constraint(op.f("uq_deliveries_event_id_channel_recipient"), "deliveries", schema="notifier")
    op.create_index("ix_deliveries_event_id", "deliveries", ["event_id"], unique=False, schema="notifier")


def downgrade() -> None:
    op.drop_index("ix_deliveries_event_id", table_name="deliveries", schema="notifier")
    op.create_unique_constraint(
        op.f("uq_deliveries_event_id_channel_recipient"),
        "deliveries",
        ["event_id", "channel", "recipient"],
        schema="notifier",
    )
    op.drop_column("deliveries", "batch_id", schema="notifier")
    op.drop_index("ix_jobs_pending_due", table_name="jobs", schema="notifier")
    op.drop_table("jobs", schema="notifier")
