"""What each HTTP referral of a group-committed batch gets, decided without I/O: refused (token no
longer live, not allowed, room not a village room) or stored, and which ones share an outcome because
they carry the same idempotency key and say the same."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from schemas.referral import ReferralSubmission
from services.intake.domain import SubmissionInvalid, may_submit_for, room_problems, submission_fingerprint
from services.shared.directory import StationRow, User


@dataclass(frozen=True)  # no slots: the fingerprint is computed once, on first use
class HttpSubmission:
    """A referral whose body and caller the route has checked, waiting for the batch that stores it."""

    submission: ReferralSubmission
    user: User  # as the route authenticated it (perhaps from the token cache)
    token_hash: str
    key: str | None  # Idempotency-Key, else the body's submission_id
    key_field: str = "Idempotency-Key"  # where `key` came from (`submission_id` for the body's)

    @property
    def source(self) -> str:
        """Whose idempotency keys these are: a key is one user's, not everyone's."""
        return f"http:{self.user.id}"

    @functools.cached_property
    def as_stored(self) -> ReferralSubmission:
        """The referral as intake stores it: in the caller's name unless it names its submitter."""
        if self.submission.submitted_by is not None:
            return self.submission
        return self.submission.model_copy(update={"submitted_by": self.user.id})

    @functools.cached_property
    def fingerprint(self) -> str:
        """What the referral says (`submission_fingerprint`), `submitted_by` filled in as it is stored."""
        return submission_fingerprint(self.as_stored)


@dataclass(frozen=True, slots=True)
class Unauthorized:
    """The token was revoked (or its user changed) before the batch's transaction began."""


@dataclass(frozen=True, slots=True)
class Forbidden:
    """The caller may not submit this referral, because of `field`: the room they may not submit
    for (`room_id`), or another person's name (`submitted_by`)."""

    message: str
    field: str


Refusal = Unauthorized | Forbidden | SubmissionInvalid


def submission_refusal(user: User, submission: ReferralSubmission) -> Forbidden | None:
    """Why `user` may not submit this referral, or None: only a room's own worker or a system user
    submits for it, and a worker only in their own name."""
    if not may_submit_for(user, submission.room_id):
        return Forbidden(f"user '{user.id}' may not submit referrals for room '{submission.room_id}'", "room_id")
    if user.role == "worker" and submission.submitted_by not in (None, user.id):
        return Forbidden("a worker submits referrals in their own name", "submitted_by")
    return None


def judge_referral(item: HttpSubmission, live_user: User | None, room: StationRow | None) -> Refusal | None:
    """The refusal of one referral as its batch's transaction sees the token and the room, in the
    order one request alone answers: 401, then 403, then 422; None when it may be stored."""
    if live_user is None or live_user != item.user:
        return Unauthorized()
    if forbidden := submission_refusal(live_user, item.submission):
        return forbidden
    if problems := room_problems(item.submission.room_id, room):
        return SubmissionInvalid(problems, submission_id=item.key)
    return None


def share_cases(items: Sequence[HttpSubmission], stored: Sequence[int]) -> dict[int, int]:
    """For the positions in `stored`, the position whose outcome each gets: itself, or the first
    earlier item with the same (source, key) and the same referral. Items without a key each get a
    case of their own; the same key with another referral is judged on its own (store_new_cases)."""
    first: dict[tuple[str, str, str], int] = {}
    owner: dict[int, int] = {}
    for position in stored:
        item = items[position]
        if item.key is None:
            owner[position] = position
        else:
            owner[position] = first.setdefault((item.source, item.key, item.fingerprint), position)
    return owner


def rooms_and_tokens(items: Sequence[HttpSubmission]) -> tuple[list[str], list[str]]:
    """The distinct room ids and token hashes of a batch, sorted (what its transaction looks up)."""
    return sorted({i.submission.room_id for i in items}), sorted({i.token_hash for i in items})


def judge_batch(
    items: Sequence[HttpSubmission], live: Mapping[str, User], rooms: Mapping[str, StationRow]
) -> dict[int, Refusal]:
    """The refused items of a batch, by position."""
    refused: dict[int, Refusal] = {}
    for position, item in enumerate(items):
        refusal = judge_referral(item, live.get(item.token_hash), rooms.get(item.submission.room_id))
        if refusal is not None:
            refused[position] = refusal
    return refused
