"""A case's life after routing: offers, their deadlines, fall-through and queued cases (CONTRACT §6)."""

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from schemas.enums import CaseStatus
from schemas.events import EVENT_CLASSES, STATUS_AFTER, new_event, parse_case_event
from services.router.domain import CaseFacts, Network, Station, Worker
from services.router.lifecycle import (
    CaseState,
    Context,
    Decision,
    Emit,
    admit,
    fire_due,
    hand_back_from_non_worker,
    offer_ended,
    offer_queued,
    place,
    withdraw_unavailable_offer,
)
from services.router.policy import Policy, default_policy, parse_policy

NOW = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
RECEIVED = NOW - timedelta(minutes=5)  # the resolve SLA runs from receipt, the accept window from the offer
ACCEPT = timedelta(hours=3)  # default policy, medium risk
RESOLVE = timedelta(days=14)

#   M (city)
#   └── C (county)
#       ├── T1 (township) ── V11, V12 (village rooms)
#       └── T2 (township) ── V21
STATIONS = [
    Station("M", "city"),
    Station("C", "county", "M"),
    Station("T1", "township", "C"),
    Station("T2", "township", "C"),
    Station("V11", "village", "T1"),
    Station("V12", "village", "T1"),
    Station("V21", "village", "T2"),
]

# One offer per tier, no lateral help, short deadlines: every case goes to the township.
SINGLE_OFFER_POLICY = """
version: 7
sla:
  critical: {accept: PT10M, resolve: P1D}
  high:     {accept: PT20M, resolve: P2D}
  medium:   {accept: PT1H,  resolve: P4D}
  low:      {accept: PT2H,  resolve: P8D}
load_weight: {critical: 3, high: 2, medium: 1, low: 1}
offers_per_tier: 1
lateral: false
rules:
  - {name: all-to-township, tier: township}
"""


def network(*workers: Worker) -> Network:
    return Network(stations={s.id: s for s in STATIONS}, workers=list(workers))


def worker(id: str, station: str, *specialties: str, capacity: int = 10, load: int = 0, on_duty: bool = True) -> Worker:
    return Worker(id, station, frozenset(specialties or ("livelihood",)), "none", capacity, on_duty, load)


def case(category: str = "livelihood", risk: str = "medium", room: str = "V11") -> CaseFacts:
    return CaseFacts("case-1", room, category, risk, resident_ref="r-abc")


def context(net: Network, *, at: datetime = NOW, policy: Policy | None = None) -> Context:
    return Context(policy=policy or default_policy(), network=net, now=at)


def admitted(net: Network, facts: CaseFacts | None = None, *, policy: Policy | None = None) -> Decision:
    return admit(facts or case(), context(net, policy=policy), received_at=RECEIVED)


def names(decision: Decision) -> list[str]:
    return [event.name for event in decision.events]


def sla(event: Emit) -> tuple[object, ...]:
    """An SLA event's deadline, kind and the worker holding the case."""
    return event.fields["deadline"], event.fields["kind"], event.fields.get("worker_id")


def accepted(state: CaseState) -> CaseState:
    return replace(state, status="accepted", accept_by=None, accept_warn_at=None)


# w-1 is idle, w-2 busier: w-1 is offered the case first and w-2 next.
TOWNSHIP_PAIR = network(worker("w-1", "T1"), worker("w-2", "T1", load=3))


def offered_to_w1() -> CaseState:
    return admitted(TOWNSHIP_PAIR).state


def expire(state: CaseState, net: Network, *, policy: Policy | None = None) -> Decision:
    return offer_ended(state, context(net, at=NOW + ACCEPT, policy=policy), how="offer_expired")


# --- admit -----------------------------------------------------------------------------------


