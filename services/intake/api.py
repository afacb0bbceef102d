"""Intake's HTTP routes: referrals in, cases out, health for operators."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import select

from schemas.referral import ROOT_FIELD, FieldError, ReferralSubmission
from services.intake import tables
from services.intake.access import (
    CaseId,
    CurrentUser,
    ReferralCaller,
    record_case_read,
    sessions_of,
    token_cache_of,
    visible_case,
)
from services.intake.batching import GroupCommit, GroupCommitClosed
from services.intake.domain import MAX_JSON_DEPTH, MAX_REFERRAL_BYTES, is_json_content_type, json_nesting_exceeds
from services.intake.errors import NO_BEARER, ApiError, error_responses, missing_bearer
from services.intake.handlers import Accepted
from services.intake.referral_batch import Forbidden, HttpSubmission, Refusal, Unauthorized, submission_refusal
from services.shared.db import is_transient_db_error, transaction
from services.shared.time import rfc3339

REFERRALS = Counter("caselink_referrals_total", "Referrals received over HTTP", ["outcome"])


class ReferralAccepted(BaseModel):
    """The answer to a referral: its case id (the same for a repeated Idempotency-Key)."""

    case_id: str
    status: str = "received"


class CaseDeadlines(BaseModel):
    """When the case's current offer must be accepted, and when the case must be resolved."""

    accept_by: str | None = Field(description="RFC 3339; set while the case is offered to a worker")
    resolve_by: str | None = Field(description="RFC 3339; from the first routing on")


class CaseView(BaseModel):
    """A case as a person who may see it reads it: where it is now, and everything that happened."""

    case_id: str
    status: str = Field(description="received, routed, escalated, offered, queued, accepted, in_progress, …")
    tier: str
    station_id: str
    room_id: str
    category: str
    risk_level: str
    assignee_id: str | None = Field(description="the worker offered or holding the case")
    deadlines: CaseDeadlines
    received_at: str = Field(description="RFC 3339")
    explanation: dict[str, Any] | None = Field(description="the last routing decision's explanation")
    timeline: list[dict[str, Any]] = Field(
        description="the case's events in sequence order, each the CloudEvent as on caselink.case.events"
    )


class JsonBodyRoute(APIRoute):
    """A route whose body is checked at the edge before FastAPI parses it: JSON content type (415),
    at most MAX_REFERRAL_BYTES (413, counted while reading when there is no Content-Length), and
    nested at most MAX_JSON_DEPTH deep (422)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            if missing_bearer(request):
                raise ApiError(401, NO_BEARER)
            if not is_json_content_type(request.headers.get("content-type")):
                raise ApiError(415, "the body must be JSON, sent with Content-Type: application/json")
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_REFERRAL_BYTES:
                raise ApiError(413, _TOO_LARGE)
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_REFERRAL_BYTES:
                    raise ApiError(413, _TOO_LARGE)
            if json_nesting_exceeds(bytes(body), MAX_JSON_DEPTH):
                message = f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep"
                raise ApiError(422, message, fields=[FieldError(field=ROOT_FIELD, message=message)])
            request._body = bytes(body)  # FastAPI parses the body already read (Request caches it here)
            return await handler(request)

        return checked


_TOO_LARGE = f"the body is larger than 64 KiB ({MAX_REFERRAL_BYTES} bytes), the most a referral may be"
router = APIRouter(route_class=JsonBodyRoute)


@router.post(
    "/v1/referrals",
    status_code=202,
    response_model=ReferralAccepted,
    tags=["referrals"],
    responses=error_responses(401, 403, 413, 415, 422),
)
async def submit_referral(
    request: Request,
    submission: ReferralSubmission,
    caller: ReferralCaller,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> ReferralAccepted:
    """Submit a referral for a village room; a repeated Idempotency-Key returns the same case."""
    if forbidden := submission_refusal(caller.user, submission):
        _refuse(forbidden)  # the error handler confirms a caller taken from the token cache first
    key = idempotency_key or (str(submission.submission_id) if submission.submission_id else None)
    key_field = "Idempotency-Key" if idempotency_key else "submission_id"
    item = HttpSubmission(submission, caller.user, caller.token_hash, key, key_field)
    try:
        # Answered once the transaction that stored the case and its `received` event committed.
        outcome = await referral_writer_of(request).submit(item)
    except GroupCommitClosed:
        raise ApiError(503, "intake is shutting down; send the referral again (the same key is safe)") from None
    except Exception as exc:
        if is_transient_db_error(exc):
            raise ApiError(503, "the database is unavailable; send the referral again (the same key is safe)") from None
        raise
    if isinstance(outcome, Accepted):
        REFERRALS.labels("created" if outcome.created else "repeated").inc()
        return ReferralAccepted(case_id=outcome.case_id)
    if isinstance(outcome, Unauthorized):
        token_cache_of(request).forget(caller.token_hash)
    request.state.caller_confirmed = True  # the batch's transaction looked the token up itself
    _refuse(outcome)


def _refuse(refusal: Refusal) -> NoReturn:
    """The error answer of a refused referral."""
    if isinstance(refusal, Unauthorized):
        raise ApiError(401, "the bearer token is unknown or revoked")
    if isinstance(refusal, Forbidden):
        if refusal.field == "room_id":
            REFERRALS.labels("forbidden").inc()
        raise ApiError(403, refusal.message, fields=[FieldError(field=refusal.field, message=refusal.message)])
    REFERRALS.labels("invalid").inc()
    raise ApiError(422, refusal.errors[0].message, fields=refusal.errors)


def referral_writer_of(request: Request) -> GroupCommit[HttpSubmission, Accepted | Refusal]:
    """The app's group-commit writer of referrals."""
    return request.app.state.referral_writer


@router.get("/v1/cases/{case_id}", tags=["cases"], response_model=CaseView, responses=error_responses(401, 404))
async def get_case(request: Request, case_id: CaseId, user: CurrentUser) -> CaseView:
    """The case: status, tier, station, assignee, deadlines and its timeline of events."""
    async with transaction(sessions_of(request)) as session:
        case = await visible_case(session, user, case_id)
        await record_case_read(session, user=user, case_id=case_id, route="GET /v1/cases/{case_id}")
        timeline = (
            await session.execute(
                select(tables.case_events.c.event)
                .where(tables.case_events.c.case_id == case_id)
                .order_by(tables.case_events.c.sequence)
            )
        ).scalars()
        events = list(timeline)
        return CaseView(
            case_id=case.case_id,
            status=case.status,
            tier=case.tier,
            station_id=case.station_id,
            room_id=case.room_id,
            category=case.category,
            risk_level=case.risk_level,
            assignee_id=case.assignee_id,
            deadlines=CaseDeadlines(
                accept_by=rfc3339(case.accept_by) if case.accept_by else None,
                resolve_by=_latest(events, "resolve_by"),
            ),
            received_at=rfc3339(case.received_at),
            explanation=_latest(events, "explanation"),
            timeline=events,
        )


def _latest(events: list[dict[str, Any]], field: str) -> Any:
    """The value of `field` in the newest event data that has it (e.g. the last routing explanation)."""
    return next((e["data"][field] for e in reversed(events) if e["data"].get(field) is not None), None)


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: the database answers and the broker connection is up."""
    checks = await request.app.state.runtime.ready()
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics() -> PlainTextResponse:
    """Prometheus metrics."""
    return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)
