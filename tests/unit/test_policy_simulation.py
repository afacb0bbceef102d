"""Dry runs of a draft routing policy against the current one over small station networks (no I/O)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

from services.router.domain import CaseFacts, Network, Station, Worker
from services.router.policy import Policy, Rule, default_policy
from services.router.simulation import SimulationReport, format_report, network_from_file, sample_cases, simulate
from services.shared.network import parse_network

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


def worker(id: str, station: str, *specialties: str, capacity: int = 10, load: int = 0) -> Worker:
    return Worker(id, station, frozenset(specialties), "none", capacity, True, load, None)


def cases(count: int, *, category: str = "elderly_care", risk: str = "low", room: str = "V11") -> list[CaseFacts]:
    return [CaseFacts(f"case-{n}", room, category, risk, resident_ref=f"resident-{n}") for n in range(count)]


def with_rule_tier(policy: Policy, name: str, tier: str) -> Policy:
    rules = [rule.model_copy(update={"tier": tier}) if rule.name == name else rule for rule in policy.rules]
    return policy.model_copy(update={"rules": rules, "version": policy.version + 1})


def run(
    net: Network, facts: list[CaseFacts], draft: Policy | None = None, current: Policy | None = None
) -> SimulationReport:
    current = current or default_policy()
    return simulate(network=net, cases=facts, current=current, draft=draft or current, now=NOW)


def test_draft_sending_routine_cases_to_township_moves_them_off_village_rooms() -> None:
    net = network(worker("w-room", "V11", "elderly_care"), worker("w-town", "T1", "elderly_care"))
    draft = with_rule_tier(default_policy(), "routine-in-village", "township")

    report = run(net, cases(4), draft)

    assert report.current.by_tier == {"village": 4, "township": 0, "county": 0, "city": 0}
    assert report.draft.by_tier == {"village": 0, "township": 4, "county": 0, "city": 0}
    assert report.current.by_rule["routine-in-village"] == report.draft.by_rule["routine-in-village"] == 4
    assert report.moved == 4
    assert report.moved_examples == ["case-0", "case-1", "case-2", "case-3"]
    assert [(s.station_id, s.current, s.draft, s.change) for s in report.stations] == [
        ("T1", 0, 4, 4),
        ("V11", 4, 0, -4),
    ]


def test_simulation_applies_load_so_later_cases_overflow_to_siblings() -> None:
    net = network(worker("w-11", "V11", "elderly_care", capacity=2), worker("w-12", "V12", "elderly_care"))

    report = run(net, cases(5))

    assert report.current.by_station == {"V11": 2, "V12": 3}
    assert report.current.assigned == 5
    assert report.current.load.at_capacity == 1
    assert report.current.load.max_ratio == 1.0
    assert report.current.load.mean_ratio == (1.0 + 0.3) / 2


def test_each_policy_starts_from_the_same_initial_load() -> None:
    net = network(worker("w-11", "V11", "elderly_care", capacity=2, load=1), worker("w-12", "V12", "elderly_care"))

    report = run(net, cases(3), draft=default_policy().model_copy(update={"version": 2}))

    assert report.current.by_station == report.draft.by_station == {"V11": 1, "V12": 2}
    assert report.initial_load.mean_ratio == 0.5 / 2
    assert report.moved == 0
    assert report.stations == []


def test_load_weight_of_the_risk_level_fills_capacity() -> None:
    net = network(worker("w-town", "T1", "elderly_care", capacity=4), worker("w-other", "T2", "elderly_care"))

    heavier = {"low": 1, "medium": 2, "high": 2, "critical": 3}

    report = run(net, cases(3, risk="medium"), draft=default_policy().model_copy(update={"load_weight": heavier}))

    assert report.current.by_station == {"T1": 3}
    assert report.draft.by_station == {"T1": 2, "T2": 1}
    assert report.moved_examples == ["case-2"]


def test_cases_nobody_can_take_are_queued_at_the_top_after_each_escalation() -> None:
    report = run(network(), cases(2))

    assert report.current.queued == 2
    assert report.current.assigned == 0
    assert report.current.by_tier["city"] == 2
    assert report.current.escalations == 2 * 3  # V11 → T1 → C → M
    assert report.current.escalated_cases == 2


def test_cases_from_rooms_outside_the_network_are_skipped_and_counted() -> None:
    net = network(worker("w-room", "V11", "elderly_care"))

    report = run(net, cases(2) + cases(1, room="V-elsewhere"))

    assert (report.cases, report.skipped) == (2, 1)
    assert "1 cases skipped" in format_report(report)


def test_rules_only_one_policy_has_are_shown_as_missing_in_the_other() -> None:
    policy = default_policy()
    rules = [Rule(name="everything-to-township", tier="township")]
    draft = policy.model_copy(update={"rules": rules})

    report = run(network(worker("w-town", "T1", "elderly_care")), cases(2), draft)
    text = format_report(report)

    assert report.draft.by_rule == {"everything-to-township": 2}
    assert "routine-in-village" in text
    routine = next(line for line in text.splitlines() if "routine-in-village" in line)
    assert routine.split()[1:] == ["2", "-"]
    assert "everything-to-township" in text


def test_report_never_contains_resident_refs() -> None:
    net = network(worker("w-room", "V11", "elderly_care"), worker("w-town", "T1", "elderly_care"))
    facts = cases(6)
    draft = with_rule_tier(default_policy(), "routine-in-village", "township")

    report = run(net, facts, draft)
    outputs = [format_report(report), json.dumps(report.to_dict())]

    for output in outputs:
        for case in facts:
            assert case.resident_ref not in output
    assert "case-0" in outputs[0]


def test_report_is_json_ready_with_the_change_of_each_station() -> None:
    net = network(worker("w-room", "V11", "elderly_care"), worker("w-town", "T1", "elderly_care"))
    report = run(net, cases(2), with_rule_tier(default_policy(), "routine-in-village", "township"))

    data = json.loads(json.dumps(report.to_dict()))

    assert data["current"]["by_tier"]["village"] == 2
    assert data["draft"]["policy_version"] == 2
    assert data["stations"][0] == {"station_id": "T1", "tier": "township", "current": 0, "draft": 2, "change": 2}


def test_sample_is_deterministic_for_a_seed() -> None:
    net = network()

    first = sample_cases(net, count=50, seed=7)

    assert first == sample_cases(net, count=50, seed=7)
    assert first != sample_cases(net, count=50, seed=8)
    assert [c.case_id for c in first[:2]] == ["sim-000001", "sim-000002"]
    assert {c.room_id for c in first} <= {"V11", "V12", "V21"}
    assert len({c.resident_ref for c in first}) == 50


def test_sample_is_mostly_routine_with_a_few_crises() -> None:
    risks = Counter(c.risk_level for c in sample_cases(network(), count=4000, seed=1))

    assert 0.35 < risks["low"] / 4000 < 0.45
    assert 0.30 < risks["medium"] / 4000 < 0.40
    assert 0.04 < risks["critical"] / 4000 < 0.10
    assert risks["low"] > risks["medium"] > risks["high"] > risks["critical"]


def test_sample_comes_from_any_station_when_there_are_no_village_rooms() -> None:
    stations = [Station("C", "county"), Station("T1", "township", "C")]

    sample = sample_cases(network(stations=stations), count=20, seed=1)

    assert {c.room_id for c in sample} == {"C", "T1"}


def test_network_file_becomes_the_routers_view_with_workers_only() -> None:
    network_file = parse_network(
        """\
stations:
  - {id: "C-1", name: "county hub", tier: county}
  - {id: "T-1", name: "township station", tier: township, parent: "C-1"}
users:
  - {id: "w-1", name: "worker", station: "T-1", role: worker, specialties: [elderly_care], capacity: 12}
  - {id: "w-2", name: "resting", station: "T-1", role: worker, specialties: [livelihood], capacity: 5, on_duty: false}
  - {id: "s-1", name: "supervisor", station: "C-1", role: supervisor}
  - {id: "sys", name: "portal", role: system}
"""
    )

    net = network_from_file(network_file)

    assert net.stations["T-1"] == Station("T-1", "township", "C-1")
    assert net.workers == [
        Worker("w-1", "T-1", frozenset({"elderly_care"}), "none", 12, True, 0, None),
        Worker("w-2", "T-1", frozenset({"livelihood"}), "none", 5, False, 0, None),
    ]
