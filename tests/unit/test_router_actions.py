"""Workers' and supervisors' actions on a case: what each does, and why it may be refused."""

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.commands import CaseCommand, CommandAction
from schemas.enums import CaseStatus
from schemas.events import EVENT_CLASSES, STATUS_AFTER, new_event, parse_case_event
from services.router.actions import decide_command
from services.router.domain import CaseFacts, Network, Station, Worker
from services.router.lifecycle import Actor, CaseState, CommandRefused, Context, Decision, admit
from services.router.policy import default_policy

NOW = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=20)  # when the person acts

#   M (city)
#   ├── C (county)
#   │   ├── T1 (township) ── V11, V12 (village rooms)
#   │   └── T2 (township) ── V21
#   └── C2 (county) ── T3 (township)
STATIONS = [
    Station("M", "city"),
    Station("C", "county", "M"),
    Station("C2", "county", "M"),
    Station("T1", "township", "C"),
    Station("T2", "township", "C"),
    Station("T3", "township", "C2"),
    Station("V11", "village", "T1"),
    Station("V12", "village", "T1"),
    Station("V21", "village", "T2"),
]


def network(*workers: Worker) -> Network:
    return Network(stations={s.id: s for s in STATIONS}, workers=list(workers))


def worker(
    id: str,
    station: str,
    *specialties: str,
    cert: str = "none",
    capacity: int = 10,
    load: int = 0,
    on_duty: bool = True,
) -> Worker:
    return Worker(id, station, frozenset(specialties or ("livelihood",)), cert, capacity, on_duty, load)


def case(category: str = "livelihood", risk: str = "medium") -> CaseFacts:
    return CaseFacts("case-1", "V11", category, risk, resident_ref="r-abc")


def supervisor(station: str) -> Actor:
    return Actor(f"sup-{station}", "supervisor", station)


W1 = Actor("w-1", "worker", "T1")
W2 = Actor("w-2", "worker", "T1")
# w-1 is offered a medium livelihood case at T1 first, w-2 next; w-c waits at the county.
STAFF = network(worker("w-1", "T1"), worker("w-2", "T1", load=3), worker("w-c", "C"))


def admitted(net: Network = STAFF, facts: CaseFacts | None = None) -> CaseState:
    context = Context(policy=default_policy(), network=net, now=NOW)
    return admit(facts or case(), context, received_at=NOW).state


def decide(state: CaseState, action: CommandAction, actor: Actor | None, net: Network = STAFF, **args: Any) -> Decision:
    args.setdefault("issued_at", LATER)
    command = CaseCommand(case_id="case-1", action=action, actor_id=actor.id if actor else "nobody", **args)
    return decide_command(state, command, actor, Context(policy=default_policy(), network=net, now=LATER))


def refusal(state: CaseState, action: CommandAction, actor: Actor | None, net: Network = STAFF, **args: Any) -> str:
    with pytest.raises(CommandRefused) as refused:
        decide(state, action, actor, net, **args)
    return refused.value.outcome


def names(decision: Decision) -> list[str]:
    return [event.name for event in decision.events]


def offered() -> CaseState:
    return admitted()


def accepted() -> CaseState:
    return decide(offered(), "accept", W1).state


def in_progress() -> CaseState:
    return decide(accepted(), "start", W1).state


def queued_at_top() -> CaseState:
    return admitted(network())


# --- the worker holding the case -------------------------------------------------------------


def test_offered_worker_accepts_and_the_offer_is_recorded_as_accepted() -> None:
    decision = decide(offered(), "accept", W1)

    assert names(decision) == ["accepted"]
    event = decision.events[0]
    assert (event.tier, event.station_id, event.fields) == ("township", "T1", {"worker_id": "w-1"})
    state = decision.state
    assert (state.status, state.assignee_id, state.accept_by, state.accept_warn_at) == ("accepted", "w-1", None, None)
    assert (decision.ended_offer, decision.release, decision.offer) == (("w-1", "accepted"), None, None)
    assert state.next_due_at == state.resolve_warn_at


def test_a_worker_who_went_off_duty_cannot_accept_the_offer_they_still_hold() -> None:
    off_duty = network(worker("w-1", "T1", load=1, on_duty=False), worker("w-2", "T1", load=3))
    without_w1 = network(worker("w-2", "T1", load=3))

    with pytest.raises(CommandRefused) as refused:
        decide(offered(), "accept", W1, off_duty)
    assert (refused.value.outcome, str(refused.value)) == (
        "conflict",
        "worker w-1 went off duty: the offer goes to someone else",
    )
    assert refusal(offered(), "accept", W1, without_w1) == "conflict"
    assert names(decide(offered(), "decline", W1, off_duty, reason="on leave")) == ["declined", "assigned"]