def test_routed_case_is_offered_with_accept_and_resolve_deadlines_and_warnings_at_80_percent() -> None:
    decision = admitted(TOWNSHIP_PAIR)
    state = decision.state

    assert names(decision) == ["routed", "assigned"]
    assert (state.status, state.tier, state.station_id, state.assignee_id) == ("offered", "township", "T1", "w-1")
    assert state.accept_by == NOW + ACCEPT
    assert state.accept_warn_at == NOW + timedelta(hours=2, minutes=24)
    assert state.resolve_by == RECEIVED + RESOLVE
    assert state.resolve_warn_at == RECEIVED + timedelta(days=11, hours=4, minutes=48)
    assert (state.offers_made, state.offers_at_tier, state.floor_station_id) == ({"township": 1}, 1, "T1")
    assert decision.offer is not None
    assert (decision.offer.worker_id, decision.offer.weight, decision.offer.accept_by) == ("w-1", 1, NOW + ACCEPT)
    assert decision.release is None and decision.ended_offer is None


def test_routed_event_names_the_rule_reason_policy_version_and_explanation() -> None:
    decision = admitted(TOWNSHIP_PAIR, policy=parse_policy(SINGLE_OFFER_POLICY))

    routed, assigned = decision.events
    assert (routed.tier, routed.station_id) == ("township", "T1")
    assert routed.fields["rule"] == "all-to-township"
    assert "rule 'all-to-township'" in routed.fields["reason"]
    assert routed.fields["policy_version"] == 7
    # routed explains the routing; the search for a worker is explained once, by its outcome.
    need = {"specialty": "livelihood", "certification": "none", "weight": 1}
    assert routed.fields["explanation"] == {"rule": "all-to-township", "policy_version": 7, "need": need}
    assert assigned.fields["explanation"]["outcome"] == {"assigned": "w-1", "station_id": "T1", "score": 0.0}


def test_assigned_event_explains_every_worker_filtered_out_and_the_winners_score() -> None:
    net = network(
        worker("w-off", "T1", on_duty=False),
        worker("w-other", "T1", "elderly_care"),
        worker("w-full", "T1", capacity=1, load=1),
        worker("w-a", "T1", load=2),
        worker("w-b", "T1", load=1),
    )

    assigned = admitted(net).events[-1]

    assert (assigned.name, assigned.tier, assigned.station_id) == ("assigned", "township", "T1")
    fields = assigned.fields
    assert (fields["worker_id"], fields["accept_by"], fields["score"]) == ("w-b", NOW + ACCEPT, 0.1)
    assert fields["candidates_considered"] == 2
    explanation = fields["explanation"]
    assert (explanation["rule"], explanation["policy_version"], explanation["workers_looked_at"]) == (
        "default",
        1,
        5,
    )
    (station,) = explanation["stations"]
    assert station["filtered"] == {"off_duty": 1, "specialty": 1, "certification": 0, "capacity": 1, "excluded": 0}
    assert station["filtered_out"] == [
        {"worker_id": "w-off", "reason": "off_duty"},
        {"worker_id": "w-other", "reason": "specialty"},
        {"worker_id": "w-full", "reason": "capacity"},
    ]
    assert [top["worker_id"] for top in station["top"]] == ["w-b", "w-a"]
    assert explanation["outcome"] == {"assigned": "w-b", "station_id": "T1", "score": 0.1}


def test_sibling_station_is_offered_the_case_before_the_parent_tier_without_escalating() -> None:
    decision = admitted(network(worker("w-sibling", "T2"), worker("w-county", "C")))

    assert names(decision) == ["routed", "assigned"]
    assert (decision.state.station_id, decision.state.assignee_id) == ("T2", "w-sibling")
    assert decision.state.floor_station_id == "T1"


def test_without_lateral_help_the_case_escalates_past_a_sibling_with_capacity() -> None:
    no_lateral = default_policy().model_copy(update={"lateral": False})

    decision = admitted(network(worker("w-sibling", "T2"), worker("w-county", "C")), policy=no_lateral)

    assert names(decision) == ["routed", "escalated", "assigned"]
    assert decision.events[1].fields == {"from_tier": "township", "from_station_id": "T1", "reason": "no_capacity"}
    assert decision.state.assignee_id == "w-county"


