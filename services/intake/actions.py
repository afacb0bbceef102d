"""Workers' and supervisors' actions over HTTP: each is handed to the router as a command through
the outbox, and the request waits for the router's verdict (CONTRACT §3)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import datetime
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.commands import SUPERVISOR_ACTIONS, CaseCommand
from schemas.common import InputModel
from schemas.referral import FieldError, field_errors
from schemas.topics import CASE_COMMANDS
from services.intake import tables
from services.intake.access import CaseId, CurrentUser, sessions_of, settings_of, visible_case
from services.intake.errors import ApiError, error_responses
from services.shared.db import transaction
from services.shared.outbox import enqueue

router = APIRouter(tags=["actions"])
_POLL_SECONDS = 0.05
_B = TypeVar("_B", bound=BaseModel)
_ERRORS: dict[str, int] = {"conflict": 409, "forbidden": 403, "not_found": 404, "invalid": 422}


class _Body(InputModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class NoBody(_Body):
    """No arguments."""


class DeclineBody(_Body):
    reason: str = Field(min_length=1, max_length=2000, examples=["家属已另行安排照护"])


class ResolveBody(_Body):
    outcome: str | None = Field(default=None, max_length=2000, examples=["已上门探访，链接助餐服务"])


class ReasonBody(_Body):
    reason: str | None = Field(default=None, max_length=2000, examples=["需要县级心理专业支持"])


class ReferBackBody(_Body):
    station_id: str | None = Field(default=None, min_length=1, max_length=100, examples=["T-360402101"])
    reason: str | None = Field(default=None, max_length=2000, examples=["乡镇站已有空余社工"])


class AssignBody(_Body):
    worker_id: str = Field(min_length=1, max_length=100, examples=["w-0007"])


class ActionAnswer(BaseModel):
    """The router applied the action (`applied`), or has not answered yet (`pending`)."""

    case_id: str
    status: str = Field(description="the case's status after the action (pending: its status now)")
    command_id: uuid.UUID
    outcome: Literal["applied", "pending"]


_RESPONSES = error_responses(401, 403, 404, 409, 422)


class CommandVerdict(BaseModel):
    """The router's verdict on an action, for one that was answered `pending`."""

    case_id: str
    command_id: uuid.UUID
    outcome: Literal["applied", "refused", "pending"] = Field(description="pending: no verdict yet")
    action: str | None = Field(default=None, description="as the router recorded it (`refer_back`, …)")
    code: str | None = Field(default=None, description="why it was refused: conflict, forbidden, not_found, invalid")
    message: str = Field(default="", description="the refusal, as a 409/403/422 answer would have said it")
    status: str | None = Field(default=None, description="the case's status after an applied action")
    decided_at: datetime | None = None


async def _act(request: Request, user: Any, case_id: str, action: str, **arguments: Any) -> ActionAnswer:
    sessions = sessions_of(request)
    async with transaction(sessions) as session:
        case = await visible_case(session, user, case_id)  # out of sight: 404 before anything else
        if (action in SUPERVISOR_ACTIONS) != (user.role == "supervisor"):
            who = "supervisors" if action in SUPERVISOR_ACTIONS else "the worker holding the case"
            what = "refer a case back" if action == "refer_back" else f"{action} a case"
            raise ApiError(403, f"only {who} may {what}")
        try:
            command = CaseCommand(case_id=case_id, action=action, actor_id=user.id, **arguments)  # type: ignore[arg-type]
        except ValidationError as invalid:
            errors = field_errors(invalid.errors())
            raise ApiError(422, "; ".join(f"{e.field}: {e.message}" for e in errors), fields=errors) from None
        await enqueue(session, topic=CASE_COMMANDS, key=case_id, payload=command.model_dump_json().encode())
    verdict = None
    # No verdict in time (the router is busy or down) is not an error: the command is committed and
    # will be applied or refused later; GET …/commands/{command_id} tells which (an applied action
    # also shows in the case's timeline, a refused one only there).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(settings_of(request).command_timeout):
            verdict = await _verdict(sessions, command.command_id)
    if verdict is None:
        return ActionAnswer(case_id=case_id, status=case.status, command_id=command.command_id, outcome="pending")
    if verdict.outcome == "applied":
        status = verdict.status or case.status
        return ActionAnswer(case_id=case_id, status=status, command_id=command.command_id, outcome="applied")
    raise ApiError(_ERRORS.get(verdict.outcome, 409), verdict.message, fields=_fields(verdict))


def _fields(verdict: Any) -> list[FieldError]:
    # The router names the argument it rejects as "field: why".
    if verdict.outcome != "invalid" or ": " not in verdict.message:
        return []
    field, message = verdict.message.split(": ", 1)
    return [FieldError(field=field, message=message)]


