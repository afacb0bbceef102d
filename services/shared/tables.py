"""Tables of the `shared` schema: the station network, users and tokens, the outbox and the inbox."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from services.shared.db import metadata

stations = Table(
    "stations",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("tier", Text, nullable=False),
    Column("parent_id", Text, ForeignKey("shared.stations.id"), nullable=True),
    Column("notify", JSONB, nullable=False, server_default="[]"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    schema="shared",
)

users = Table(
    "users",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("station_id", Text, ForeignKey("shared.stations.id"), nullable=True),
    Column("specialties", ARRAY(Text), nullable=False, server_default="{}"),
    Column("certification", Text, nullable=False, server_default="none"),
    Column("capacity", Integer, nullable=False, server_default="0"),
    Column("on_duty", Boolean, nullable=False, server_default="true"),
    Column("notify", JSONB, nullable=False, server_default="[]"),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index(None, "station_id", "role"),
    schema="shared",
)

api_tokens = Table(
    "api_tokens",
    metadata,
    # Only the SHA-256 of a token is stored: a leaked table grants nothing.
    Column("token_hash", Text, primary_key=True),
    Column("user_id", Text, ForeignKey("shared.users.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    schema="shared",
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("topic", Text, nullable=False),
    Column("key", LargeBinary, nullable=True),
    Column("payload", LargeBinary, nullable=False),
    Column("headers", JSONB, nullable=False, server_default="{}"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    schema="shared",
)

inbox = Table(
    "inbox",
    metadata,
    Column("consumer", Text, nullable=False),
    Column("message_id", Text, nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("consumer", "message_id"),
    schema="shared",
)

case_heads = Table(
    "case_heads",
    metadata,
    # The row lock taken when a transaction emits an event for a case makes per-case sequences
    # gap-free and ordered across services: the next event cannot commit before the previous one.
    # status/tier/station are the case's position after its latest event, so events that keep the
    # status (notified, sla_*) report where the case is now, not where it was when they were caused.
    Column("case_id", Text, primary_key=True),
    Column("last_sequence", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("tier", Text, nullable=False),
    Column("station_id", Text, nullable=False),
    schema="shared",
)

# One row: the id of the last transaction that wrote `stations` or `users`, set by a statement
# trigger (migration 0009), so a router learns whether the directory changed with one lookup.
directory_version = Table(
    "directory_version",
    metadata,
    Column("id", SmallInteger, primary_key=True, server_default="1"),
    Column("version", BigInteger, nullable=False, server_default="0"),
    schema="shared",
)
