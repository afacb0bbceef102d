"""Intake's pure decisions: may this caller submit for this room, is the room a village room,
and the keyed reference that stands for a resident everywhere outside the database."""

from __future__ import annotations

import hashlib
import hmac
import json
import unicodedata
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from schemas.enums import Tier
from schemas.referral import (
    ROOT_FIELD,
    FieldError,
    KafkaReferralSubmission,
    ReferralSubmission,
    Resident,
    validation_errors,
)
from services.shared.directory import StationRow, User

# The only tier that submits referrals.
VILLAGE = str(Tier.VILLAGE)
# Limits of a referral body at the HTTP edge: a real one is a few KiB and nested three deep.
MAX_REFERRAL_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
_OPENERS, _CLOSERS = frozenset(b"[{"), frozenset(b"]}")


def is_json_content_type(value: str | None) -> bool:
    """Whether a Content-Type header names JSON (`application/json` or `application/*+json`)."""
    media = (value or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def json_nesting_exceeds(body: bytes, limit: int) -> bool:
    """Whether arrays and objects in a JSON text nest deeper than `limit` (brackets inside strings
    do not count). Checked before parsing: a parser recursing 30,000 levels deep fails, or worse."""
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        elif byte in _CLOSERS:
            depth -= 1
    return False


class SubmissionInvalid(ValueError):
    """A submission that cannot be accepted, with the reasons per field."""

    def __init__(self, errors: list[FieldError], submission_id: str | None = None) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors
        self.submission_id = submission_id


def submission_fingerprint(submission: ReferralSubmission) -> str:
    """What a submission says, as a hash: a repeated idempotency key must come with the same referral.
    The key itself (`submission_id`) is left out; the rest is read as the model has it, so the
    order of the JSON's fields and its spacing do not count."""
    said = submission.model_dump_json(exclude={"submission_id"})
    return hashlib.sha256(said.encode()).hexdigest()


def says_another_referral(claimed: str | None, fingerprint: str) -> bool:
    """Whether a referral repeating a key says something else than the one that claimed it. A key
    claimed before fingerprints were kept (None) takes any repeat, as it always did."""
    return claimed is not None and claimed != fingerprint


def key_reused(field: str, *, submission_id: str | None) -> SubmissionInvalid:
    """The refusal of a referral whose idempotency key came before with a different referral: storing
    nothing and answering with the earlier case would lose this one without a word."""
    message = "already used for a different referral; a new referral needs a new key"
    return SubmissionInvalid([FieldError(field=field, message=message)], submission_id=submission_id)


def _normalise(text: str | None) -> str:
    return " ".join(unicodedata.normalize("NFKC", text or "").split()).casefold()


def resident_ref(resident: Resident, *, key: str) -> str:
    """A keyed hash of the resident's identity: stable per resident, meaningless without the key.

    The id number identifies a person when given; otherwise name, birth year and household
    (or address) do. Events carry this instead of any personal data.
    """
    if resident.id_number:
        identity = "id:" + resident.id_number.upper()
    else:
        place = resident.household_id or resident.address
        identity = f"person:{_normalise(resident.name)}|{resident.birth_year or ''}|{_normalise(place)}"
    digest = hmac.new(key.encode(), identity.encode(), hashlib.sha256).hexdigest()
    return "r_" + digest[:32]


def room_problems(room_id: str, room: StationRow | None) -> list[FieldError]:
    """Why `room_id` cannot receive referrals (empty when it can)."""
    if room is None:
        return [FieldError(field="room_id", message=f"unknown station '{room_id}'")]
    if room.tier != VILLAGE:
        return [
            FieldError(
                field="room_id",
                message=f"'{room_id}' is a {room.tier} station; referrals are submitted by village rooms",
            )
        ]
    return []


def may_submit_for(user: User, room_id: str) -> bool:
    """A system user submits for any room; a worker only for the village room they belong to."""
    if user.role == "system":
        return True
    return user.role == "worker" and user.station_id == room_id


def kafka_submission_problems(
    submitted_by: str, room_id: str, *, submitter: User | None, room: StationRow | None
) -> list[FieldError]:
    """Why a Kafka submission's room cannot receive it, or its named submitter may not submit for
    that room (the same rules as HTTP): a bad room names `room_id`, not the submitter."""
    problems = room_problems(room_id, room)
    if submitter is None:
        problems.append(FieldError(field="submitted_by", message=f"unknown user '{submitted_by}'"))
    elif not problems and not may_submit_for(submitter, room_id):
        message = f"user '{submitted_by}' may not submit referrals for room '{room_id}'"
        problems.append(FieldError(field="submitted_by", message=message))
    return problems


def parse_kafka_submission(raw: bytes | None) -> KafkaReferralSubmission:
    """Decode a message of caselink.referrals.submitted, or raise SubmissionInvalid naming the fields."""
    try:
        document = json.loads(raw or b"")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        message = f"message is not valid UTF-8 JSON ({type(exc).__name__} at position {getattr(exc, 'pos', 0)})"
        raise SubmissionInvalid([FieldError(field=ROOT_FIELD, message=message)]) from None
    submission_id = document.get("submission_id") if isinstance(document, dict) else None
    if not isinstance(submission_id, str):
        submission_id = None
    if not isinstance(document, dict):
        raise SubmissionInvalid([FieldError(field=ROOT_FIELD, message="message must be a JSON object")])
    try:
        return KafkaReferralSubmission.model_validate(document)
    except ValidationError as exc:
        raise SubmissionInvalid(validation_errors(exc), submission_id=submission_id) from None


# Statuses in which the assignee holds the case (and its weight counts against their capacity).
HOLDING_STATUSES = ("offered", "accepted", "in_progress")
# A case taken by someone, or sent down, leaves the queue; after a breach only finishing it does.
_TAKEN = frozenset({"assigned", "accepted", "referred_back"})
_FINISHED = frozenset({"resolved", "closed"})


@dataclass(frozen=True)
class QueueEntry:
    """A case's place on the escalation queue: why, where and since when; closed once handled."""

    reason: str | None = None
    station_id: str | None = None
    since: datetime | None = None
    closed_at: datetime | None = None

    @property
    def is_open(self) -> bool:
        """Whether the case waits on the queue now."""
        return self.reason is not None and self.closed_at is None


def next_queue_entry(name: str, data: dict[str, Any], at: datetime, entry: QueueEntry) -> QueueEntry:
    """The queue entry after a case event: escalations and queueing open it, an SLA breach
    opens it until the case is finished, a supervisor's or worker's taking the case closes it."""
    since = entry.since if entry.is_open else at
    if name == "escalated":
        return QueueEntry(str(data["reason"]), str(data["station_id"]), since)
    if name == "queued":
        reason = entry.reason if entry.is_open else "no_capacity"
        return QueueEntry(reason, str(data["waiting_at"]), since)
    if name == "sla_breached" and data.get("kind") == "resolve":
        return QueueEntry("sla_breach", str(data["station_id"]), since)
    if entry.is_open and (name in _FINISHED or (name in _TAKEN and entry.reason != "sla_breach")):
        return replace(entry, closed_at=at)
    return entry


def may_see_case(user: User, *, assignee_id: str | None, stations_on_path: set[str]) -> bool:
    """Whether a user may see a case (CONTRACT §3): system users all; anyone else whose station is on
    the case's path (its room, its current station) or above it, and the worker holding it."""
    if user.role == "system":
        return True
    if user.role == "worker" and user.id == assignee_id:
        return True
    return user.role in ("worker", "supervisor") and user.station_id in stations_on_path
