"""Tables of the `intake` schema: accepted submissions (with resident data) and the case read model."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from services.shared.db import metadata

submission_keys = Table(
    "submission_keys",
    metadata,
    # source is "kafka" for submission ids and "http:<user id>" for Idempotency-Key headers.
    Column("source", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("case_id", Text, nullable=False),
    # What the first submission with the key said (domain.submission_fingerprint): a repeat must say
    # the same, or it is refused. Null for keys claimed before migration 0011: any repeat is taken.
    Column("fingerprint", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("source", "key"),
    schema="intake",
)

cases = Table(
    "cases",
    metadata,
    Column("case_id", Text, primary_key=True),
    Column("room_id", Text, nullable=False),
    Column("submitted_by", Text, nullable=False),
    Column("category", Text, nullable=False),
    Column("risk_level", Text, nullable=False),
    Column("summary", Text, nullable=False),
    # Personal data stays here, in the database; events and logs carry resident_ref only.
    Column("resident", JSONB, nullable=False),
    Column("consent", JSONB, nullable=False),
    Column("resident_ref", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=True),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The read model, projected from caselink.case.events.
    Column("status", Text, nullable=False),
    Column("tier", Text, nullable=False),
    Column("station_id", Text, nullable=False),
    Column("assignee_id", Text, nullable=True),
    Column("accept_by", DateTime(timezone=True), nullable=True),
    Column("weight", Integer, nullable=True),  # of the current offer: the assignee's load share
    Column("last_sequence", Integer, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The escalation queue: why the case waits for a supervisor, where, and since when;
    # escalation_closed_at is set once someone took it (or it was resolved, after a breach).
    Column("escalation_reason", Text, nullable=True),
    Column("escalation_station_id", Text, nullable=True),
    Column("escalated_at", DateTime(timezone=True), nullable=True),
    Column("escalation_closed_at", DateTime(timezone=True), nullable=True),
    Index(None, "station_id", "status"),
    Index(None, "assignee_id"),
    Index(None, "escalation_station_id", "escalation_closed_at"),
    schema="intake",
)

case_events = Table(
    "case_events",
    metadata,
    Column("case_id", Text, nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("event_id", UUID(as_uuid=False), nullable=False, unique=True),
    Column("type", Text, nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("event", JSON, nullable=False),  # the text as published (json keeps it; jsonb would re-encode it)
    # Arrival order across all cases: the position a live stream resumes from (Last-Event-ID).
    Column("position", BigInteger, Identity(), nullable=False, unique=True),
    # Where the case was, and with whom, just before and just after the event (case_view.audience_of):
    # the stream shows the event to them too, not only to whoever may see the case now.
    # NULL for events recorded before migration 0012.
    Column("audience_stations", ARRAY(Text), nullable=True),
    Column("audience_workers", ARRAY(Text), nullable=True),
    PrimaryKeyConstraint("case_id", "sequence"),
    schema="intake",
)

command_results = Table(
    "command_results",
    metadata,
    # The router's verdict on each action a person took over HTTP; the request waits for its row.
    Column("command_id", UUID(as_uuid=False), primary_key=True),
    Column("case_id", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("status", Text, nullable=True),
    Column("message", Text, nullable=False, server_default=""),
    Column("decided_at", DateTime(timezone=True), nullable=False),
    schema="intake",
)

case_reads = Table(
    "case_reads",
    metadata,
    # The access log: who read a case with its resident's data, through which route, and when.
    # Append-only; an auditor asks "who looked at this resident" (by case) or "what did this user read".
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("case_id", Text, nullable=False),
    Column("route", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index(None, "case_id", "at"),
    Index(None, "user_id", "at"),
    schema="intake",
)
