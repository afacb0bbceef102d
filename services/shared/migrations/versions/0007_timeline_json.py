"""intake: the timeline keeps each event as the JSON text that was published (json, not jsonb)

A timeline row is written for every event and read back whole, never queried inside: jsonb's
parse into its binary form was most of the cost of the busiest insert of the pipeline (33 against
22 µs per row on a copy of a bench run's timeline), and it reorders the keys of what was published.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 16:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rewrites the table under an exclusive lock: see OPERATIONS.md, "Upgrading".
    op.execute("ALTER TABLE intake.case_events ALTER COLUMN event TYPE json USING event::json")


def downgrade() -> None:
    op.execute("ALTER TABLE intake.case_events ALTER COLUMN event TYPE jsonb USING event::jsonb")
