"""Routing decisions against small station networks (CONTRACT §6 semantics)."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from services.router.domain import (
    CaseFacts,
    Need,
    Network,
    Station,
    Worker,
    eligibility,
    find_placement,
    rank_candidates,
    route_new_case,
    weight,
)
from services.router.policy import Policy, default_policy

NOW = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)

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


def network(*workers: Worker, stations: list[Station] = STATIONS) -> Network:
    return Network(stations={s.id: s for s in stations}, workers=list(workers))


def worker(
    id: str,
    station: str,
    *specialties: str,
    cert: str = "none",
    capacity: int = 10,
    load: int = 0,
    on_duty: bool = True,
    idle_since: datetime | None = None,
) -> Worker:
    return Worker(id, station, frozenset(specialties), cert, capacity, on_duty, load, idle_since)


def case(category: str, risk: str, room: str = "V11") -> CaseFacts:
    return CaseFacts("case-1", room, category, risk, resident_ref="r-abc")


def lateral_off() -> Policy:
    return default_policy().model_copy(update={"lateral": False})


def route(facts: CaseFacts, net: Network, policy: Policy | None = None, served: frozenset[str] = frozenset()):
    return route_new_case(facts, policy=policy or default_policy(), network=net, now=NOW, served_before=served)


def test_routine_low_risk_stays_in_the_village_room() -> None:
    net = network(worker("w-room", "V11", "elderly_care"), worker("w-town", "T1", "elderly_care"))

    outcome = route(case("elderly_care", "low"), net)

    assert outcome.rule == "routine-in-village"
    assert (outcome.target_tier, outcome.target_station_id) == ("village", "V11")
    assert outcome.assignment is not None
    assert outcome.assignment.worker_id == "w-room"
    assert outcome.assignment.accept_by == NOW + timedelta(hours=24)
    assert outcome.escalations == []


def test_default_rule_sends_medium_risk_to_township() -> None:
    net = network(worker("w-room", "V11", "family_support"), worker("w-town", "T1", "family_support"))

    outcome = route(case("family_support", "medium"), net)

    assert outcome.rule == "default"
    assert (outcome.target_tier, outcome.target_station_id) == ("township", "T1")
    assert outcome.assignment is not None and outcome.assignment.worker_id == "w-town"
    assert outcome.reason.startswith("category family_support, risk medium fell through to rule 'default'")


def test_high_risk_needs_assistant_certification() -> None:
    net = network(
        worker("w-uncertified", "T1", "elderly_care", cert="none"),
        worker("w-assistant", "T1", "elderly_care", cert="assistant", load=4),
    )

    outcome = route(case("elderly_care", "high"), net)

    assert outcome.rule == "serious"
    assert outcome.assignment is not None and outcome.assignment.worker_id == "w-assistant"
    assert outcome.explanation["stations"][0]["filtered"]["certification"] == 1


def test_critical_child_protection_goes_to_county_and_needs_intermediate_certification() -> None:
    net = network(
        worker("w-town-senior", "T1", "child_protection", cert="senior"),
        worker("w-county-assistant", "C", "child_protection", cert="assistant"),
        worker("w-county-intermediate", "C", "child_protection", cert="intermediate", load=6),
    )

    outcome = route(case("child_protection", "critical"), net)

    assert outcome.rule == "protect-serious"
    assert (outcome.target_tier, outcome.target_station_id) == ("county", "C")
    assert outcome.assignment is not None
    assert outcome.assignment.worker_id == "w-county-intermediate"
    assert outcome.assignment.accept_by == NOW + timedelta(minutes=30)
    assert outcome.reason == "category child_protection and risk critical matched rule 'protect-serious' → county C"


def test_crisis_case_escalates_to_county_when_township_has_no_specialist() -> None:
    net = network(
        worker("w-town", "T1", "elderly_care"),
        worker("w-county", "C", "crisis_intervention"),
    )

    outcome = route(case("elderly_care", "critical"), net)

    assert outcome.rule == "crisis"
    assert outcome.reason == "risk critical matched rule 'crisis' → township T1"
    assert outcome.assignment is not None
    assert (outcome.assignment.worker_id, outcome.assignment.tier) == ("w-county", "county")
    (step,) = outcome.escalations
    assert (step.from_tier, step.from_station_id, step.to_tier, step.to_station_id) == ("township", "T1", "county", "C")
    assert step.reason == "no_capacity"
    assert outcome.notify_station_ids == ["C"]
    assert [s["station_id"] for s in outcome.explanation["stations"]] == ["T1", "T2", "C"]


def test_lateral_sibling_station_is_tried_before_parent() -> None:
    net = network(worker("w-sibling", "T2", "livelihood"), worker("w-county", "C", "livelihood"))

    outcome = route(case("livelihood", "medium"), net)

    assert outcome.assignment is not None
    assert (outcome.assignment.worker_id, outcome.assignment.station_id) == ("w-sibling", "T2")
    assert outcome.escalations == []
    assert [s["via"] for s in outcome.explanation["stations"]] == ["target", "lateral"]


def test_sibling_stations_are_one_pool_and_the_least_loaded_worker_among_them_is_offered() -> None:
    stations = [*STATIONS, Station("T3", "township", "C")]
    net = network(
        worker("w-t2-busy", "T2", "livelihood", capacity=10, load=8),
        worker("w-t3-idle", "T3", "livelihood", capacity=10, load=1),
        stations=stations,
    )

    outcome = route(case("livelihood", "medium"), net)

    # T2 comes first by id, but T3's worker carries less: the siblings back each other up as one.
    assert outcome.assignment is not None
    assert (outcome.assignment.worker_id, outcome.assignment.station_id) == ("w-t3-idle", "T3")
    assert (outcome.assignment.tier, outcome.assignment.score) == ("township", 0.1)
    assert outcome.assignment.candidates_considered == 2
    assert outcome.escalations == []
    searched = outcome.explanation["stations"]
    assert [(s["station_id"], s["via"]) for s in searched] == [("T1", "target"), ("T2", "lateral"), ("T3", "lateral")]
    # The sibling passed over beside the one placed at is summed up by its counts alone.
    assert searched[1] == {
        "station_id": "T2", "tier": "township", "via": "lateral", "considered": 1, "filtered": {}, "eligible": 1
    }  # fmt: skip
    assert [c["worker_id"] for c in searched[2]["top"]] == ["w-t3-idle"]


def test_lateral_false_skips_siblings() -> None:
    net = network(worker("w-sibling", "T2", "livelihood"), worker("w-county", "C", "livelihood"))

    outcome = route(case("livelihood", "medium"), net, policy=lateral_off())

    assert outcome.assignment is not None and outcome.assignment.worker_id == "w-county"
    assert [s["station_id"] for s in outcome.explanation["stations"]] == ["T1", "C"]


def test_village_case_tries_sibling_rooms_before_the_township() -> None:
    net = network(worker("w-next-room", "V12", "elderly_care"), worker("w-town", "T1", "elderly_care"))

    outcome = route(case("elderly_care", "low"), net)

    assert outcome.assignment is not None and outcome.assignment.station_id == "V12"


def test_no_capacity_anywhere_queues_at_top_station() -> None:
    net = network(
        worker("w-full", "T1", "livelihood", capacity=3, load=3),
        worker("w-county-full", "C", "livelihood", capacity=1, load=1),
    )

    outcome = route(case("livelihood", "medium"), net)

    assert outcome.assignment is None
    assert (outcome.queued_at, outcome.queued_tier) == ("M", "city")
    assert (outcome.station_id, outcome.tier) == ("M", "city")
    assert [(s.from_station_id, s.to_station_id) for s in outcome.escalations] == [("T1", "C"), ("C", "M")]
    assert outcome.explanation["outcome"] == {"queued_at": "M"}


def test_off_duty_worker_is_never_chosen() -> None:
    net = network(
        worker("w-off", "T1", "livelihood", on_duty=False),
        worker("w-busy", "T1", "livelihood", load=8),
    )

    outcome = route(case("livelihood", "medium"), net)
    assert outcome.assignment is not None and outcome.assignment.worker_id == "w-busy"

    only_off_duty = network(worker("w-off", "T1", "livelihood", on_duty=False))
    assert route(case("livelihood", "medium"), only_off_duty).assignment is None


def test_required_certification_is_never_skipped_even_if_it_means_going_higher() -> None:
    net = network(
        worker("w-county", "C", "mental_health", cert="assistant"),
        worker("w-city", "M", "mental_health", cert="senior", load=8),
    )

    outcome = route(case("mental_health", "high"), net)

    assert outcome.assignment is not None and outcome.assignment.worker_id == "w-city"
    assert [s.reason for s in outcome.escalations] == ["no_capacity"]


def test_lowest_load_ratio_wins() -> None:
    net = network(
        worker("w-half", "T1", "livelihood", capacity=4, load=2),
        worker("w-quarter", "T1", "livelihood", capacity=12, load=3),
        worker("w-less-loaded-but-fuller", "T1", "livelihood", capacity=2, load=1),
    )

    outcome = route(case("livelihood", "medium"), net)

    assert outcome.assignment is not None
    assert outcome.assignment.worker_id == "w-quarter"
    assert outcome.assignment.score == 0.25
    assert outcome.assignment.candidates_considered == 3


def test_previous_worker_of_resident_breaks_ties() -> None:
    net = network(
        worker("w-a", "T1", "livelihood", load=2, idle_since=None),
        worker("w-b", "T1", "livelihood", load=2, idle_since=NOW),
    )

    outcome = route(case("livelihood", "medium"), net, served=frozenset({"w-b"}))

    assert outcome.assignment is not None and outcome.assignment.worker_id == "w-b"
    assert outcome.explanation["stations"][0]["top"][0] == {
        "worker_id": "w-b",
        "load_ratio": 0.2,
        "served_before": True,
    }


def test_longest_idle_breaks_remaining_ties() -> None:
    early, late = NOW - timedelta(days=2), NOW - timedelta(hours=1)
    workers = [
        worker("w-late", "T1", "livelihood", idle_since=late),
        worker("w-early", "T1", "livelihood", idle_since=early),
        worker("w-never", "T1", "livelihood", idle_since=None),
        worker("w-also-early", "T1", "livelihood", idle_since=early),
    ]

    ranked = rank_candidates(workers, served_before=frozenset())

    assert [c.worker.id for c in ranked] == ["w-never", "w-also-early", "w-early", "w-late"]


def test_weight_counts_against_capacity() -> None:
    policy = default_policy()
    high = Need(specialty="livelihood", certification="none", weight=weight(policy, "high"))

    assert weight(policy, "critical") == 3
    assert eligibility(worker("w", "T1", "livelihood", capacity=10, load=9), high) == "capacity"
    assert eligibility(worker("w", "T1", "livelihood", capacity=10, load=8), high) is None


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (worker("w", "T1", "elderly_care", cert="senior", on_duty=False), "off_duty"),
        (worker("w", "T1", "livelihood", cert="senior"), "specialty"),
        (worker("w", "T1", "elderly_care", cert="none"), "certification"),
        (worker("w", "T1", "elderly_care", cert="assistant", load=10), "capacity"),
        (worker("w", "T1", "elderly_care", cert="intermediate", load=9), None),
    ],
)
def test_eligibility_names_why_a_worker_is_filtered_out(candidate: Worker, reason: str | None) -> None:
    need = Need(specialty="elderly_care", certification="assistant", weight=1)

    assert eligibility(candidate, need) == reason


def test_already_offered_workers_are_excluded_from_a_new_search() -> None:
    net = network(worker("w-1", "T1", "livelihood"), worker("w-2", "T1", "livelihood", load=5))
    need = Need(specialty="livelihood", certification="none", weight=1)

    placement = find_placement(
        network=net, start=net.stations["T1"], need=need, lateral=True, exclude_workers=frozenset({"w-1"})
    )

    assert placement.best is not None and placement.best.worker.id == "w-2"
    assert placement.searches[0].filtered["excluded"] == 1


def test_network_without_a_county_uses_the_nearest_station_above_and_says_so() -> None:
    stations = [Station("M", "city"), Station("T", "township", "M"), Station("V", "village", "T")]
    net = network(worker("w-city", "M", "child_protection", cert="intermediate"), stations=stations)

    outcome = route(case("child_protection", "high", room="V"), net)

    assert (outcome.target_tier, outcome.target_station_id) == ("city", "M")
    assert "no county station above it" in outcome.reason
    assert outcome.assignment is not None and outcome.assignment.worker_id == "w-city"


def test_explanation_is_json_and_carries_no_resident_data() -> None:
    net = network(
        worker("w-off", "T1", "livelihood", on_duty=False),
        worker("w-other", "T1", "elderly_care"),
        worker("w-ok", "T1", "livelihood"),
    )

    outcome = route(case("livelihood", "medium"), net)
    text = json.dumps(outcome.explanation)

    assert "r-abc" not in text
    first = outcome.explanation["stations"][0]
    assert first["filtered"] == {"off_duty": 1, "specialty": 1, "certification": 0, "capacity": 0, "excluded": 0}
    assert first["eligible"] == 1
    assert outcome.explanation["need"] == {"specialty": "livelihood", "certification": "none", "weight": 1}


def test_network_helpers_walk_the_tiers() -> None:
    net = network()

    assert net.ancestor_at("V11", "county") == net.stations["C"]
    assert net.ancestor_at("V11", "village") == net.stations["V11"]
    assert net.ancestor_at("T1", "village") is None
    assert [s.id for s in net.siblings(net.stations["T2"])] == ["T1"]
    assert net.siblings(net.stations["M"]) == []
    assert net.parent(net.stations["M"]) is None


def test_network_rejects_a_parent_that_is_not_above_its_child() -> None:
    with pytest.raises(ValueError, match="not above"):
        network(stations=[Station("T", "township"), Station("V", "village", "T"), Station("X", "township", "V")])


def test_case_with_unknown_category_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown category 'gardening'"):
        case("gardening", "low")


def test_supervisors_of_a_missing_tier_are_replaced_by_the_nearest_above() -> None:
    stations = [Station("M", "city"), Station("T", "township", "M"), Station("V", "village", "T")]
    net = network(worker("w-crisis", "T", "crisis_intervention"), stations=stations)

    outcome = route(case("elderly_care", "critical", room="V"), net)

    assert outcome.notify_station_ids == ["M"]