async def _verdict(sessions: async_sessionmaker[AsyncSession], command_id: uuid.UUID) -> Any:
    query = select(tables.command_results).where(tables.command_results.c.command_id == str(command_id))
    while True:
        async with sessions() as session:
            row = (await session.execute(query)).first()
        if row is not None:
            return row
        await asyncio.sleep(_POLL_SECONDS)


@router.get(
    "/v1/cases/{case_id}/commands/{command_id}",
    response_model=CommandVerdict,
    responses=error_responses(401, 404),
    summary="The verdict on an action answered `pending`",
)
async def command_verdict(
    request: Request, case_id: CaseId, command_id: uuid.UUID, user: CurrentUser
) -> CommandVerdict:
    """Whether the router applied or refused an action on a case you can see (`pending` until it has)."""
    async with sessions_of(request)() as session:
        await visible_case(session, user, case_id)
        results = tables.command_results.c
        row = (
            await session.execute(
                select(tables.command_results).where(results.command_id == str(command_id), results.case_id == case_id)
            )
        ).first()
    if row is None:
        return CommandVerdict(case_id=case_id, command_id=command_id, outcome="pending")
    applied = row.outcome == "applied"
    return CommandVerdict(
        case_id=case_id,
        command_id=command_id,
        outcome="applied" if applied else "refused",
        action=row.action,
        code=None if applied else row.outcome,
        message=row.message,
        status=row.status if applied else None,
        decided_at=row.decided_at,
    )


def _route(path: str, summary: str) -> Any:
    return router.post(
        f"/v1/cases/{{case_id}}/{path}",
        status_code=202,
        response_model=ActionAnswer,
        responses=_RESPONSES,
        summary=summary,
    )


@_route("accept", "The offered worker accepts the case")
async def accept(request: Request, case_id: CaseId, user: CurrentUser, body: NoBody | None = None) -> ActionAnswer:
    """Accept the case offered to you."""
    return await _act(request, user, case_id, "accept")


@_route("decline", "The offered worker declines, with a reason")
async def decline(
    request: Request, case_id: CaseId, user: CurrentUser, body: DeclineBody | None = None
) -> ActionAnswer:
    """Decline the case offered to you; it goes to the next worker (or up a tier)."""
    return await _act(request, user, case_id, "decline", reason=_required(body, "reason").reason)


@_route("start", "The assigned worker starts work")
async def start(request: Request, case_id: CaseId, user: CurrentUser, body: NoBody | None = None) -> ActionAnswer:
    """Start work on a case you accepted."""
    return await _act(request, user, case_id, "start")


@_route("resolve", "The assigned worker resolves the case")
async def resolve(
    request: Request, case_id: CaseId, user: CurrentUser, body: ResolveBody | None = None
) -> ActionAnswer:
    """Resolve a case you accepted or started, optionally saying what was done."""
    return await _act(request, user, case_id, "resolve", outcome=body.outcome if body else None)


@_route("close", "A supervisor closes the case")
async def close(request: Request, case_id: CaseId, user: CurrentUser, body: ReasonBody | None = None) -> ActionAnswer:
    """Close a case at your station or below."""
    return await _act(request, user, case_id, "close", reason=body.reason if body else None)


@_route("escalate", "A supervisor escalates the case one tier up")
async def escalate(
    request: Request, case_id: CaseId, user: CurrentUser, body: ReasonBody | None = None
) -> ActionAnswer:
    """Move a case at your station or below one tier up."""
    return await _act(request, user, case_id, "escalate", reason=body.reason if body else None)


@_route("refer-back", "A supervisor refers the case back down")
async def refer_back(
    request: Request, case_id: CaseId, user: CurrentUser, body: ReferBackBody | None = None
) -> ActionAnswer:
    """Send a case down: to `station_id`, or by default the submitting room's station one tier below."""
    body = body or ReferBackBody()
    return await _act(request, user, case_id, "refer_back", station_id=body.station_id, reason=body.reason)


@_route("assign", "A supervisor assigns the case to a worker")
async def assign(request: Request, case_id: CaseId, user: CurrentUser, body: AssignBody | None = None) -> ActionAnswer:
    """Offer the case to a worker of your stations (on duty, certified as required, with capacity)."""
    return await _act(request, user, case_id, "assign", worker_id=_required(body, "worker_id").worker_id)


def _required(body: _B | None, field: str) -> _B:
    """The body, or 422 naming its required field (a missing body is a missing field to the caller)."""
    if body is None:
        raise ApiError(422, f"{field}: required", fields=[FieldError(field=field, message="required")])
    return body
