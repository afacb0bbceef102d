"""Intake's HTTP routes: referrals in, cases out, health for operators."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import BaseModel
from sqlalchemy import select, text

from schemas.referral import ROOT_FIELD, FieldError, ReferralSubmission
from services.intake import tables
from services.intake.access import (
    CaseId,
    CurrentUser,
    RequestSession,
    UserInRequestSession,
    record_case_read,
    sessions_of,
    settings_of,
    visible_case,
)
from services.intake.domain import (
    MAX_JSON_DEPTH,
    MAX_REFERRAL_BYTES,
    SubmissionInvalid,
    is_json_content_type,
    json_nesting_exceeds,
    may_submit_for,
)
from services.intake.errors import ApiError, error_responses
from services.intake.handlers import accept_submission
from services.shared.db import transaction

REFERRALS = Counter("caselink_referrals_total", "Referrals received over HTTP", ["outcome"])


class ReferralAccepted(BaseModel):
    """The answer to a referral: its case id (the same for a repeated Idempotency-Key)."""

    case_id: str
    status: str = "received"


class JsonBodyRoute(APIRoute):
    """A route whose body is checked at the edge before FastAPI parses it: JSON content type (415),
    at most MAX_REFERRAL_BYTES (413, counted while reading when there is no Content-Length), and
    nested at most MAX_JSON_DEPTH deep (422)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
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
    user: UserInRequestSession,
    session: RequestSession,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> ReferralAccepted:
    """Submit a referral for a village room; a repeated Idempotency-Key returns the same case."""
    if not may_submit_for(user, submission.room_id):
        REFERRALS.labels("forbidden").inc()
        raise ApiError(403, f"user '{user.id}' may not submit referrals for room '{submission.room_id}'")
    if user.role == "worker" and submission.submitted_by not in (None, user.id):
        raise ApiError(403, "a worker submits referrals in their own name (submitted_by)")
    key = idempotency_key or (str(submission.submission_id) if submission.submission_id else None)
    try:
        # The transaction the token was checked in (a failure here leaves it to roll back).
        accepted = await accept_submission(
            session,
            submission,
            submitted_by=submission.submitted_by or user.id,
            idempotency_source=f"http:{user.id}",
            idempotency_key=key,
            resident_key=settings_of(request).resident_ref_key,
        )
        await session.commit()
    except SubmissionInvalid as invalid:
        REFERRALS.labels("invalid").inc()
        raise ApiError(422, invalid.errors[0].message, fields=invalid.errors) from None
    REFERRALS.labels("created" if accepted.created else "repeated").inc()
    return ReferralAccepted(case_id=accepted.case_id)


@router.get("/v1/cases/{case_id}", tags=["cases"], responses=error_responses(401, 404))
async def get_case(request: Request, case_id: CaseId, user: CurrentUser) -> dict[str, Any]:
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
        return {
            "case_id": case.case_id,
            "status": case.status,
            "tier": case.tier,
            "station_id": case.station_id,
            "room_id": case.room_id,
            "category": case.category,
            "risk_level": case.risk_level,
            "assignee_id": case.assignee_id,
            "deadlines": {
                "accept_by": case.accept_by.isoformat() if case.accept_by else None,
                "resolve_by": _latest(events, "resolve_by"),
            },
            "received_at": case.received_at.isoformat(),
            "explanation": _latest(events, "explanation"),
            "timeline": events,
        }


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
    checks = {"database": False, "broker": False}
    try:
        async with sessions_of(request)() as session:
            await session.execute(text("SELECT 1"))
        checks["database"] = True
    except Exception:
        pass
    checks["broker"] = await request.app.state.broker_ready()
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics() -> PlainTextResponse:
    """Prometheus metrics."""
    return PlainTextResponse(generate_latest().decode(), media_type=CONTENT_TYPE_LATEST)
