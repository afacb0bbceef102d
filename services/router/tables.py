"""Tables of the `router` schema: routing state of each case, worker load, and the offer history."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, Table, Text, func

from services.shared.db import metadata

cases = Table(
    "cases",
    metadata,
    Column("case_id", Text, primary_key=True),
    Column("room_id", Text, nullable=False),
    Column("category", Text, nullable=False),
    Column("risk_level", Text, nullable=False),
    Column("resident_ref", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("tier", Text, nullable=False),
    Column("station_id", Text, nullable=False),
    Column("rule", Text, nullable=True),
    Column("assignee_id", Text, nullable=True),
    Column("weight", Integer, nullable=False),
    Column("accept_by", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index(None, "resident_ref"),
    Index(None, "status", "station_id"),
    schema="router",
)

worker_load = Table(
    "worker_load",
    metadata,
    # Invariant: load = sum of weights of the worker's open cases; rows are locked in
    # worker-id order while a case is placed, so concurrent routers cannot overfill a worker.
    Column("worker_id", Text, primary_key=True),
    Column("load", Integer, nullable=False, server_default="0"),
    Column("idle_since", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    schema="router",
)

offers = Table(
    "offers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("case_id", Text, nullable=False),
    Column("worker_id", Text, nullable=False),
    Column("tier", Text, nullable=False),
    Column("station_id", Text, nullable=False),
    Column("resident_ref", Text, nullable=False),
    Column("offered_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("accept_by", DateTime(timezone=True), nullable=False),
    Column("outcome", Text, nullable=True),
    Index(None, "case_id"),
    Index(None, "resident_ref", "worker_id"),
    schema="router",
)
