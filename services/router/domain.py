"""Routing decisions: which station and which worker a case goes to (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, get_args

from schemas.vocabulary import CATEGORIES, CERTIFICATIONS, RISK_LEVELS, TIERS

if TYPE_CHECKING:
    from services.router.policy import Policy, Rule

FilterReason = Literal["off_duty", "specialty", "certification", "capacity", "excluded"]

FILTER_REASONS: tuple[str, ...] = get_args(FilterReason)
TOP_CANDIDATES_EXPLAINED = 3


def tier_rank(tier: str) -> int:
    """Position of a tier, village = 0 up to city = 3."""
    return TIERS.index(tier)


def certification_rank(certification: str) -> int:
    """Position of a certification, none = 0 up to senior = 3."""
    return CERTIFICATIONS.index(certification)


def _require_known(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r} (expected one of: {', '.join(allowed)})")


@dataclass(frozen=True, slots=True)
class Station:
    id: str
    tier: str
    parent_id: str | None = None

    def __post_init__(self) -> None:
        _require_known(self.tier, TIERS, "tier")


@dataclass(frozen=True, slots=True)
class Worker:
    id: str
    station_id: str
    specialties: frozenset[str]
    certification: str
    capacity: int
    on_duty: bool = True
    load: int = 0
    idle_since: datetime | None = None  # None: has never held a case

    def __post_init__(self) -> None:
        _require_known(self.certification, CERTIFICATIONS, "certification")

    @property
    def load_ratio(self) -> float:
        """Weighted open cases as a share of capacity."""
        return self.load / self.capacity if self.capacity > 0 else float("inf")


@dataclass(frozen=True)
class Network:
    """A snapshot of stations and workers; treated as immutable once built."""

    stations: dict[str, Station]
    workers: list[Worker]
    _children: dict[str, list[Station]] = field(init=False, repr=False, compare=False)
    _staff: dict[str, list[Worker]] = field(init=False, repr=False, compare=False)
    _by_id: dict[str, Worker] = field(init=False, repr=False, compare=False)
    _position: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        children: dict[str, list[Station]] = {}
        for station in self.stations.values():
            if station.parent_id is None:
                continue
            parent = self.stations.get(station.parent_id)
            # A parent strictly above its child rules out cycles, so walks up always end.
            if parent is None or tier_rank(parent.tier) <= tier_rank(station.tier):
                raise ValueError(f"station {station.id}: parent {station.parent_id!r} is missing or not above it")
            children.setdefault(parent.id, []).append(station)
        staff: dict[str, list[Worker]] = {}
        for worker in self.workers:
            if worker.station_id not in self.stations:
                raise ValueError(f"worker {worker.id}: unknown station {worker.station_id!r}")
            staff.setdefault(worker.station_id, []).append(worker)
        object.__setattr__(self, "_children", {k: sorted(v, key=lambda s: s.id) for k, v in children.items()})
        object.__setattr__(self, "_staff", staff)
        object.__setattr__(self, "_by_id", {worker.id: worker for worker in self.workers})
        object.__setattr__(self, "_position", {worker.id: i for i, worker in enumerate(self.workers)})

    def update_loads_in_place(self, loads: Mapping[str, tuple[int, datetime | None]]) -> None:
        """Unsafe for a shared snapshot: replace these workers' (load, idle_since) in this very
        network, at a cost that follows the changes. Only for a snapshot its owner alone reads
        between decisions (a router's LiveNetwork); unknown workers are ignored."""
        for worker_id, (load, idle_since) in loads.items():
            worker = self._by_id.get(worker_id)
            if worker is None or (worker.load, worker.idle_since) == (load, idle_since):
                continue
            changed = replace(worker, load=load, idle_since=idle_since)
            self.workers[self._position[worker_id]] = changed
            staff = self._staff[worker.station_id]
            staff[staff.index(worker)] = changed
            self._by_id[worker_id] = changed

    def parent(self, station: Station) -> Station | None:
        """The station directly above, or None at the top."""
        return self.stations[station.parent_id] if station.parent_id is not None else None

    def siblings(self, station: Station) -> list[Station]:
        """Other stations with the same parent, by id; a top station has none."""
        if station.parent_id is None:
            return []
        return [s for s in self._children.get(station.parent_id, []) if s.id != station.id]

    def ancestor_at(self, station_id: str, tier: str) -> Station | None:
        """The station at `tier` on the way up from `station_id` (itself if already that tier)."""
        nearest = self.nearest_at_or_above(station_id, tier)
        return nearest if nearest.tier == tier else None

    def nearest_at_or_above(self, station_id: str, tier: str) -> Station:
        """The lowest station at `tier` or above on the way up; the top station if none reaches it."""
        current = self.stations[station_id]
        while tier_rank(current.tier) < tier_rank(tier) and current.parent_id is not None:
            current = self.stations[current.parent_id]
        return current

    def workers_at(self, station_id: str) -> list[Worker]:
        """The workers whose home is this station."""
        return list(self._staff.get(station_id, []))

    def worker(self, worker_id: str) -> Worker | None:
        """A worker by id, or None if there is no such worker."""
        return self._by_id.get(worker_id)

    def path_up(self, station_id: str) -> list[Station]:
        """The station and every station above it, nearest first."""
        path = [self.stations[station_id]]
        while path[-1].parent_id is not None:
            path.append(self.stations[path[-1].parent_id])
        return path

    def is_within(self, station_id: str, scope_station_id: str) -> bool:
        """Whether `station_id` is `scope_station_id` or below it."""
        return station_id in self.stations and any(s.id == scope_station_id for s in self.path_up(station_id))


@dataclass(frozen=True, slots=True)
class CaseFacts:
    case_id: str
    room_id: str
    category: str
    risk_level: str
    resident_ref: str

    def __post_init__(self) -> None:
        _require_known(self.category, CATEGORIES, "category")
        _require_known(self.risk_level, RISK_LEVELS, "risk level")


@dataclass(frozen=True, slots=True)
class Need:
    """What a case needs from its worker, resolved from the case and its rule."""

    specialty: str
    certification: str
    weight: int


@dataclass(frozen=True, slots=True)
class Candidate:
    worker: Worker
    load_ratio: float
    served_before: bool

    def explain(self) -> dict[str, Any]:
        """JSON-ready summary: worker id, load ratio, whether they served the resident before."""
        ratio = round(self.load_ratio, 4)
        return {"worker_id": self.worker.id, "load_ratio": ratio, "served_before": self.served_before}


@dataclass(frozen=True, slots=True)
class StationSearch:
    """What was found at one station: how many were filtered out and why, and who is eligible."""

    station: Station
    via: Literal["target", "lateral", "escalation"]
    filtered: dict[str, int]
    ranked: tuple[Candidate, ...]
    passed_over: tuple[tuple[str, str], ...] = ()  # (worker id, FilterReason) of the least-loaded filtered

    @property
    def considered(self) -> int:
        """How many workers of the station were looked at."""
        return sum(self.filtered.values()) + len(self.ranked)

    def explain(self, *, brief: bool = False) -> dict[str, Any]:
        """JSON-ready summary; worker ids and ratios only, no personal data. Brief: the counts alone
        (only the reasons that filtered anyone out), not who was passed over or who ranked first."""
        filtered = {reason: n for reason, n in self.filtered.items() if n or not brief}
        summary = {
            "station_id": self.station.id,
            "tier": self.station.tier,
            "via": self.via,
            "considered": self.considered,
            "filtered": filtered,
            "eligible": len(self.ranked),
        }
        if brief:
            return summary
        passed_over = [{"worker_id": worker, "reason": reason} for worker, reason in self.passed_over]
        top = [c.explain() for c in self.ranked[:TOP_CANDIDATES_EXPLAINED]]
        return summary | {"filtered_out": passed_over, "top": top}


@dataclass(frozen=True, slots=True)
class EscalationStep:
    from_tier: str
    from_station_id: str
    to_tier: str
    to_station_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Placement:
    """Result of a search upwards from one station: the best worker, or where the case waits."""

    station: Station
    ranked: tuple[Candidate, ...]
    escalations: tuple[EscalationStep, ...]
    searches: tuple[StationSearch, ...]

    @property
    def best(self) -> Candidate | None:
        """The winning candidate, or None if the case must wait at `station`."""
        return self.ranked[0] if self.ranked else None


@dataclass(frozen=True, slots=True)
class Assignment:
    worker_id: str
    station_id: str
    tier: str
    score: float  # the winner's load ratio before this case
    accept_by: datetime
    weight: int
    candidates_considered: int  # eligible workers ranked at the winning station


@dataclass(frozen=True)
class RoutingOutcome:
    rule: str
    policy_version: int
    reason: str
    target_station_id: str
    target_tier: str
    escalations: list[EscalationStep]
    assignment: Assignment | None
    queued_at: str | None
    queued_tier: str | None
    notify_station_ids: list[str]  # stations whose supervisors the rule asks to inform
    explanation: dict[str, Any]

    @property
    def station_id(self) -> str:
        """Where the case ends up: the assignee's station or where it waits."""
        return self.assignment.station_id if self.assignment else str(self.queued_at)

    @property
    def tier(self) -> str:
        """The tier of `station_id`."""
        return self.assignment.tier if self.assignment else str(self.queued_tier)


def weight(policy: Policy, risk: str) -> int:
    """How much of a worker's capacity a case of this risk level takes."""
    return policy.load_weight[risk]


def need_for(case: CaseFacts, rule: Rule, policy: Policy) -> Need:
    """The specialty, certification and weight a case needs under its rule."""
    return Need(
        specialty=rule.require.specialty or case.category,
        certification=rule.require.certification,
        weight=weight(policy, case.risk_level),
    )


def eligibility(worker: Worker, need: Need) -> str | None:
    """Why this worker cannot take the case (a FilterReason), or None if they can."""
    if not worker.on_duty:
        return "off_duty"
    if need.specialty not in worker.specialties:
        return "specialty"
    if certification_rank(worker.certification) < certification_rank(need.certification):
        return "certification"
    if worker.load + need.weight > worker.capacity:
        return "capacity"
    return None


def _rank_key(c: Candidate) -> tuple[float, bool, bool, datetime | int, str]:
    idle = c.worker.idle_since
    # Never having held a case counts as idle longest, so None sorts before any timestamp.
    return (c.load_ratio, not c.served_before, idle is not None, idle or 0, c.worker.id)


def rank_candidates(workers: Iterable[Worker], *, served_before: frozenset[str]) -> list[Candidate]:
    """Eligible workers best first: lowest load ratio, served the resident before, idle longest, id."""
    return sorted((Candidate(w, w.load_ratio, w.id in served_before) for w in workers), key=_rank_key)


def search_station(
    network: Network,
    station: Station,
    *,
    need: Need,
    via: Literal["target", "lateral", "escalation"],
    served_before: frozenset[str] = frozenset(),
    exclude_workers: frozenset[str] = frozenset(),
) -> StationSearch:
    """Filter one station's workers for a need and rank the eligible ones."""
    filtered = dict.fromkeys(FILTER_REASONS, 0)
    eligible: list[Worker] = []
    rejected: list[tuple[Worker, str]] = []
    for worker in network.workers_at(station.id):
        reason = "excluded" if worker.id in exclude_workers else eligibility(worker, need)
        if reason is None:
            eligible.append(worker)
        else:
            filtered[reason] += 1
            rejected.append((worker, reason))
    ranked = tuple(rank_candidates(eligible, served_before=served_before))
    # The workers who would have ranked first had they been eligible: why they were not.
    rejected.sort(key=lambda pair: (pair[0].load_ratio, pair[0].id))
    passed_over = tuple((worker.id, reason) for worker, reason in rejected[:TOP_CANDIDATES_EXPLAINED])
    return StationSearch(station=station, via=via, filtered=filtered, ranked=ranked, passed_over=passed_over)


def find_placement(
    *,
    network: Network,
    start: Station,
    need: Need,
    lateral: bool,
    served_before: frozenset[str] = frozenset(),
    exclude_workers: frozenset[str] = frozenset(),
) -> Placement:
    """Search `start`, then its siblings as one pool (if lateral), then each parent and its
    siblings the same way, up to the top."""
    home = start
    searches: list[StationSearch] = []
    steps: list[EscalationStep] = []
    via: Literal["target", "escalation"] = "target"
    look = partial(search_station, network, need=need, served_before=served_before, exclude_workers=exclude_workers)
    while True:
        search = look(home, via=via)
        searches.append(search)
        if search.ranked:
            return Placement(home, search.ranked, tuple(steps), tuple(searches))
        beside = [look(station, via="lateral") for station in (network.siblings(home) if lateral else [])]
        searches += beside
        # Sibling stations back each other up as one pool: the best eligible worker among all of
        # them (CONTRACT §6's ranking), not the first sibling by id that has anyone eligible.
        pooled = sorted((candidate for s in beside for candidate in s.ranked), key=_rank_key)
        if pooled:
            station = network.stations[pooled[0].worker.station_id]
            return Placement(station, tuple(pooled), tuple(steps), tuple(searches))
        parent = network.parent(home)
        if parent is None:
            return Placement(home, (), tuple(steps), tuple(searches))
        steps.append(EscalationStep(home.tier, home.id, parent.tier, parent.id, "no_capacity"))
        home, via = parent, "escalation"


def _routing_reason(case: CaseFacts, rule: Rule, target: Station) -> str:
    when = rule.when
    facts = [f"category {case.category}"] if when and when.category is not None else []
    facts += [f"risk {case.risk_level}"] if when and when.risk is not None else []
    if facts:
        reason = f"{' and '.join(facts)} matched rule {rule.name!r}"
    else:
        reason = f"category {case.category}, risk {case.risk_level} fell through to rule {rule.name!r}"
    if target.tier == rule.tier:
        return f"{reason} → {rule.tier} {target.id}"
    fallback = "the nearest above" if tier_rank(target.tier) > tier_rank(rule.tier) else "the top station"
    note = f"room {case.room_id} has no {rule.tier} station above it, so {fallback}"
    return f"{reason} → {rule.tier}; {note}: {target.tier} {target.id}"


def route_new_case(
    case: CaseFacts,
    *,
    policy: Policy,
    network: Network,
    now: datetime,
    served_before: frozenset[str] = frozenset(),
) -> RoutingOutcome:
    """Decide where a new case goes and who is offered it (CONTRACT §6)."""
    rule = policy.match(case.category, case.risk_level)
    target = network.nearest_at_or_above(case.room_id, rule.tier)
    need = need_for(case, rule, policy)
    placement = find_placement(
        network=network, start=target, need=need, lateral=policy.lateral, served_before=served_before
    )
    best = placement.best
    assignment = None
    if best is not None:
        assignment = Assignment(
            worker_id=best.worker.id,
            station_id=placement.station.id,
            tier=placement.station.tier,
            score=best.load_ratio,
            accept_by=now + policy.sla[case.risk_level].accept,
            weight=need.weight,
            candidates_considered=len(placement.ranked),
        )
    notify = list(dict.fromkeys(network.nearest_at_or_above(case.room_id, t).id for t in rule.notify_supervisors))
    return RoutingOutcome(
        rule=rule.name,
        policy_version=policy.version,
        reason=_routing_reason(case, rule, target),
        target_station_id=target.id,
        target_tier=target.tier,
        escalations=list(placement.escalations),
        assignment=assignment,
        queued_at=None if assignment else placement.station.id,
        queued_tier=None if assignment else placement.station.tier,
        notify_station_ids=notify,
        explanation=_explanation(rule, policy, need, placement),
    )


def _explanation(rule: Rule, policy: Policy, need: Need, placement: Placement) -> dict[str, Any]:
    return {"rule": rule.name, "policy_version": policy.version, **explain_placement(need, placement)}


def explain_placement(need: Need, placement: Placement) -> dict[str, Any]:
    """Why a search ended where it did: the need, every station looked at, and the winner's score."""
    best = placement.best
    return {
        "need": {"specialty": need.specialty, "certification": need.certification, "weight": need.weight},
        # Every worker looked at, filtered out or not; the event's `candidates_considered` counts the
        # eligible ones the winner was ranked among.
        "workers_looked_at": sum(search.considered for search in placement.searches),
        # A sibling searched beside the one placed at is summed up by its counts: a pooled search
        # looks at every sibling, and naming each one's workers would multiply the event's size.
        "stations": [
            search.explain(brief=search.via == "lateral" and search.station != placement.station)
            for search in placement.searches
        ],
        "outcome": (
            {"assigned": best.worker.id, "station_id": placement.station.id, "score": round(best.load_ratio, 4)}
            if best
            else {"queued_at": placement.station.id}
        ),
    }