@pytest.mark.parametrize(
    ("now", "why"),
    [
        (worker("w-1", "T2", load=1), "moved to T2"),
        (worker("w-1", "T1", load=1, cert="none"), "is certified none; the case needs assistant"),
        (worker("w-1", "T1", load=3, capacity=2, cert="assistant"), "has 3 in use of a capacity lowered to 2"),
    ],
    ids=["moved", "certification-lowered", "capacity-lowered"],
)
def test_an_offer_the_directory_no_longer_allows_cannot_be_accepted_but_can_be_declined(now: Worker, why: str) -> None:
    """`caselink network load` changed the worker after the offer was made (CONTRACT §6)."""
    state = offered()
    needs_assistant = replace(state, need=replace(state.need, certification="assistant"))
    changed = network(now, worker("w-2", "T1", "livelihood", cert="senior", load=3))

    with pytest.raises(CommandRefused) as refused:
        decide(needs_assistant, "accept", W1, changed)
    assert (refused.value.outcome, str(refused.value)) == (
        "conflict",
        f"worker w-1 {why}: the offer goes to someone else",
    )
    assert names(decide(needs_assistant, "decline", W1, changed, reason="moved")) == ["declined", "assigned"]


@pytest.mark.parametrize("role", ["supervisor", "system"])
def test_the_holder_who_is_no_longer_a_worker_cannot_work_the_case(role: str) -> None:
    """Made a supervisor or a system user by a network load: the user id still matches the
    assignee, but only a worker works a case (the sweep hands it back)."""
    former = Actor("w-1", role, "T1")
    for state, action in [(accepted(), "start"), (accepted(), "resolve"), (in_progress(), "resolve")]:
        assert refusal(state, action, former) == "forbidden"


@pytest.mark.parametrize("actor", [W2, supervisor("T1"), None], ids=["other-worker", "supervisor", "unknown-user"])
@pytest.mark.parametrize("action", ["accept", "decline"])
def test_only_the_offered_worker_may_answer_the_offer(action: CommandAction, actor: Actor | None) -> None:
    assert refusal(offered(), action, actor, reason="not mine") == "forbidden"


@pytest.mark.parametrize("state", [accepted, queued_at_top], ids=["accepted", "queued"])
@pytest.mark.parametrize("action", ["accept", "decline"])
def test_answering_a_case_that_is_not_on_offer_is_a_conflict(
    action: CommandAction, state: Callable[[], CaseState]
) -> None:
    assert refusal(state(), action, W1, reason="too late") == "conflict"


@pytest.mark.parametrize("action", ["accept", "decline"])
def test_answering_an_offer_one_declined_after_it_went_to_the_next_worker_is_a_conflict(action: CommandAction) -> None:
    moved_on = decide(offered(), "decline", W1, reason="on leave").state
    assert moved_on.assignee_id == "w-2"

    assert refusal(moved_on, action, W1, reason="changed my mind") == "conflict"


def test_decline_frees_the_workers_load_and_offers_the_next_worker_at_the_tier() -> None:
    decision = decide(offered(), "decline", W1, reason="  on leave next week ")

    assert names(decision) == ["declined", "assigned"]
    assert decision.events[0].fields == {"worker_id": "w-1", "reason": "on leave next week"}
    assert (decision.release, decision.ended_offer) == ("w-1", ("w-1", "declined"))
    assert (decision.state.assignee_id, decision.state.offers_at_tier) == ("w-2", 2)
    assert decision.offer is not None and decision.offer.accept_by == LATER + timedelta(hours=3)


def test_accepted_case_is_started_by_its_worker() -> None:
    decision = decide(accepted(), "start", W1)

    assert names(decision) == ["started"]
    assert decision.events[0].fields == {"worker_id": "w-1"}
    assert decision.state.status == "in_progress"
    assert (decision.release, decision.ended_offer) == (None, None)


@pytest.mark.parametrize("state", [offered, in_progress], ids=["offered", "in_progress"])
def test_only_an_accepted_case_can_be_started(state: Callable[[], CaseState]) -> None:
    assert refusal(state(), "start", W1) == "conflict"


