"""notifier: jobs indexed by case, for when a queued or escalated case's first push was planned

`store_jobs` asks, for each queued or escalated case of a batch, when its first job was created.
Without an index that was a scan of every job ever kept (delivered ones stay): 20 ms a batch after
26,000 jobs in a bench run, growing with the table.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 16:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Blocks writes to notifier.jobs while it is built: see OPERATIONS.md, "Upgrading".
    op.create_index("ix_jobs_case_id_created_at", "jobs", ["case_id", "created_at"], schema="notifier")


def downgrade() -> None:
    op.drop_index("ix_jobs_case_id_created_at", table_name="jobs", schema="notifier")
