"""Case lifecycle events on `caselink.case.events`: CloudEvents 1.0 structured JSON (CONTRACT §4)."""

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, Union, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model, model_validator

from schemas.common import UtcDatetime, utc_now
from schemas.enums import CaseStatus, Category, RiskLevel, Tier

EventSource = Literal["caselink/intake", "caselink/router", "caselink/notifier"]
EscalationReason = Literal["rule", "no_capacity", "offer_expired", "declined", "sla_breach", "manual"]
SlaKind = Literal["accept", "resolve"]
NotificationPurpose = Literal["task", "escalation", "warning"]

# Parsing keeps unknown fields so consumers survive additive changes; new_event refuses them.
_TOLERANT = ConfigDict(extra="allow", frozen=True, json_schema_serialization_defaults_required=True)


class CaseEventData(BaseModel):
    """Fields every case event's `data` carries."""

    model_config = _TOLERANT

    case_id: str = Field(min_length=1)
    status: CaseStatus = Field(description="the case's status after this event")
    tier: Tier
    station_id: str = Field(min_length=1)
    category: Category
    risk_level: RiskLevel
    resident_ref: str = Field(
        min_length=1, description="keyed hash of the resident's identity; never raw personal data"
    )
    sequence: int = Field(ge=1, description="1, 2, 3 ... per case, no gaps")


class ReceivedData(CaseEventData):
    """Intake accepted a submission."""

    room_id: str
    submitted_by: str


class RoutedData(CaseEventData):
    """The router chose a tier and station."""

    rule: str = Field(description="name of the policy rule that matched")
    reason: str
    policy_version: int | None = None
    resolve_by: UtcDatetime | None = Field(default=None, description="when the case must be resolved")
    notify_stations: list[str] | None = Field(
        default=None, description="stations whose supervisors the rule asks to inform (e.g. crisis → county)"
    )
    explanation: dict[str, Any] | None = None


class AssignedData(CaseEventData):
    """A worker was offered the case."""

    worker_id: str
    accept_by: UtcDatetime
    candidates_considered: int = Field(ge=0)
    score: float
    weight: int | None = Field(default=None, ge=1, description="the share of the worker's capacity the case takes")
    explanation: dict[str, Any] | None = None


class AcceptedData(CaseEventData):
    """The offered worker accepted."""

    worker_id: str
    reason: str | None = None


class DeclinedData(CaseEventData):
    """The offered worker declined."""

    worker_id: str
    reason: str


class OfferExpiredData(CaseEventData):
    """The offered worker did not answer before `accept_by`."""

    worker_id: str
    reason: str | None = None


class QueuedData(CaseEventData):
    """No eligible worker has capacity anywhere the case may go."""

    waiting_at: str = Field(description="station id where the case waits")
    resolve_by: UtcDatetime | None = Field(default=None, description="when the case must be resolved")
    explanation: dict[str, Any] | None = None


class EscalatedData(CaseEventData):
    """The case moved up a tier."""

    from_tier: Tier
    from_station_id: str
    reason: EscalationReason
    resolve_by: UtcDatetime | None = Field(default=None, description="when the case must be resolved")
    explanation: dict[str, Any] | None = None


class ReferredBackData(CaseEventData):
    """A supervisor sent the case down a tier."""

    from_tier: Tier
    from_station_id: str
    reason: str


class StartedData(CaseEventData):
    """The assigned worker started work."""

    worker_id: str | None = None


class ResolvedData(CaseEventData):
    """The assigned worker resolved the case."""

    worker_id: str | None = None
    outcome: str | None = None


class ClosedData(CaseEventData):
    """A supervisor closed the case."""

    worker_id: str | None = Field(default=None, description="the worker who held the case, if anyone did")
    closed_by: str | None = Field(default=None, description="the supervisor who closed it")


class SlaWarningData(CaseEventData):
    """80 % of a deadline has passed."""

    deadline: UtcDatetime
    kind: SlaKind
    worker_id: str | None = Field(default=None, description="who holds the case, if anyone")


class SlaBreachedData(CaseEventData):
    """A deadline has passed."""

    deadline: UtcDatetime
    kind: SlaKind
    worker_id: str | None = Field(default=None, description="who holds the case, if anyone")


class NotifiedData(CaseEventData):
    """The notifier delivered a push."""

    channel: str
    recipient: str
    attempts: int = Field(ge=0)
    purpose: NotificationPurpose