@pytest.mark.parametrize("action", ["start", "resolve"])
def test_only_the_worker_holding_the_case_may_work_it(action: CommandAction) -> None:
    assert refusal(accepted(), action, W2) == "forbidden"
    assert refusal(accepted(), action, supervisor("T1")) == "forbidden"


@pytest.mark.parametrize("state", [accepted, in_progress], ids=["accepted", "in_progress"])
def test_resolving_a_case_releases_the_workers_load(state: Callable[[], CaseState]) -> None:
    decision = decide(state(), "resolve", W1, outcome="benefits restored")

    assert names(decision) == ["resolved"]
    assert decision.events[0].fields == {"worker_id": "w-1", "outcome": "benefits restored"}
    assert (decision.state.status, decision.release, decision.ended_offer) == ("resolved", "w-1", None)
    assert decision.state.next_due_at is None


def test_an_accept_sent_after_the_offer_lapsed_is_refused_though_the_sweep_has_not_fired_yet() -> None:
    state = offered()
    assert state.accept_by is not None
    on_time = decide(state, "accept", W1, issued_at=state.accept_by)
    assert names(on_time) == ["accepted"]  # sent at the deadline, read later: honoured

    with pytest.raises(CommandRefused) as refused:
        decide(state, "accept", W1, issued_at=state.accept_by + timedelta(milliseconds=1))
    assert (refused.value.outcome, str(refused.value)) == (
        "conflict",
        "the offer to worker w-1 lapsed at 2025-01-06T12:00:00Z: it goes to the next worker",
    )


def test_a_case_resolved_or_closed_after_its_resolve_deadline_breaches_it_first_unless_the_sweep_did() -> None:
    state = accepted()
    late = state.resolve_by + timedelta(seconds=3)

    resolved = decide(state, "resolve", W1, issued_at=late)
    assert names(resolved) == ["sla_breached", "resolved"]
    breach = resolved.events[0].fields
    assert (breach["kind"], breach["deadline"], breach["worker_id"]) == ("resolve", state.resolve_by, "w-1")
    assert resolved.state.resolve_breached
    closed = decide(state, "close", supervisor("T1"), issued_at=late, reason="moved away")
    assert names(closed) == ["sla_breached", "closed"]

    assert names(decide(state, "resolve", W1, issued_at=state.resolve_by)) == ["resolved"]  # in time
    swept = replace(state, resolve_breached=True)
    assert names(decide(swept, "resolve", W1, issued_at=late)) == ["resolved"]  # breached once already


def test_a_case_still_on_offer_cannot_be_resolved() -> None:
    assert refusal(offered(), "resolve", W1) == "conflict"


# --- close -----------------------------------------------------------------------------------


@pytest.mark.parametrize("station", ["T1", "C", "M"])
def test_supervisor_of_the_case_station_or_above_closes_it_and_frees_the_load(station: str) -> None:
    decision = decide(accepted(), "close", supervisor(station))

    assert names(decision) == ["closed"]
    closed = decision.events[0]
    fields = {"worker_id": "w-1", "closed_by": f"sup-{station}"}
    assert (closed.tier, closed.station_id, closed.fields) == ("township", "T1", fields)
    assert (decision.state.status, decision.release, decision.ended_offer) == ("closed", "w-1", None)
    assert decision.state.next_due_at is None


def test_closing_a_case_on_offer_withdraws_the_offer() -> None:
    decision = decide(offered(), "close", supervisor("T1"))

    assert (decision.release, decision.ended_offer) == ("w-1", ("w-1", "withdrawn"))
    assert (decision.state.accept_by, decision.state.accept_warn_at) == (None, None)


@pytest.mark.parametrize(
    "state", [queued_at_top, lambda: decide(accepted(), "resolve", W1).state], ids=["queued", "resolved"]
)
def test_closing_a_case_nobody_holds_releases_no_load(state: Callable[[], CaseState]) -> None:
    decision = decide(state(), "close", supervisor("M"))

    assert (decision.state.status, decision.release, decision.ended_offer) == ("closed", None, None)


@pytest.mark.parametrize(
    "actor",
    [
        supervisor("T2"),
        supervisor("V11"),
        supervisor("C2"),
        W1,
        Actor("sys-portal", "system", None),
        Actor("sup-nowhere", "supervisor", "X-unknown"),
        None,
    ],
    ids=["sibling", "lower", "other-county", "worker", "system", "unknown-station", "unknown-user"],
)
def test_only_a_supervisor_of_the_case_station_or_above_may_close_it(actor: Actor | None) -> None:
    assert refusal(accepted(), "close", actor) == "forbidden"


