"""intake: the access log of case reads (who read which case's resident data, when)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "case_reads",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("case_id", sa.Text(), nullable=False),
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_reads")),
        schema="intake",
    )
    op.create_index(op.f("ix_case_reads_case_id_at"), "case_reads", ["case_id", "at"], unique=False, schema="intake")
    op.create_index(op.f("ix_case_reads_user_id_at"), "case_reads", ["user_id", "at"], unique=False, schema="intake")


def downgrade() -> None:
    op.drop_index(op.f("ix_case_reads_user_id_at"), table_name="case_reads", schema="intake")
    op.drop_index(op.f("ix_case_reads_case_id_at"), table_name="case_reads", schema="intake")
    op.drop_table("case_reads", schema="intake")