class NotificationFailedData(CaseEventData):
    """The notifier gave up on a push."""

    channel: str
    recipient: str
    attempts: int = Field(ge=0)
    purpose: NotificationPurpose
    error: str | None = None


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 structured-mode envelope around one case event."""

    model_config = _TOLERANT

    specversion: Literal["1.0"] = "1.0"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, description="unique per event")
    source: EventSource
    type: str
    subject: str = Field(description="the case id")
    time: UtcDatetime = Field(default_factory=utc_now)
    datacontenttype: Literal["application/json"] = "application/json"
    data: CaseEventData

    @model_validator(mode="after")
    def _subject_is_case_id(self) -> "CloudEvent":
        if self.subject != self.data.case_id:
            raise ValueError("subject must equal data.case_id")
        return self


class CaseReceived(CloudEvent):
    type: Literal["caselink.case.received.v1"] = "caselink.case.received.v1"
    data: ReceivedData


class CaseRouted(CloudEvent):
    type: Literal["caselink.case.routed.v1"] = "caselink.case.routed.v1"
    data: RoutedData


class CaseAssigned(CloudEvent):
    type: Literal["caselink.case.assigned.v1"] = "caselink.case.assigned.v1"
    data: AssignedData


class CaseAccepted(CloudEvent):
    type: Literal["caselink.case.accepted.v1"] = "caselink.case.accepted.v1"
    data: AcceptedData


class CaseDeclined(CloudEvent):
    type: Literal["caselink.case.declined.v1"] = "caselink.case.declined.v1"
    data: DeclinedData


class CaseOfferExpired(CloudEvent):
    type: Literal["caselink.case.offer_expired.v1"] = "caselink.case.offer_expired.v1"
    data: OfferExpiredData


class CaseQueued(CloudEvent):
    type: Literal["caselink.case.queued.v1"] = "caselink.case.queued.v1"
    data: QueuedData


class CaseEscalated(CloudEvent):
    type: Literal["caselink.case.escalated.v1"] = "caselink.case.escalated.v1"
    data: EscalatedData


class CaseReferredBack(CloudEvent):
    type: Literal["caselink.case.referred_back.v1"] = "caselink.case.referred_back.v1"
    data: ReferredBackData


class CaseStarted(CloudEvent):
    type: Literal["caselink.case.started.v1"] = "caselink.case.started.v1"
    data: StartedData


class CaseResolved(CloudEvent):
    type: Literal["caselink.case.resolved.v1"] = "caselink.case.resolved.v1"
    data: ResolvedData


class CaseClosed(CloudEvent):
    type: Literal["caselink.case.closed.v1"] = "caselink.case.closed.v1"
    data: ClosedData


class CaseSlaWarning(CloudEvent):
    type: Literal["caselink.case.sla_warning.v1"] = "caselink.case.sla_warning.v1"
    data: SlaWarningData


class CaseSlaBreached(CloudEvent):
    type: Literal["caselink.case.sla_breached.v1"] = "caselink.case.sla_breached.v1"
    data: SlaBreachedData


class CaseNotified(CloudEvent):
    type: Literal["caselink.case.notified.v1"] = "caselink.case.notified.v1"
    data: NotifiedData


class CaseNotificationFailed(CloudEvent):
    type: Literal["caselink.case.notification_failed.v1"] = "caselink.case.notification_failed.v1"
    data: NotificationFailedData


CaseEvent = Annotated[
    CaseReceived
    | CaseRouted
    | CaseAssigned
    | CaseAccepted
    | CaseDeclined
    | CaseOfferExpired
    | CaseQueued
    | CaseEscalated
    | CaseReferredBack
    | CaseStarted
    | CaseResolved
    | CaseClosed
    | CaseSlaWarning
    | CaseSlaBreached
    | CaseNotified
    | CaseNotificationFailed,
    Field(discriminator="type"),
]

EVENT_CLASSES: dict[str, type[CloudEvent]] = {
    "received": CaseReceived,
    "routed": CaseRouted,
    "assigned": CaseAssigned,
    "accepted": CaseAccepted,
    "declined": CaseDeclined,
    "offer_expired": CaseOfferExpired,
    "queued": CaseQueued,
    "escalated": CaseEscalated,
    "referred_back": CaseReferredBack,
    "started": CaseStarted,
    "resolved": CaseResolved,
    "closed": CaseClosed,
    "sla_warning": CaseSlaWarning,
    "sla_breached": CaseSlaBreached,
    "notified": CaseNotified,
    "notification_failed": CaseNotificationFailed,
}

# The status a case has after each event; None keeps the status it had (SLA and notifier events).
STATUS_AFTER: dict[str, CaseStatus | None] = {
    "received": CaseStatus.RECEIVED,
    "routed": CaseStatus.ROUTED,
    "assigned": CaseStatus.OFFERED,
    "accepted": CaseStatus.ACCEPTED,
    "declined": CaseStatus.ROUTED,
    "offer_expired": CaseStatus.ROUTED,
    "queued": CaseStatus.QUEUED,
    "escalated": CaseStatus.ESCALATED,
    "referred_back": CaseStatus.ROUTED,
    "started": CaseStatus.IN_PROGRESS,
    "resolved": CaseStatus.RESOLVED,
    "closed": CaseStatus.CLOSED,
    "sla_warning": None,
    "sla_breached": None,
    "notified": None,
    "notification_failed": None,
}

_CASE_EVENT_ADAPTER: TypeAdapter[CaseEvent] = TypeAdapter(CaseEvent)


def _event_class(name: str) -> type[CloudEvent]:
    try:
        return EVENT_CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown case event name: {name!r}") from None


def event_type(name: str) -> str:
    """Return the CloudEvents `type` of a case event name, e.g. assigned -> caselink.case.assigned.v1."""
    _event_class(name)
    return f"caselink.case.{name}.v1"


def event_name(type_: str) -> str:
    """Return the short name of a CloudEvents `type`, e.g. caselink.case.assigned.v1 -> assigned."""
    name = type_.removeprefix("caselink.case.").removesuffix(".v1")
    if event_type(name) != type_:
        raise ValueError(f"not a v1 case event type: {type_!r}")
    return name


def data_class(name: str) -> type[CaseEventData]:
    """Return the `data` model of a case event name."""
    return cast(type[CaseEventData], _event_class(name).model_fields["data"].annotation)


def status_after(name: str, current: CaseStatus) -> CaseStatus:
    """Return the case's status after an event named `name` given its status before."""
    _event_class(name)
    return STATUS_AFTER[name] or current