def test_a_closed_case_cannot_be_closed_again_and_status_is_checked_before_the_actor() -> None:
    closed = decide(accepted(), "close", supervisor("T1")).state

    assert refusal(closed, "close", supervisor("T1")) == "conflict"
    assert refusal(closed, "close", W2) == "conflict"


# --- escalate --------------------------------------------------------------------------------


def test_supervisor_escalates_a_case_to_the_parent_tier_and_it_is_offered_there() -> None:
    decision = decide(accepted(), "escalate", supervisor("T1"))

    assert names(decision) == ["escalated", "assigned"]
    up = decision.events[0]
    assert (up.tier, up.station_id) == ("county", "C")
    assert up.fields == {"from_tier": "township", "from_station_id": "T1", "reason": "manual"}
    state = decision.state
    assert (state.status, state.assignee_id, state.floor_station_id, state.offers_at_tier) == (
        "offered",
        "w-c",
        "C",
        1,
    )
    assert (decision.release, decision.ended_offer) == ("w-1", None)
    assert decision.offer is not None and decision.offer.worker_id == "w-c"


def test_escalating_a_case_on_offer_withdraws_the_offer() -> None:
    decision = decide(offered(), "escalate", supervisor("C"))

    assert (decision.release, decision.ended_offer) == ("w-1", ("w-1", "withdrawn"))


LONE = network(worker("w-1", "T1"))  # no one above the township


def test_escalated_case_with_no_one_above_climbs_to_the_top_and_queues() -> None:
    decision = decide(admitted(LONE), "escalate", supervisor("T1"), LONE)

    assert names(decision) == ["escalated", "escalated", "queued"]
    assert [e.fields["reason"] for e in decision.events[:2]] == ["manual", "no_capacity"]
    assert (decision.state.status, decision.state.station_id, decision.state.floor_station_id) == ("queued", "M", "C")


def test_a_case_at_the_top_station_cannot_be_escalated() -> None:
    assert refusal(queued_at_top(), "escalate", supervisor("M")) == "conflict"


def test_a_resolved_case_cannot_be_escalated() -> None:
    assert refusal(decide(accepted(), "resolve", W1).state, "escalate", supervisor("T1")) == "conflict"


# --- refer back ------------------------------------------------------------------------------

# Serious child protection goes to the county (intermediate certification); T1 and V11 have staff.
PROTECTION = network(
    worker("c-1", "C", "child_protection", cert="intermediate"),
    worker("t-1", "T1", "child_protection", cert="intermediate"),
    worker("v-1", "V11", "child_protection", cert="senior"),
    worker("t3-1", "T3", "child_protection", cert="senior"),
)


def at_county() -> CaseState:
    offered_to_c1 = admitted(PROTECTION, case("child_protection", "high"))
    state = decide(offered_to_c1, "accept", Actor("c-1", "worker", "C"), PROTECTION).state
    assert (state.station_id, state.assignee_id) == ("C", "c-1")
    return state


def test_refer_back_without_a_station_goes_to_the_highest_station_below_on_the_rooms_path() -> None:
    decision = decide(at_county(), "refer_back", supervisor("C"), PROTECTION)

    assert names(decision) == ["referred_back", "assigned"]
    back = decision.events[0]
    assert (back.tier, back.station_id) == ("township", "T1")
    assert back.fields == {"from_tier": "county", "from_station_id": "C", "reason": "referred back by a supervisor"}
    state = decision.state
    assert (state.assignee_id, state.station_id, state.floor_station_id) == ("t-1", "T1", "T1")
    assert (state.offers_made, state.offers_at_tier) == ({"township": 1}, 1)  # a refer-back starts afresh
    assert (decision.release, decision.ended_offer) == ("c-1", None)


def test_refer_back_from_the_top_goes_to_the_county_on_the_rooms_path() -> None:
    decision = decide(queued_at_top(), "refer_back", supervisor("M"), STAFF, reason="county has capacity now")

    assert names(decision) == ["referred_back", "assigned"]
    assert decision.events[0].station_id == "C"
    assert decision.events[0].fields["reason"] == "county has capacity now"
    assert (decision.state.assignee_id, decision.state.floor_station_id) == ("w-c", "C")


