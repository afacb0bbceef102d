"""Tables of the `notifier` schema: the push jobs still to send, and the delivery log."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Index, Integer, Table, Text, UniqueConstraint, false, func, text
from sqlalchemy.dialects.postgresql import JSONB, UUID

from services.shared.db import metadata

# One row per (event, recipient): what to say, the recipient's channels in fallback order, and
# where its delivery stands. The consumer only inserts rows (so a slow receiver never holds up
# the partition); the dispatcher sends them, retries them with backoff, falls back to the next
# channel, and batches digest-eligible ones per recipient.
jobs = Table(
    "jobs",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("event_id", UUID(as_uuid=False), nullable=False),
    Column("event_type", Text, nullable=False),
    Column("case_id", Text, nullable=False),
    Column("purpose", Text, nullable=False),
    Column("category", Text, nullable=False),
    Column("risk_level", Text, nullable=False),
    Column("resident_ref", Text, nullable=True),
    Column("recipient", Text, nullable=False),
    Column("channels", JSONB, nullable=False),
    Column("message", JSONB, nullable=False),
    Column("channel_index", Integer, nullable=False, server_default="0"),
    Column("attempt", Integer, nullable=False, server_default="0"),  # sends on the current channel
    Column("attempts", Integer, nullable=False, server_default="0"),  # sends on all channels
    # `topic/partition/offset` of the event: what goes to `<topic>.dlq` when the push is given up.
    Column("origin", Text, nullable=True),
    Column("batchable", Boolean, nullable=False, server_default=false()),
    # For a push about an offer (a task, a reminder to accept): its event's sequence in the case.
    Column("offer_sequence", Integer, nullable=True),
    # pending | delivered | failed | recalled (its offer ended before it was sent: handlers._RECALL)
    Column("status", Text, nullable=False, server_default="pending"),
    Column("due_at", DateTime(timezone=True), nullable=False),
    # A dispatcher that took the job owns it until then; a crashed one's jobs are taken over after.
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    # A redelivered event finds its jobs and adds none: the dedupe of "never push twice".
    UniqueConstraint("event_id", "recipient"),
    Index("ix_jobs_pending_due", "due_at", postgresql_where=text("status = 'pending'")),
    # When a queued or escalated case's first push was planned (store_jobs).
    Index("ix_jobs_case_id_created_at", "case_id", "created_at"),
    schema="notifier",
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("delivery_id", UUID(as_uuid=False), primary_key=True),
    Column("event_id", UUID(as_uuid=False), nullable=False),
    Column("case_id", Text, nullable=False),
    Column("purpose", Text, nullable=False),
    Column("recipient", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("status", Text, nullable=False),  # delivered | failed
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text, nullable=True),
    # Set when the push went out inside a digest: the digest's own delivery id.
    Column("batch_id", UUID(as_uuid=False), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_deliveries_event_id", "event_id"),
    schema="notifier",
)
