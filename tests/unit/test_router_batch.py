"""The pieces of batch routing that need no database: a network snapshot updated with new loads,
and telling a case event's type from its header without parsing it."""

from datetime import UTC, datetime
from types import SimpleNamespace

from services.router.domain import CaseFacts, Network, Station, Worker, find_placement
from services.router.handlers import decision_events
from services.router.lifecycle import Context, admit
from services.router.policy import default_policy
from services.shared.consuming import event_type_header

NOW = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
STATIONS = {
    s.id: s
    for s in (
        Station("M", "city"),
        Station("C", "county", "M"),
        Station("T1", "township", "C"),
        Station("T2", "township", "C"),
        Station("V11", "village", "T1"),
    )
}


def worker(id: str, station: str, *, load: int = 0, capacity: int = 10) -> Worker:
    return Worker(id, station, frozenset({"elderly_care"}), "intermediate", capacity, True, load, None)


def test_updating_loads_in_place_changes_only_the_named_workers_everywhere_they_are_looked_up() -> None:
    snapshot = Network(STATIONS, [worker("a", "T1"), worker("b", "T1"), worker("c", "T2")])
    untouched = snapshot.worker("c")

    snapshot.update_loads_in_place({"a": (4, NOW), "ghost": (1, None)})

    changed = snapshot.worker("a")
    assert changed is not None and (changed.load, changed.idle_since) == (4, NOW)
    assert [(w.id, w.load) for w in snapshot.workers_at("T1")] == [("a", 4), ("b", 0)]
    assert [(w.id, w.load) for w in snapshot.workers] == [("a", 4), ("b", 0), ("c", 0)]
    assert snapshot.worker("c") is untouched


def test_a_load_added_in_the_snapshot_moves_the_next_case_of_the_batch_to_the_less_loaded_worker() -> None:
    snapshot = Network(STATIONS, [worker("a", "T1"), worker("b", "T1", load=1)])
    policy = default_policy()
    facts = CaseFacts("case-1", "V11", "elderly_care", "medium", "r-1")

    first = admit(facts, Context(policy, snapshot, NOW), received_at=NOW)
    assert first.offer is not None and first.offer.worker_id == "a"
    snapshot.update_loads_in_place({"a": (first.offer.weight * 2, None)})

    placement = find_placement(
        network=snapshot, start=STATIONS["T1"], need=first.state.need, lateral=True, served_before=frozenset()
    )
    assert placement.best is not None and placement.best.worker.id == "b"


def test_the_event_type_header_is_read_without_parsing_the_body() -> None:
    with_header = SimpleNamespace(headers=[("ce_id", b"1"), ("ce_type", b"caselink.case.assigned.v1")], value=b"\xff")
    without = SimpleNamespace(headers=[], value=b"{}")

    assert event_type_header(with_header) == "caselink.case.assigned.v1"
    assert event_type_header(without) is None
    assert event_type_header(SimpleNamespace(headers=None)) is None


def test_a_case_that_moves_up_or_waits_tells_by_when_it_must_be_resolved() -> None:
    facts = CaseFacts("case-1", "V11", "elderly_care", "medium", "r-1")
    policy = default_policy()
    up = admit(facts, Context(policy, Network(STATIONS, [worker("c", "C")]), NOW), received_at=NOW)
    nobody = admit(facts, Context(policy, Network(STATIONS, []), NOW), received_at=NOW)
    resolve_by = NOW + policy.sla["medium"].resolve

    moved_up = {name: data.get("resolve_by") for name, data in decision_events(up)}
    waiting = {name: data.get("resolve_by") for name, data in decision_events(nobody)}

    assert moved_up == {"routed": resolve_by, "escalated": resolve_by, "assigned": None}
    assert waiting == {"routed": resolve_by, "escalated": resolve_by, "queued": resolve_by}
