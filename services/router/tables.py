"""Tables of the `router` schema: routing state of each case, worker load, and the offer history."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, Integer, Table, Text, func, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

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
    # What the rule asks of a worker, fixed when the case was routed: a later policy change
    # does not move the goalposts of cases already under way.
    Column("need_specialty", Text, nullable=False),
    Column("need_certification", Text, nullable=False),
    Column("policy_version", Integer, nullable=True),
    Column("target_station_id", Text, nullable=False),
    Column("floor_station_id", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("accept_warn_at", DateTime(timezone=True), nullable=True),
    Column("resolve_by", DateTime(timezone=True), nullable=False),
    Column("resolve_warn_at", DateTime(timezone=True), nullable=True),
    Column("resolve_breached", Boolean, nullable=False, server_default="false"),
    Column("offers_made", JSONB, nullable=False, server_default="{}"),  # tier -> offers made there
    Column("passed_over", ARRAY(Text), nullable=False, server_default="{}"),
    # The earliest pending deadline: the sweep claims due cases through this index with
    # FOR UPDATE SKIP LOCKED, so each deadline is handled by one router replica.
    Column("next_due_at", DateTime(timezone=True), nullable=True),
    Index(None, "resident_ref"),
    Index(None, "status", "station_id"),
    Index(None, "next_due_at"),
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
    # The id of the transaction that last wrote the row (a trigger stamps it): a router re-reads
    # only the loads changed since its last look (see LiveNetwork).
    Column("changed_by", BigInteger, nullable=False, server_default=text("(pg_current_xact_id()::text::bigint)")),
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