def test_case_with_no_capacity_anywhere_escalates_tier_by_tier_and_queues_at_the_top() -> None:
    decision = admitted(network(worker("w-full", "T1", capacity=1, load=1), worker("w-away", "C", on_duty=False)))

    assert names(decision) == ["routed", "escalated", "escalated", "queued"]
    hops = [(e.fields["from_station_id"], e.station_id, e.fields["reason"]) for e in decision.events[1:3]]
    assert hops == [("T1", "C", "no_capacity"), ("C", "M", "no_capacity")]
    queued = decision.events[-1]
    assert (queued.tier, queued.station_id, queued.fields["waiting_at"]) == ("city", "M", "M")
    # The search that found nobody is explained by the queued event, station by station.
    searched = [s["station_id"] for s in queued.fields["explanation"]["stations"]]
    assert searched == ["T1", "T2", "C", "M"]
    assert queued.fields["explanation"]["outcome"] == {"queued_at": "M"}
    state = decision.state
    assert (state.status, state.tier, state.station_id, state.assignee_id) == ("queued", "city", "M", None)
    assert state.floor_station_id == "T1"  # no_capacity does not raise the floor: T1 may still gain capacity
    assert decision.offer is None
    assert state.next_due_at == state.resolve_warn_at


def test_placing_from_a_station_explains_why_it_moved_up_once_with_the_offer() -> None:
    state = offered_to_w1()
    net = network(worker("w-city", "M"))

    placed, events, offer = place(replace(state, assignee_id=None), net.stations["T1"], context(net))

    assert [e.name for e in events] == ["escalated", "escalated", "assigned"]
    assert [e.fields.get("explanation") for e in events[:2]] == [None, None]
    explanation = events[2].fields["explanation"]
    assert [s["station_id"] for s in explanation["stations"]] == ["T1", "T2", "C", "M"]
    assert (explanation["rule"], explanation["policy_version"]) == (state.rule, default_policy().version)
    assert offer is not None and (offer.worker_id, placed.station_id, placed.tier) == ("w-city", "M", "city")


# --- withdraw_unavailable_offer: the worker went off duty or away ------------------------------


def test_an_offer_held_by_a_worker_who_went_off_duty_goes_to_the_next_worker_at_once() -> None:
    off_duty = network(worker("w-1", "T1", load=1, on_duty=False), worker("w-2", "T1", load=3))

    decision = withdraw_unavailable_offer(offered_to_w1(), context(off_duty))

    assert decision is not None and names(decision) == ["offer_expired", "assigned"]
    assert decision.events[0].fields == {"worker_id": "w-1", "reason": "the worker went off duty"}
    assert decision.events[1].fields["worker_id"] == "w-2"
    assert (decision.release, decision.ended_offer) == ("w-1", ("w-1", "withdrawn"))
    assert decision.state.passed_over == frozenset({"w-1"})


def test_an_offer_held_by_someone_no_longer_a_worker_is_withdrawn_too() -> None:
    without_w1 = network(worker("w-2", "T1", load=3))

    decision = withdraw_unavailable_offer(offered_to_w1(), context(without_w1))

    assert decision is not None and names(decision) == ["offer_expired", "assigned"]
    assert decision.events[0].fields["reason"] == "the worker is no longer a worker here"


@pytest.mark.parametrize(
    ("w1", "reason"),
    [
        (worker("w-1", "T2", load=1), "the worker moved to T2"),
        (worker("w-1", "T1", load=3, capacity=2), "the worker has 3 in use of a capacity lowered to 2"),
    ],
    ids=["moved", "capacity-lowered"],
)
def test_an_offer_the_directory_no_longer_allows_is_withdrawn(w1: Worker, reason: str) -> None:
    decision = withdraw_unavailable_offer(offered_to_w1(), context(network(w1, worker("w-2", "T1", load=3))))

    assert decision is not None and names(decision) == ["offer_expired", "assigned"]
    assert decision.events[0].fields == {"worker_id": "w-1", "reason": reason}
    assert (decision.release, decision.ended_offer, decision.events[1].fields["worker_id"]) == (
        "w-1",
        ("w-1", "withdrawn"),
        "w-2",
    )


