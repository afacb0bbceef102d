"""intake: who may see each timeline event as of when it happened, for /v1/stream

`/v1/stream` judged every event by where its case is now, so the worker whose offer an event ended
(expired, withdrawn by a reassignment) and the station it left never got that event live. Each
timeline row now names the stations and workers the case was with just before and just after the
event (`services.shared.case_view.audience_of`); the stream shows an event to them as well as to
whoever may see the case now. Rows written before this revision have neither (NULL): they are
shown by the case's place now, as before.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-24 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns without a default: catalogue changes, no table rewrite.
    for column in ("audience_stations", "audience_workers"):
        op.add_column("case_events", sa.Column(column, postgresql.ARRAY(sa.Text()), nullable=True), schema="intake")


def downgrade() -> None:
    for column in ("audience_stations", "audience_workers"):
        op.drop_column("case_events", column, schema="intake")
