"""What the bench saw happen to each case on `caselink.case.events`, and whether the run was correct (pure).

A case is *settled* once its first decision (`assigned` or `queued`) is followed, by sequence,
by a push outcome (`notified`, or `notification_failed`, which is counted apart). Events may be
redelivered (at-least-once), so they are deduplicated by their CloudEvent id before counting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

DECISIONS = {"caselink.case.assigned.v1": "assigned", "caselink.case.queued.v1": "queued"}
NOTIFIED = "caselink.case.notified.v1"
NOTIFICATION_FAILED = "caselink.case.notification_failed.v1"
# After one of these a new offer is legitimate; none of them happen in a bench run (nobody answers,
# and accept windows are at least 30 minutes), but a second decision after one is not a duplicate.
RELEASES = frozenset({"caselink.case.offer_expired.v1", "caselink.case.declined.v1"})
EXAMPLES = 5


@dataclass
class CaseTrack:
    """One case's events as seen by the bench."""

    sequences: dict[int, str] = field(default_factory=dict)  # sequence -> event id
    conflicting_sequences: int = 0  # a sequence number seen with two different event ids
    decisions: list[tuple[int, str]] = field(default_factory=list)  # (sequence, assigned|queued)
    first_release: int | None = None
    pushes: list[tuple[int, bool]] = field(default_factory=list)  # (sequence, delivered)
    received_at: float | None = None  # when the bench saw `received` (intake done)
    decided_at: float | None = None  # when it saw the first decision (router done)
    first_notified_at: float | None = None
    settled_at: float | None = None  # when it saw the push outcome after the decision (notifier done)
    settled_by_failure: bool = False

    def first_round_decisions(self) -> int:
        """Decisions before any offer was released: exactly one in a correct run."""
        return sum(1 for seq, _ in self.decisions if self.first_release is None or seq < self.first_release)

    def decision(self) -> str | None:
        """assigned or queued: the first decision, if any."""
        return min(self.decisions)[1] if self.decisions else None

    def sequence_gaps(self) -> bool:
        """Whether the sequences seen are not exactly 1, 2, … n."""
        return set(self.sequences) != set(range(1, len(self.sequences) + 1))

    def settle_if_done(self, at: float) -> bool:
        """Mark the case settled at `at` if its first decision now has a push outcome after it."""
        if self.settled_at is not None or not self.decisions:
            return False
        first = min(self.decisions)[0]
        after = [delivered for seq, delivered in self.pushes if seq > first]
        if not after:
            return False
        self.settled_at = at
        self.settled_by_failure = not any(after)
        return True


class CaseLedger:
    """Every case seen since the bench started watching, fed one decoded CloudEvent at a time."""

    def __init__(self) -> None:
        self.cases: dict[str, CaseTrack] = {}
        self.event_ids: set[str] = set()
        self.redelivered = 0
        self.settled = 0
        self.received = 0

    def observe(self, event: Mapping[str, Any], at: float) -> None:
        """Record one event (a dict of the CloudEvent) that arrived at wall-clock time `at`."""
        event_id = str(event.get("id"))
        if event_id in self.event_ids:
            self.redelivered += 1
            return
        self.event_ids.add(event_id)
        data = event.get("data") or {}
        case_id, kind, seq = str(event.get("subject")), str(event.get("type")), int(data.get("sequence", 0))
        track = self.cases.setdefault(case_id, CaseTrack())
        if track.sequences.get(seq, event_id) != event_id:
            track.conflicting_sequences += 1
        track.sequences.setdefault(seq, event_id)
        if kind == "caselink.case.received.v1":
            self.received += 1
            track.received_at = at
        elif kind in DECISIONS:
            track.decisions.append((seq, DECISIONS[kind]))
            track.decided_at = at if track.decided_at is None else min(at, track.decided_at)
        elif kind in RELEASES:
            track.first_release = seq if track.first_release is None else min(seq, track.first_release)
        elif kind in (NOTIFIED, NOTIFICATION_FAILED):
            track.pushes.append((seq, kind == NOTIFIED))
            if kind == NOTIFIED and track.first_notified_at is None:
                track.first_notified_at = at
        if track.settle_if_done(at):
            self.settled += 1


@dataclass(frozen=True)
class Correctness:
    """Did every submission become exactly one case that reached a final, notified state?"""

    submitted: int
    accepted: int  # submissions intake turned into a case
    rejected: int  # submissions intake refused (a bench bug: its submissions are valid)
    settled: int
    assigned: int
    queued: int
    notification_failed: int  # settled, but every push after the decision failed
    lost: int  # submitted but not settled: never accepted, never decided or never notified
    duplicate_decisions: int  # cases with more than one first assignment-or-queue
    sequence_problems: int  # cases whose sequences have gaps or conflicting ids
    redelivered_events: int
    examples: dict[str, list[str]]

    @property
    def ok(self) -> bool:
        """No case lost, duplicated or out of sequence, nothing rejected."""
        return not (self.lost or self.duplicate_decisions or self.sequence_problems or self.rejected)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, with the verdict."""
        return {"ok": self.ok, **asdict(self)}


def check_run(
    submitted: Iterable[str], case_of: Mapping[str, str], ledger: CaseLedger, rejected: Iterable[str] = ()
) -> Correctness:
    """Judge a run: `case_of` maps submission id -> case id (what intake recorded), `rejected` the
    submission ids seen on caselink.referrals.rejected."""
    submissions = list(submitted)
    refused = set(rejected) & set(submissions)
    lost: list[str] = []
    duplicated: list[str] = []
    broken: list[str] = []
    decided: dict[str, int] = {"assigned": 0, "queued": 0}
    settled = failed = 0
    for submission_id in submissions:
        case_id = case_of.get(submission_id)
        track = ledger.cases.get(case_id) if case_id else None
        if track is None or track.settled_at is None:
            lost.append(submission_id if case_id is None else case_id)
            continue
        settled += 1
        failed += track.settled_by_failure
        decided[track.decision() or "assigned"] += 1
        if track.first_round_decisions() > 1:
            duplicated.append(str(case_id))
        if track.sequence_gaps() or track.conflicting_sequences:
            broken.append(str(case_id))
    return Correctness(
        submitted=len(submissions),
        accepted=sum(1 for s in submissions if s in case_of),
        rejected=len(refused),
        settled=settled,
        assigned=decided["assigned"],
        queued=decided["queued"],
        notification_failed=failed,
        lost=len(lost),
        duplicate_decisions=len(duplicated),
        sequence_problems=len(broken),
        redelivered_events=ledger.redelivered,
        examples={
            "lost": lost[:EXAMPLES],
            "duplicate_decisions": duplicated[:EXAMPLES],
            "sequence_problems": broken[:EXAMPLES],
            "rejected": sorted(refused)[:EXAMPLES],
        },
    )