def test_an_offer_to_a_worker_below_the_certification_the_case_needs_is_withdrawn() -> None:
    state = offered_to_w1()
    needs_assistant = replace(state, need=replace(state.need, certification="assistant"))
    senior = Worker("w-2", "T1", frozenset({"livelihood"}), "senior", 10, True, 3)

    decision = withdraw_unavailable_offer(needs_assistant, context(network(worker("w-1", "T1", load=1), senior)))

    assert decision is not None and names(decision) == ["offer_expired", "assigned"]
    assert decision.events[0].fields["reason"] == "the worker is certified none; the case needs assistant"


def test_an_offer_to_a_worker_on_duty_stands() -> None:
    state = offered_to_w1()

    assert withdraw_unavailable_offer(state, context(TOWNSHIP_PAIR)) is None
    assert withdraw_unavailable_offer(replace(state, status="accepted"), context(network())) is None


# --- hand_back_from_non_worker: an accepted case whose holder is no longer a worker ----------


def test_a_case_accepted_by_someone_no_longer_a_worker_is_offered_again_saying_whose_it_was() -> None:
    state = accepted(offered_to_w1())
    for status in ("accepted", "in_progress"):
        decision = hand_back_from_non_worker(replace(state, status=status), context(network(worker("w-2", "T1"))))

        assert decision is not None and names(decision) == ["assigned"]
        assert decision.events[0].fields["worker_id"] == "w-2"
        assert decision.events[0].fields["explanation"]["handed_back"] == {
            "from_worker_id": "w-1",
            "reason": "the worker is no longer a worker here",
        }
        assert (decision.release, decision.offer is not None, decision.ended_offer) == ("w-1", True, None)
        assert (decision.state.status, decision.state.assignee_id) == ("offered", "w-2")


def test_a_handed_back_case_nobody_can_take_waits_in_the_queue_at_the_top() -> None:
    decision = hand_back_from_non_worker(accepted(offered_to_w1()), context(network()))

    assert decision is not None and names(decision)[-1] == "queued"
    assert decision.events[-1].fields["explanation"]["handed_back"]["from_worker_id"] == "w-1"
    assert (decision.state.status, decision.state.assignee_id, decision.release) == ("queued", None, "w-1")


def test_a_case_held_by_a_worker_stays_with_them_even_off_duty_or_moved() -> None:
    state = accepted(offered_to_w1())
    for w1 in (worker("w-1", "T1", on_duty=False), worker("w-1", "T2")):
        assert hand_back_from_non_worker(state, context(network(w1))) is None
    assert hand_back_from_non_worker(offered_to_w1(), context(network())) is None  # an offer: withdrawn instead


# --- offer_ended: expiry and decline ---------------------------------------------------------


def test_unanswered_offer_expires_and_goes_to_the_next_worker_at_the_same_tier() -> None:
    decision = expire(offered_to_w1(), TOWNSHIP_PAIR)

    assert names(decision) == ["offer_expired", "assigned"]
    assert decision.events[0].fields == {"worker_id": "w-1"}
    state = decision.state
    assert (state.assignee_id, state.offers_at_tier, state.passed_over) == ("w-2", 2, frozenset({"w-1"}))
    assert state.accept_by == NOW + 2 * ACCEPT
    assert (decision.release, decision.ended_offer) == ("w-1", ("w-1", "expired"))
    assert decision.offer is not None and decision.offer.worker_id == "w-2"
    explained = decision.events[1].fields["explanation"]["stations"][0]
    assert explained["filtered_out"] == [{"worker_id": "w-1", "reason": "excluded"}]


def test_worker_who_let_an_offer_lapse_is_not_offered_the_case_again_even_if_least_loaded() -> None:
    net = network(worker("w-1", "T1"), worker("w-city", "M", load=9))

    decision = expire(offered_to_w1(), net)

    assert decision.state.assignee_id == "w-city"
    assert "w-1" not in [e.fields.get("worker_id") for e in decision.events[1:]]


def test_when_no_one_else_is_left_at_the_tier_an_expired_offer_escalates_for_no_capacity() -> None:
    net = network(worker("w-1", "T1"), worker("w-county", "C"))
    first = admitted(net).state

    decision = expire(first, net)

    assert names(decision) == ["offer_expired", "escalated", "assigned"]
    assert decision.events[1].fields["reason"] == "no_capacity"
    state = decision.state
    assert (state.assignee_id, state.offers_made) == ("w-county", {"township": 1, "county": 1})
    assert state.floor_station_id == "T1"


