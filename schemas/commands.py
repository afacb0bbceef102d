"""Worker and supervisor actions on a case, as intake hands them to the router (internal topic
`caselink.case.commands`, keyed by case id), and the router's answer to each one."""

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.common import InputModel, UtcDatetime, utc_now
from schemas.enums import CaseStatus

WorkerAction = Literal["accept", "decline", "start", "resolve"]
SupervisorAction = Literal["close", "escalate", "refer_back", "assign"]
CommandAction = Literal["accept", "decline", "start", "resolve", "close", "escalate", "refer_back", "assign"]
# applied: the case moved; conflict: its status forbids the action (HTTP 409); forbidden: the actor
# may not act on this case (403); not_found: the router does not know the case (404);
# invalid: the command itself names something impossible, e.g. an unknown worker (422).
CommandOutcome = Literal["applied", "conflict", "forbidden", "not_found", "invalid"]

WORKER_ACTIONS: tuple[str, ...] = ("accept", "decline", "start", "resolve")
SUPERVISOR_ACTIONS: tuple[str, ...] = ("close", "escalate", "refer_back", "assign")


class CaseCommand(InputModel):
    """One action a person took on a case; `command_id` makes a redelivered command a no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    case_id: str = Field(min_length=1)
    action: CommandAction
    actor_id: str = Field(min_length=1, description="the user who acted; the router checks their role and scope")
    reason: str | None = Field(default=None, max_length=2000, description="decline (required), escalate, refer_back")
    outcome: str | None = Field(default=None, max_length=2000, description="resolve: what was done")
    worker_id: str | None = Field(default=None, min_length=1, description="assign: the worker to offer the case to")
    station_id: str | None = Field(default=None, min_length=1, description="refer_back: the station to send it to")
    issued_at: UtcDatetime = Field(default_factory=utc_now)

    @model_validator(mode="after")
    def _action_arguments(self) -> "CaseCommand":
        if self.action == "decline" and not (self.reason and self.reason.strip()):
            raise ValueError("reason: a decline needs a reason")
        if self.action == "assign" and self.worker_id is None:
            raise ValueError("worker_id: assign needs the worker to assign")
        return self


class CommandResult(BaseModel):
    """What the router did with a command; published on `caselink.case.command-results`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command_id: uuid.UUID
    case_id: str
    action: CommandAction
    outcome: CommandOutcome
    status: CaseStatus | None = Field(description="the case's status after the command (None: unknown case)")
    message: str = ""
    decided_at: UtcDatetime = Field(default_factory=utc_now)