def test_refer_back_to_a_named_station_below_within_the_supervisors_scope() -> None:
    decision = decide(at_county(), "refer_back", supervisor("C"), PROTECTION, station_id="V11")

    assert decision.events[0].station_id == "V11"
    assert (decision.state.assignee_id, decision.state.tier) == ("v-1", "village")


def test_a_case_placed_laterally_may_be_referred_back_to_the_submitting_room() -> None:
    # T1 has nobody, so the case from V11 went to sibling T2; T2's supervisor sends it home.
    net = network(worker("w-t2", "T2"), worker("v-1", "V11"))
    lateral = admitted(net)
    assert lateral.station_id == "T2"

    decision = decide(lateral, "refer_back", supervisor("T2"), net, station_id="V11")

    assert names(decision) == ["referred_back", "assigned"]
    assert (decision.state.assignee_id, decision.state.station_id) == ("v-1", "V11")
    assert decision.release == "w-t2"


@pytest.mark.parametrize(
    "station", ["C", "M", "T3", "X-unknown"], ids=["same-tier", "above", "out-of-scope", "unknown"]
)
def test_refer_back_to_a_station_not_below_the_case_in_scope_is_invalid(station: str) -> None:
    assert refusal(at_county(), "refer_back", supervisor("C"), PROTECTION, station_id=station) == "invalid"


def test_a_case_cannot_be_referred_back_to_a_room_under_another_township_of_the_supervisors_county() -> None:
    net = network(worker("w-t1", "T1"), worker("v-21", "V21"))
    at_t1 = admitted(net)
    assert at_t1.station_id == "T1"

    assert refusal(at_t1, "refer_back", supervisor("C"), net, station_id="V21") == "invalid"
    # A room under the case's own station is fine, as is the case's own room.
    assert decide(at_t1, "refer_back", supervisor("C"), net, station_id="V12").events[0].station_id == "V12"


def test_a_village_case_cannot_be_referred_back() -> None:
    village = admitted(network(worker("v-1", "V11", "elderly_care")), case("elderly_care", "low"))
    assert village.station_id == "V11"

    assert refusal(village, "refer_back", supervisor("T1")) == "conflict"


def test_referring_back_a_case_on_offer_withdraws_the_offer() -> None:
    on_offer = admitted(PROTECTION, case("child_protection", "high"))

    decision = decide(on_offer, "refer_back", supervisor("C"), PROTECTION)

    assert (decision.release, decision.ended_offer) == ("c-1", ("c-1", "withdrawn"))


# --- assign ----------------------------------------------------------------------------------


def test_supervisor_assigns_a_queued_case_to_a_worker_in_their_subtree() -> None:
    net = network(worker("w-eld", "T1", "elderly_care", load=2))

    decision = decide(queued_at_top(), "assign", supervisor("M"), net, worker_id="w-eld")

    assert names(decision) == ["assigned"]
    assigned = decision.events[0]
    assert (assigned.tier, assigned.station_id) == ("township", "T1")
    fields = assigned.fields
    assert (fields["worker_id"], fields["candidates_considered"], fields["score"]) == ("w-eld", 1, 0.2)
    assert fields["accept_by"] == LATER + timedelta(hours=3)
    explanation = fields["explanation"]
    assert (explanation["manual"], explanation["assigned_by"], explanation["specialty_matches"]) == (
        True,
        "sup-M",
        False,
    )
    assert explanation["outcome"] == {"assigned": "w-eld", "station_id": "T1", "score": 0.2}
    assert (decision.state.status, decision.state.assignee_id) == ("offered", "w-eld")
    assert (decision.release, decision.ended_offer) == (None, None)
    assert decision.offer is not None and (decision.offer.worker_id, decision.offer.weight) == ("w-eld", 1)


def test_reassigning_an_accepted_case_releases_the_previous_workers_load() -> None:
    decision = decide(accepted(), "assign", supervisor("T1"), worker_id="w-2")

    assert decision.state.assignee_id == "w-2"
    assert (decision.release, decision.ended_offer) == ("w-1", None)


def test_reassigning_a_case_on_offer_withdraws_the_offer() -> None:
    decision = decide(offered(), "assign", supervisor("C"), worker_id="w-c")

    assert (decision.release, decision.ended_offer) == ("w-1", ("w-1", "withdrawn"))
    assert (decision.state.assignee_id, decision.state.station_id) == ("w-c", "C")