def test_next_worker_at_the_tier_is_the_one_who_served_the_resident_before_among_equals() -> None:
    net = network(worker("w-1", "T1"), worker("w-2", "T1", load=3), worker("w-3", "T1", load=3))
    ctx = replace(context(net, at=NOW + ACCEPT), served_before=frozenset({"w-3"}))

    decision = offer_ended(offered_to_w1(), ctx, how="offer_expired")

    assert decision.state.assignee_id == "w-3"


def test_after_offers_per_tier_offers_the_case_escalates_for_offer_expired_and_its_floor_rises() -> None:
    net = network(worker("w-1", "T1"), worker("w-2", "T1", load=3), worker("w-3", "T1", load=5), worker("w-c", "C"))
    second = expire(offered_to_w1(), net).state

    decision = expire(second, net)

    assert names(decision) == ["offer_expired", "escalated", "assigned"]
    up = decision.events[1]
    assert (up.tier, up.station_id) == ("county", "C")
    assert up.fields == {"from_tier": "township", "from_station_id": "T1", "reason": "offer_expired"}
    state = decision.state
    assert (state.assignee_id, state.floor_station_id) == ("w-c", "C")  # w-3 at T1 is not offered a third time
    assert (state.offers_made, state.passed_over) == ({"township": 2, "county": 1}, frozenset({"w-1", "w-2"}))
    assert (decision.release, decision.ended_offer) == ("w-2", ("w-2", "expired"))


def test_case_escalated_for_offer_expired_queues_at_the_top_when_no_one_above_has_capacity() -> None:
    second = expire(offered_to_w1(), TOWNSHIP_PAIR).state

    decision = expire(second, TOWNSHIP_PAIR)

    assert names(decision) == ["offer_expired", "escalated", "escalated", "queued"]
    assert [e.fields["reason"] for e in decision.events[1:3]] == ["offer_expired", "no_capacity"]
    state = decision.state
    assert (state.status, state.station_id, state.floor_station_id, state.assignee_id) == ("queued", "M", "C", None)
    assert decision.offer is None and decision.release == "w-2"


def test_decline_counts_as_an_offer_frees_the_workers_load_and_goes_to_the_next_worker() -> None:
    decision = offer_ended(offered_to_w1(), context(TOWNSHIP_PAIR), how="declined", reason="on leave next week")

    assert names(decision) == ["declined", "assigned"]
    assert decision.events[0].fields == {"worker_id": "w-1", "reason": "on leave next week"}
    assert (decision.release, decision.ended_offer) == ("w-1", ("w-1", "declined"))
    assert (decision.state.assignee_id, decision.state.offers_at_tier) == ("w-2", 2)
    assert "w-1" in decision.state.passed_over


def test_declining_the_last_offer_at_a_tier_escalates_with_reason_declined() -> None:
    single = parse_policy(SINGLE_OFFER_POLICY)
    net = network(worker("w-1", "T1"), worker("w-2", "T1", load=3), worker("w-c", "C"))
    first = admitted(net, policy=single).state

    decision = offer_ended(first, context(net, policy=single), how="declined", reason="conflict of interest")

    assert names(decision) == ["declined", "escalated", "assigned"]
    assert decision.events[1].fields["reason"] == "declined"
    assert (decision.state.assignee_id, decision.state.floor_station_id) == ("w-c", "C")
    assert decision.release == "w-1"


def test_with_offers_used_up_at_the_top_station_the_case_queues_there() -> None:
    net = network(worker("m-1", "M"), worker("m-2", "M", load=1), worker("m-3", "M", load=2))
    first = admitted(net).state
    assert (first.station_id, first.assignee_id) == ("M", "m-1")
    second = expire(first, net)
    assert second.state.assignee_id == "m-2"

    decision = expire(second.state, net)

    assert names(decision) == ["offer_expired", "queued"]
    assert decision.events[1].fields == {"waiting_at": "M"}
    assert (decision.state.status, decision.state.station_id, decision.state.assignee_id) == ("queued", "M", None)
    assert (decision.release, decision.offer) == ("m-2", None)


