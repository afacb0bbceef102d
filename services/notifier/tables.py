"""Tables of the `notifier` schema: the delivery log."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, Table, Text, UniqueConstraint, func
from sqlalchemy.dialects.postgresql import UUID

from services.shared.db import metadata

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
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # One push per (event, channel, recipient): a redelivered event finds its row and pushes nothing.
    UniqueConstraint("event_id", "channel", "recipient"),
    schema="notifier",
)