@pytest.mark.parametrize(
    ("candidate", "facts"),
    [
        (worker("w-x", "T1", on_duty=False), case()),
        (worker("w-x", "T1", cert="none"), case(risk="high")),  # the serious rule needs assistant
        (worker("w-x", "T1", capacity=2, load=2), case()),
        (worker("w-1", "T1"), case()),  # already holds it
    ],
    ids=["off-duty", "under-certified", "no-capacity", "already-holding"],
)
def test_assigning_to_a_worker_who_cannot_take_the_case_is_a_conflict(candidate: Worker, facts: CaseFacts) -> None:
    net = network(worker("w-1", "T1", cert="senior"), *([candidate] if candidate.id != "w-1" else []))
    state = admitted(net, facts)

    assert refusal(state, "assign", supervisor("T1"), net, worker_id=candidate.id) == "conflict"


def test_assigning_an_unknown_worker_is_invalid() -> None:
    assert refusal(offered(), "assign", supervisor("T1"), worker_id="w-ghost") == "invalid"


def test_assigning_a_worker_outside_the_supervisors_subtree_is_forbidden() -> None:
    net = network(worker("w-1", "T1"), worker("w-t2", "T2"))

    assert refusal(admitted(net), "assign", supervisor("T1"), net, worker_id="w-t2") == "forbidden"


def test_only_a_supervisor_may_assign_and_the_actor_is_checked_before_the_arguments() -> None:
    assert refusal(offered(), "assign", W1, worker_id="w-2") == "forbidden"
    assert refusal(offered(), "assign", W1, worker_id="w-ghost") == "forbidden"


def test_a_closed_case_cannot_be_assigned() -> None:
    closed = decide(accepted(), "close", supervisor("T1")).state

    assert refusal(closed, "assign", supervisor("T1"), worker_id="w-2") == "conflict"


# --- every event an action emits is a valid case event ---------------------------------------

SCENARIOS: dict[str, Callable[[], Decision]] = {
    "accept": lambda: decide(offered(), "accept", W1),
    "decline": lambda: decide(offered(), "decline", W1, reason="on leave"),
    "start": lambda: decide(accepted(), "start", W1),
    "resolve": lambda: decide(in_progress(), "resolve", W1, outcome="done"),
    "resolve-without-outcome": lambda: decide(accepted(), "resolve", W1),
    "close-offered": lambda: decide(offered(), "close", supervisor("C")),
    "close-queued": lambda: decide(queued_at_top(), "close", supervisor("M")),
    "escalate": lambda: decide(accepted(), "escalate", supervisor("T1")),
    "escalate-to-queue": lambda: decide(admitted(LONE), "escalate", supervisor("T1"), LONE),
    "refer-back": lambda: decide(at_county(), "refer_back", supervisor("C"), PROTECTION),
    "refer-back-named": lambda: decide(at_county(), "refer_back", supervisor("C"), PROTECTION, station_id="V11"),
    "assign": lambda: decide(accepted(), "assign", supervisor("T1"), worker_id="w-2"),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_emitted_event_is_a_valid_case_event_that_agrees_with_the_new_state(scenario: str) -> None:
    decision = SCENARIOS[scenario]()
    state = decision.state
    common = {k: getattr(state.facts, k) for k in ("case_id", "category", "risk_level", "resident_ref")}

    for sequence, emit in enumerate(decision.events, start=1):
        assert emit.name in EVENT_CLASSES
        status = STATUS_AFTER[emit.name] or CaseStatus(state.status)
        data = common | {"status": status.value, "tier": emit.tier, "station_id": emit.station_id}
        event = new_event(emit.name, source="caselink/router", data=data | {"sequence": sequence, **emit.fields})
        assert parse_case_event(event.model_dump_json()) == event

    last = [emit for emit in decision.events if STATUS_AFTER[emit.name] is not None][-1]
    assert (STATUS_AFTER[last.name], last.tier, last.station_id) == (state.status, state.tier, state.station_id)


def test_a_worker_too_full_for_a_heavy_case_is_told_apart_from_one_with_no_room_at_all() -> None:
    net = network(worker("w-1", "T1", cert="senior"), worker("w-tiny", "T1", cert="senior", capacity=1))
    heavy = admitted(net, case(risk="high"))  # weighs 2

    with pytest.raises(CommandRefused) as refused:
        decide(heavy, "assign", supervisor("T1"), net, worker_id="w-tiny")

    message = "worker w-tiny has no room for the case: it weighs 2, and 0 of their capacity 1 is in use"
    assert str(refused.value) == message