# --- fire_due --------------------------------------------------------------------------------


def test_nothing_due_fires_nothing() -> None:
    assert fire_due(offered_to_w1(), context(TOWNSHIP_PAIR, at=NOW + timedelta(hours=2))) is None


def test_accept_warning_fires_once_at_80_percent_of_the_offer_window() -> None:
    state = offered_to_w1()
    at_warning = context(TOWNSHIP_PAIR, at=NOW + timedelta(hours=2, minutes=24))

    decision = fire_due(state, at_warning)

    assert decision is not None and names(decision) == ["sla_warning"]
    assert sla(decision.events[0]) == (NOW + ACCEPT, "accept", "w-1")
    assert (decision.state.accept_warn_at, decision.state.assignee_id) == (None, "w-1")
    assert (decision.release, decision.offer, decision.ended_offer) == (None, None, None)
    assert fire_due(decision.state, at_warning) is None


def test_passed_accept_deadline_is_a_breach_that_expires_the_offer_and_offers_the_next_worker() -> None:
    warned = replace(offered_to_w1(), accept_warn_at=None)

    decision = fire_due(warned, context(TOWNSHIP_PAIR, at=NOW + ACCEPT))

    assert decision is not None and names(decision) == ["sla_breached", "offer_expired", "assigned"]
    assert sla(decision.events[0]) == (NOW + ACCEPT, "accept", "w-1")
    assert (decision.state.assignee_id, decision.release, decision.ended_offer) == ("w-2", "w-1", ("w-1", "expired"))
    assert decision.offer is not None and decision.offer.worker_id == "w-2"


def test_a_deadline_fires_a_grace_after_it_for_actions_sent_in_time_still_on_their_way() -> None:
    warned = replace(offered_to_w1(), accept_warn_at=None)
    grace = timedelta(seconds=10)

    assert fire_due(warned, context(TOWNSHIP_PAIR, at=NOW + ACCEPT + timedelta(seconds=9)), grace=grace) is None
    decision = fire_due(warned, context(TOWNSHIP_PAIR, at=NOW + ACCEPT + grace), grace=grace)
    assert decision is not None and names(decision) == ["sla_breached", "offer_expired", "assigned"]
    # The next worker's window runs from now, not from the deadline.
    assert decision.offer is not None and decision.offer.accept_by == NOW + ACCEPT + grace + ACCEPT
    # Warnings are not held back, and the sweep looks again when the grace is over.
    state = offered_to_w1()
    assert state.accept_warn_at is not None and state.accept_by is not None
    warning = fire_due(state, context(TOWNSHIP_PAIR, at=state.accept_warn_at), grace=grace)
    assert warning is not None and names(warning) == ["sla_warning"]
    assert warning.state.next_due_at == state.accept_by
    assert warning.state.next_firing(grace) == state.accept_by + grace


def test_resolve_warning_then_breach_each_fire_exactly_once() -> None:
    state = accepted(offered_to_w1())
    warn_at = RECEIVED + timedelta(days=11, hours=4, minutes=48)
    assert fire_due(state, context(TOWNSHIP_PAIR, at=warn_at - timedelta(seconds=1))) is None

    warning = fire_due(state, context(TOWNSHIP_PAIR, at=warn_at))
    assert warning is not None and names(warning) == ["sla_warning"]
    assert sla(warning.events[0]) == (RECEIVED + RESOLVE, "resolve", "w-1")
    assert fire_due(warning.state, context(TOWNSHIP_PAIR, at=warn_at)) is None

    breach = fire_due(warning.state, context(TOWNSHIP_PAIR, at=state.resolve_by))
    assert breach is not None and names(breach) == ["sla_breached"]
    assert sla(breach.events[0]) == (RECEIVED + RESOLVE, "resolve", "w-1")
    assert breach.state.resolve_breached and breach.state.status == "accepted"
    assert fire_due(breach.state, context(TOWNSHIP_PAIR, at=state.resolve_by + timedelta(days=1))) is None


