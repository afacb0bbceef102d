"""intake: what the first submission with an idempotency key said, so a repeat with another referral
is refused

An Idempotency-Key (or a Kafka `submission_id`) sent again with a different referral used to be
answered with the first referral's case, and the second referral was stored nowhere. The claim of a
key now keeps a hash of the submission (`intake.domain.submission_fingerprint`); a repeat that says
something else is refused naming the key's field (HTTP 422, or `caselink.referrals.rejected`). Keys
claimed before this revision have no fingerprint: a repeat of one is taken as before.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column without a default: a catalogue change, no table rewrite.
    op.add_column("submission_keys", sa.Column("fingerprint", sa.Text(), nullable=True), schema="intake")


def downgrade() -> None:
    op.drop_column("submission_keys", "fingerprint", schema="intake")