def parse_case_event(raw: bytes | str | dict[str, Any]) -> CaseEvent:
    """Parse a case event from JSON or a dict into its concrete class, chosen by `type`."""
    if isinstance(raw, dict):
        return _CASE_EVENT_ADAPTER.validate_python(raw)
    return _CASE_EVENT_ADAPTER.validate_json(raw)


def new_event(
    name: str,
    *,
    source: EventSource,
    data: dict[str, Any] | CaseEventData,
    time: datetime | None = None,
) -> CaseEvent:
    """Build a case event for a producer: declared data fields only, subject = data.case_id."""
    event_class = _event_class(name)
    payload_class = data_class(name)
    if isinstance(data, CaseEventData):
        if type(data) is not payload_class:
            raise TypeError(f"{name} events carry {payload_class.__name__}, not {type(data).__name__}")
        payload = data
    else:
        payload = payload_class.model_validate(data)
    # Consumers tolerate extra fields; producers must not invent them, or the contract drifts silently.
    if payload.model_extra:
        raise ValueError(f"undeclared data fields for {name}: {sorted(payload.model_extra)}")
    expected = STATUS_AFTER[name]
    if expected is not None and payload.status != expected:
        raise ValueError(f"{name} events leave the case {expected.value!r}, not {payload.status.value!r}")
    event = event_class(
        type=event_type(name),
        source=source,
        subject=payload.case_id,
        time=time if time is not None else utc_now(),
        data=payload,
    )
    return cast(CaseEvent, event)


# ---- lean views: what a consumer reads of an event, without building the rest ----------------


class _LeanData(CaseEventData):
    # Unread fields are skipped: no Python objects for a routing explanation nobody looks at.
    model_config = ConfigDict(extra="ignore", frozen=True)


class _LeanEnvelope(CloudEvent):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CaseEventView:
    """Case events as a consumer that reads only some fields sees them.

    Derived from the models above, never written by hand: each event type's view has the whole
    envelope and every field of CaseEventData with their definitions, plus those of the type's
    own fields that are named, each with the definition its full model gives it. So a view accepts
    a superset of what parse_case_event accepts (it does not look at unnamed fields) and reads the
    fields it has exactly as the full model would; the router still parses every event in full.
    """

    def __init__(self, *fields: str) -> None:
        declared = {name for event_class in EVENT_CLASSES.values() for name in data_class_of(event_class).model_fields}
        if unknown := set(fields) - declared:
            raise ValueError(f"no case event carries {sorted(unknown)}")
        self.fields = frozenset(fields)
        views = tuple(self._view(event_class) for event_class in EVENT_CLASSES.values())
        union: Any = Annotated[Union[views], Field(discriminator="type")]  # noqa: UP007  (a runtime tuple)
        self._adapter: TypeAdapter[CloudEvent] = TypeAdapter(union)

    def _view(self, event_class: type[CloudEvent]) -> type[CloudEvent]:
        full_data = data_class_of(event_class)
        own = {
            name: (info.annotation, info)
            for name, info in full_data.model_fields.items()
            if name in self.fields and name not in CaseEventData.model_fields
        }
        data = create_model(f"Lean{full_data.__name__}", __base__=_LeanData, **own)  # type: ignore[call-overload]
        type_field = event_class.model_fields["type"]
        return cast(
            type[CloudEvent],
            create_model(
                f"Lean{event_class.__name__}",
                __base__=_LeanEnvelope,
                type=(cast(Any, type_field.annotation), type_field),
                data=(data, ...),
            ),
        )

    def parse(self, raw: bytes | str) -> CloudEvent:
        """The event in JSON `raw`, with the fields of this view (ValidationError if it is not one)."""
        return self._adapter.validate_json(raw)


def data_class_of(event_class: type[CloudEvent]) -> type[CaseEventData]:
    """The `data` model of an event class."""
    return cast(type[CaseEventData], event_class.model_fields["data"].annotation)


def data_fields(data: CaseEventData) -> dict[str, Any]:
    """An event's `data` as a flat dict of its parsed values: `model_dump()` of a view's data
    without its per-field work (nested values are shared, not copied; a tolerant full model's
    undeclared extras are left out)."""
    return dict(vars(data))