def test_router_down_past_every_deadline_fires_each_in_order_in_one_call() -> None:
    late = context(TOWNSHIP_PAIR, at=RECEIVED + RESOLVE + timedelta(days=1))

    decision = fire_due(offered_to_w1(), late)

    assert decision is not None
    expected = ["sla_warning", "sla_breached", "offer_expired", "assigned", "sla_warning", "sla_breached"]
    assert names(decision) == expected
    assert [e.fields.get("kind") for e in decision.events] == ["accept", "accept", None, None, "resolve", "resolve"]
    state = decision.state
    assert (state.assignee_id, state.resolve_warn_at, state.resolve_breached) == ("w-2", None, True)
    assert (decision.release, decision.ended_offer) == ("w-1", ("w-1", "expired"))
    assert fire_due(state, late) is None  # the new offer's window has only just opened


def test_sla_warning_on_a_case_nobody_holds_names_no_worker() -> None:
    queued = admitted(network()).state

    decision = fire_due(queued, context(network(), at=RECEIVED + timedelta(days=12)))

    assert decision is not None and names(decision) == ["sla_warning"]
    assert sla(decision.events[0]) == (RECEIVED + RESOLVE, "resolve", None)
    assert (decision.events[0].tier, decision.events[0].station_id) == ("city", "M")


@pytest.mark.parametrize("status", ["resolved", "closed"])
def test_finished_case_fires_no_resolve_timers(status: str) -> None:
    finished = replace(accepted(offered_to_w1()), status=status)

    assert fire_due(finished, context(TOWNSHIP_PAIR, at=RECEIVED + RESOLVE + timedelta(days=1))) is None
    assert finished.next_due_at is None


def test_next_due_at_is_the_earliest_pending_deadline() -> None:
    offered = offered_to_w1()
    assert offered.next_due_at == offered.accept_warn_at == NOW + timedelta(hours=2, minutes=24)
    warned = replace(offered, accept_warn_at=None)
    assert warned.next_due_at == NOW + ACCEPT
    working = accepted(warned)
    assert working.next_due_at == working.resolve_warn_at
    resolve_warned = replace(working, resolve_warn_at=None)
    assert resolve_warned.next_due_at == RECEIVED + RESOLVE
    assert replace(resolve_warned, resolve_breached=True).next_due_at is None
    assert replace(offered, status="closed").next_due_at is None


def test_a_resolve_deadline_earlier_than_the_accept_window_comes_first() -> None:
    rushed = replace(offered_to_w1(), resolve_warn_at=NOW + timedelta(hours=1))

    assert rushed.next_due_at == NOW + timedelta(hours=1)


# --- offer_queued ----------------------------------------------------------------------------


def test_queued_case_is_offered_once_a_worker_comes_on_duty() -> None:
    queued = admitted(network(worker("w-1", "T1", on_duty=False))).state
    assert offer_queued(queued, context(network(worker("w-1", "T1", on_duty=False)))) is None

    decision = offer_queued(queued, context(network(worker("w-1", "T1"))))

    assert decision is not None and names(decision) == ["assigned"]
    state = decision.state
    assert (state.status, state.tier, state.station_id, state.assignee_id) == ("offered", "township", "T1", "w-1")
    assert (state.accept_by, state.accept_warn_at) == (NOW + ACCEPT, NOW + timedelta(hours=2, minutes=24))
    assert decision.offer is not None and decision.offer.worker_id == "w-1"
    assert decision.release is None


def test_queued_case_escalated_for_offer_expired_is_not_offered_below_its_floor() -> None:
    second = expire(offered_to_w1(), TOWNSHIP_PAIR).state
    queued = expire(second, TOWNSHIP_PAIR).state
    assert (queued.status, queued.floor_station_id) == ("queued", "C")

    assert offer_queued(queued, context(network(worker("w-new", "T1"), worker("w-t2", "T2")))) is None
    decision = offer_queued(queued, context(network(worker("w-new", "T1"), worker("w-c", "C"))))

    assert decision is not None
    assert (decision.state.assignee_id, decision.state.station_id) == ("w-c", "C")


