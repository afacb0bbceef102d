"""notifier: the sequence of the offer a push is about, so a push not yet sent when its offer ends is
recalled

A task held for the morning by quiet hours, or waiting out a receiver's retries, used to go out
after the worker had declined, the offer had been withdrawn (off duty) or a supervisor had moved
the case: it asked the worker to accept a case that was no longer theirs. Such a job is now marked
`recalled` by the first later event that ends the offer (`handlers._RECALL`). Jobs stored before
this revision have no sequence and are never recalled.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column without a default: a catalogue change, no table rewrite.
    op.add_column("jobs", sa.Column("offer_sequence", sa.Integer(), nullable=True), schema="notifier")


def downgrade() -> None:
    # Recalled jobs stay as they are: the code before this revision claims only pending ones.
    op.drop_column("jobs", "offer_sequence", schema="notifier")
