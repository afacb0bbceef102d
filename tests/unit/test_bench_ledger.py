"""The bench's ledger of case events and its verdict on a run's correctness."""

from __future__ import annotations

import itertools
from typing import Any

from services.bench.ledger import CaseLedger, check_run

_ids = itertools.count(1)


def event(case_id: str, name: str, sequence: int, event_id: str | None = None, **data: Any) -> dict[str, Any]:
    return {
        "id": event_id or f"e-{next(_ids)}",
        "subject": case_id,
        "type": f"caselink.case.{name}.v1",
        "data": {"case_id": case_id, "sequence": sequence, **data},
    }


def feed(ledger: CaseLedger, *events: dict[str, Any], start: float = 0.0) -> None:
    for offset, item in enumerate(events):
        ledger.observe(item, start + offset)


def test_a_case_settles_when_a_push_follows_its_assignment() -> None:
    ledger = CaseLedger()
    feed(ledger, event("c1", "received", 1), event("c1", "routed", 2), event("c1", "assigned", 3))
    assert ledger.settled == 0
    feed(ledger, event("c1", "notified", 4), start=10.0)
    track = ledger.cases["c1"]
    assert ledger.settled == 1
    assert (track.received_at, track.decided_at, track.settled_at) == (0.0, 2.0, 10.0)
    assert track.decision() == "assigned"


def test_a_push_for_an_escalation_before_the_assignment_does_not_settle_the_case() -> None:
    ledger = CaseLedger()
    feed(ledger, event("c1", "received", 1), event("c1", "escalated", 2), event("c1", "notified", 3))
    feed(ledger, event("c1", "assigned", 4))
    assert ledger.settled == 0
    assert ledger.cases["c1"].first_notified_at == 2.0  # latency counts the first push all the same
    feed(ledger, event("c1", "notified", 5))
    assert ledger.settled == 1


def test_a_queued_case_settles_with_its_supervisors_push_and_a_failed_push_is_marked() -> None:
    ledger = CaseLedger()
    feed(ledger, event("c1", "received", 1), event("c1", "queued", 2), event("c1", "notification_failed", 3))
    track = ledger.cases["c1"]
    assert ledger.settled == 1
    assert track.decision() == "queued"
    assert track.settled_by_failure


def test_a_redelivered_event_is_counted_once() -> None:
    ledger = CaseLedger()
    received = event("c1", "received", 1, event_id="same")
    feed(ledger, received, received)
    assert ledger.redelivered == 1
    assert ledger.received == 1


def test_a_correct_run_is_ok() -> None:
    ledger = CaseLedger()
    feed(ledger, event("c1", "received", 1), event("c1", "assigned", 2), event("c1", "notified", 3))
    feed(ledger, event("c2", "received", 1), event("c2", "queued", 2), event("c2", "notified", 3))
    verdict = check_run(["s1", "s2"], {"s1": "c1", "s2": "c2"}, ledger)
    assert verdict.ok
    assert (verdict.submitted, verdict.accepted, verdict.settled) == (2, 2, 2)
    assert (verdict.assigned, verdict.queued, verdict.lost) == (1, 1, 0)


def test_a_submission_intake_never_accepted_is_lost() -> None:
    verdict = check_run(["s1"], {}, CaseLedger())
    assert not verdict.ok
    assert verdict.lost == 1 and verdict.accepted == 0
    assert verdict.examples["lost"] == ["s1"]


def test_a_case_that_never_got_its_push_is_lost() -> None:
    ledger = CaseLedger()
    feed(ledger, event("c1", "received", 1), event("c1", "assigned", 2))
    verdict = check_run(["s1"], {"s1": "c1"}, ledger)
    assert verdict.lost == 1
    assert verdict.examples["lost"] == ["c1"]


def test_two_first_assignments_of_one_case_are_a_duplicate_decision() -> None:
    ledger = CaseLedger()
    feed(
        ledger,
        event("c1", "received", 1),
        event("c1", "assigned", 2),
        event("c1", "assigned", 3),
        event("c1", "notified", 4),
    )
    verdict = check_run(["s1"], {"s1": "c1"}, ledger)
    assert verdict.duplicate_decisions == 1
    assert not verdict.ok


def test_a_new_offer_after_an_expired_one_is_not_a_duplicate() -> None:
    ledger = CaseLedger()
    feed(
        ledger,
        event("c1", "received", 1),
        event("c1", "assigned", 2),
        event("c1", "notified", 3),
        event("c1", "offer_expired", 4),
        event("c1", "assigned", 5),
    )
    assert check_run(["s1"], {"s1": "c1"}, ledger).duplicate_decisions == 0


def test_a_gap_in_sequences_or_two_events_with_one_sequence_is_a_sequence_problem() -> None:
    ledger = CaseLedger()
    feed(ledger, event("c1", "received", 1), event("c1", "assigned", 3), event("c1", "notified", 4))
    feed(ledger, event("c2", "received", 1), event("c2", "received", 1), event("c2", "queued", 2))
    feed(ledger, event("c2", "notified", 3))
    verdict = check_run(["s1", "s2"], {"s1": "c1", "s2": "c2"}, ledger)
    assert verdict.sequence_problems == 2


def test_a_rejected_submission_fails_the_run() -> None:
    verdict = check_run(["s1"], {}, CaseLedger(), rejected=["s1", "someone-else"])
    assert verdict.rejected == 1
    assert verdict.to_dict()["ok"] is False