def test_queued_case_is_not_offered_to_a_worker_who_passed_on_it() -> None:
    queued = replace(admitted(network()).state, passed_over=frozenset({"w-1"}))

    assert offer_queued(queued, context(network(worker("w-1", "T1")))) is None
    decision = offer_queued(queued, context(network(worker("w-1", "T1"), worker("w-2", "T1", load=8))))

    assert decision is not None and decision.state.assignee_id == "w-2"


def test_offers_made_at_a_tier_before_the_case_left_it_count_when_it_returns_from_the_queue() -> None:
    net = network(worker("w-1", "T1"), worker("c-1", "C"))
    at_county = expire(admitted(net).state, net).state  # w-1 lapsed, no one else at T1: up to C for no_capacity
    queued = expire(at_county, net).state  # c-1 lapsed, no one else above: queued at M, floor still T1
    back = network(worker("w-1", "T1"), worker("c-1", "C"), worker("w-new", "T1"), worker("w-third", "T1", load=2))
    second_at_township = offer_queued(queued, context(back))
    assert second_at_township is not None and second_at_township.state.assignee_id == "w-new"

    decision = expire(second_at_township.state, back)

    # w-new's was the second offer made at the township: the case should move up, not offer w-third.
    assert names(decision)[:2] == ["offer_expired", "escalated"]
    assert decision.events[1].fields["reason"] == "offer_expired"


def test_case_that_is_not_queued_is_left_alone() -> None:
    assert offer_queued(offered_to_w1(), context(TOWNSHIP_PAIR)) is None


# --- every event the lifecycle emits is a valid case event -----------------------------------


def _scenarios() -> dict[str, Callable[[], Decision | None]]:
    second = expire(offered_to_w1(), TOWNSHIP_PAIR).state
    single = parse_policy(SINGLE_OFFER_POLICY)
    declining = network(worker("w-1", "T1"), worker("w-c", "C"))
    top = network(worker("m-1", "M"), worker("m-2", "M", load=1))
    return {
        "admit-assigned": lambda: admitted(TOWNSHIP_PAIR),
        "admit-queued": lambda: admitted(network()),
        "admit-escalated": lambda: admitted(network(worker("w-city", "M"))),
        "expired-same-tier": lambda: expire(offered_to_w1(), TOWNSHIP_PAIR),
        "expired-escalated": lambda: expire(second, TOWNSHIP_PAIR),
        "expired-at-top": lambda: expire(expire(admitted(top).state, top).state, top),
        "declined-escalated": lambda: offer_ended(
            admitted(declining, policy=single).state, context(declining, policy=single), how="declined", reason="busy"
        ),
        "fire-due-everything": lambda: fire_due(offered_to_w1(), context(TOWNSHIP_PAIR, at=NOW + RESOLVE)),
        "offer-queued": lambda: offer_queued(admitted(network()).state, context(network(worker("w-1", "T1")))),
    }


@pytest.mark.parametrize("scenario", list(_scenarios()))
def test_every_emitted_event_is_a_valid_case_event_that_agrees_with_the_new_state(scenario: str) -> None:
    decision = _scenarios()[scenario]()
    assert decision is not None
    state = decision.state
    common = {k: getattr(state.facts, k) for k in ("case_id", "category", "risk_level", "resident_ref")}

    for sequence, emit in enumerate(decision.events, start=1):
        assert emit.name in EVENT_CLASSES
        status = STATUS_AFTER[emit.name] or CaseStatus(state.status)
        data = common | {"status": status.value, "tier": emit.tier, "station_id": emit.station_id}
        event = new_event(emit.name, source="caselink/router", data=data | {"sequence": sequence, **emit.fields})
        assert parse_case_event(event.model_dump_json()) == event

    moves = [emit for emit in decision.events if STATUS_AFTER[emit.name] is not None]
    if moves:
        last = moves[-1]
        assert (STATUS_AFTER[last.name], last.tier, last.station_id) == (state.status, state.tier, state.station_id)
