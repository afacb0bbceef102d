"""Dry run of a draft routing policy: route the same cases through it and the current one, and compare (pure).

Nothing here emits events or touches a database; the command line loads the network and the cases.
The report carries counts, station ids, worker load ratios and case ids only, never resident data.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from schemas.vocabulary import CATEGORIES, TIERS
from services.router.domain import CaseFacts, Network, Station, Worker, route_new_case
from services.router.policy import Policy
from services.shared.network import NetworkFile

# Share of new cases per risk level in a sample: mostly routine, a few crises.
RISK_MIX: dict[str, float] = {"low": 0.40, "medium": 0.35, "high": 0.18, "critical": 0.07}
TOP_STATIONS = 10
MOVED_EXAMPLES = 5


@dataclass(frozen=True)
class LoadSummary:
    """Worker load after a run, over the workers with a capacity."""

    workers: int
    mean_ratio: float
    max_ratio: float
    at_capacity: int


@dataclass(frozen=True)
class PolicyRun:
    """Where one policy sent the cases: final tiers, rules, stations, and the load it left behind."""

    policy_version: int
    by_tier: dict[str, int]
    assigned: int
    queued: int
    escalations: int  # escalation steps over all cases
    escalated_cases: int
    by_rule: dict[str, int]
    by_station: dict[str, int]
    load: LoadSummary


@dataclass(frozen=True)
class StationChange:
    """Cases ending at one station under each policy."""

    station_id: str
    tier: str
    current: int
    draft: int

    @property
    def change(self) -> int:
        """How many more (or, negative, fewer) cases the draft sends here."""
        return self.draft - self.current


@dataclass(frozen=True)
class SimulationReport:
    """The comparison of a draft policy with the current one over the same cases."""

    cases: int
    skipped: int  # cases whose room is not in the network
    initial_load: LoadSummary
    current: PolicyRun
    draft: PolicyRun
    stations: list[StationChange]  # largest absolute change first, at most TOP_STATIONS
    moved: int  # cases whose final station differs between the policies
    moved_examples: list[str]  # case ids only

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of the report."""
        data = asdict(self)
        data["stations"] = [{**asdict(s), "change": s.change} for s in self.stations]
        return data


def network_from_file(network_file: NetworkFile) -> Network:
    """The router's view of a network file: its stations and workers, none of them holding a case yet."""
    return Network(
        stations={s.id: Station(s.id, s.tier, s.parent) for s in network_file.stations},
        workers=[
            Worker(
                id=user.id,
                station_id=user.station,
                specialties=frozenset(user.specialties),
                certification=user.certification,
                capacity=user.capacity,
                on_duty=user.on_duty,
            )
            for user in network_file.users
            if user.role == "worker" and user.station is not None
        ],
    )


def sample_cases(network: Network, *, count: int, seed: int) -> list[CaseFacts]:
    """A deterministic random sample of new cases submitted from the network's village rooms (any station if none)."""
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    rooms = sorted(s.id for s in network.stations.values() if s.tier == "village") or sorted(network.stations)
    if count and not rooms:
        raise ValueError("the network has no stations to submit cases from")
    rng = random.Random(seed)
    risks, shares = list(RISK_MIX), list(RISK_MIX.values())
    return [
        CaseFacts(
            case_id=f"sim-{number:06d}",
            room_id=rng.choice(rooms),
            category=rng.choice(CATEGORIES),
            risk_level=rng.choices(risks, shares)[0],
            resident_ref=f"{rng.getrandbits(128):032x}",
        )
        for number in range(1, count + 1)
    ]


def simulate(
    *, network: Network, cases: Sequence[CaseFacts], current: Policy, draft: Policy, now: datetime
) -> SimulationReport:
    """Route the cases through both policies, each from the same starting load, and compare the results."""
    routable = [case for case in cases if case.room_id in network.stations]
    current_run, current_stations = _run(current, network, routable, now)
    draft_run, draft_stations = _run(draft, network, routable, now)
    moved = [
        case.case_id
        for case, before, after in zip(routable, current_stations, draft_stations, strict=True)
        if before != after
    ]
    return SimulationReport(
        cases=len(routable),
        skipped=len(cases) - len(routable),
        initial_load=_load_summary(network.workers),
        current=current_run,
        draft=draft_run,
        stations=_station_changes(network, current_run.by_station, draft_run.by_station),
        moved=len(moved),
        moved_examples=moved[:MOVED_EXAMPLES],
    )


@dataclass(frozen=True)
class _LoadedNetwork(Network):
    """The snapshot plus the load the simulated cases have added so far.

    route_new_case reads workers only through `workers_at`, so overriding it lets every case see the
    load of the cases before it without rebuilding the whole network per case (cases x workers).
    """

    added: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def workers_at(self, station_id: str) -> list[Worker]:
        """The station's workers with the simulated load added."""
        return [
            replace(w, load=w.load + self.added[w.id]) if w.id in self.added else w
            for w in super().workers_at(station_id)
        ]


def _run(policy: Policy, network: Network, cases: Sequence[CaseFacts], now: datetime) -> tuple[PolicyRun, list[str]]:
    live = _LoadedNetwork(stations=network.stations, workers=network.workers)
    tiers: Counter[str] = Counter()
    rules: Counter[str] = Counter()
    stations: list[str] = []
    assigned = escalations = escalated = 0
    for case in cases:
        outcome = route_new_case(case, policy=policy, network=live, now=now)
        if outcome.assignment is not None:
            assigned += 1
            worker_id = outcome.assignment.worker_id
            live.added[worker_id] = live.added.get(worker_id, 0) + outcome.assignment.weight
        tiers[outcome.tier] += 1
        rules[outcome.rule] += 1
        escalations += len(outcome.escalations)
        escalated += bool(outcome.escalations)
        stations.append(outcome.station_id)
    workers = [replace(w, load=w.load + live.added[w.id]) if w.id in live.added else w for w in network.workers]
    run = PolicyRun(
        policy_version=policy.version,
        by_tier={tier: tiers[tier] for tier in TIERS},
        assigned=assigned,
        queued=len(cases) - assigned,
        escalations=escalations,
        escalated_cases=escalated,
        by_rule={rule.name: rules[rule.name] for rule in policy.rules},
        by_station=dict(sorted(Counter(stations).items())),
        load=_load_summary(workers),
    )
    return run, stations


def _load_summary(workers: Sequence[Worker]) -> LoadSummary:
    # A worker without capacity has an infinite ratio; they cannot take cases, so they are left out.
    ratios = [w.load_ratio for w in workers if w.capacity > 0]
    return LoadSummary(
        workers=len(ratios),
        mean_ratio=round(sum(ratios) / len(ratios), 4) if ratios else 0.0,
        max_ratio=round(max(ratios, default=0.0), 4),
        at_capacity=sum(ratio >= 1 for ratio in ratios),
    )


def _station_changes(network: Network, current: dict[str, int], draft: dict[str, int]) -> list[StationChange]:
    changes = [
        StationChange(sid, network.stations[sid].tier, current.get(sid, 0), draft.get(sid, 0))
        for sid in sorted(current.keys() | draft.keys())
    ]
    changes = [c for c in changes if c.change]
    changes.sort(key=lambda c: (-abs(c.change), c.station_id))
    return changes[:TOP_STATIONS]


def format_report(report: SimulationReport) -> str:
    """The report as a human-readable table: current policy, draft policy, and the change."""
    cur, new = report.current, report.draft
    lines = [f"{report.cases} cases routed through both policies; no events emitted, nothing written"]
    if report.skipped:
        lines.append(f"{report.skipped} cases skipped: their room is not in the network")
    lines += ["", _row("", f"current (v{cur.policy_version})", f"draft (v{new.policy_version})", "change")]
    lines.append("final tier")
    lines += [_count_row(f"  {tier}", cur.by_tier[tier], new.by_tier[tier]) for tier in TIERS]
    lines.append(_count_row("assigned", cur.assigned, new.assigned))
    lines.append(_count_row("queued", cur.queued, new.queued))
    lines.append(_count_row("escalation steps", cur.escalations, new.escalations))
    lines.append(_count_row("cases escalated", cur.escalated_cases, new.escalated_cases))
    lines.append("rule")
    for name in dict.fromkeys([*cur.by_rule, *new.by_rule]):
        lines.append(_count_row(f"  {name}", cur.by_rule.get(name), new.by_rule.get(name)))
    start = report.initial_load
    lines.append(
        f"worker load after the run (before: mean {start.mean_ratio:.2f}, max {start.max_ratio:.2f}, "
        f"{start.at_capacity} of {start.workers} full)"
    )
    lines.append(_ratio_row("  mean load ratio", cur.load.mean_ratio, new.load.mean_ratio))
    lines.append(_ratio_row("  max load ratio", cur.load.max_ratio, new.load.max_ratio))
    lines.append(_count_row("  workers at capacity", cur.load.at_capacity, new.load.at_capacity))
    lines.append("")
    if report.stations:
        lines.append(f"stations with the largest change (top {TOP_STATIONS})")
        lines.append(f"  {'station':<20} {'tier':<9} {'current':>8} {'draft':>8} {'change':>8}")
        for s in report.stations:
            lines.append(f"  {s.station_id:<20} {s.tier:<9} {s.current:>8} {s.draft:>8} {_signed(s.change):>8}")
    else:
        lines.append("no station receives a different number of cases")
    lines.append("")
    if report.moved:
        examples = ", ".join(report.moved_examples)
        lines.append(
            f"{report.moved} of {report.cases} cases end at a different station under the draft, e.g. {examples}"
        )
    else:
        lines.append("every case ends at the same station under both policies")
    return "\n".join(lines)


def _row(label: str, current: str, draft: str, change: str) -> str:
    return f"{label:<28} {current:>14} {draft:>14} {change:>8}"


def _count_row(label: str, current: int | None, draft: int | None) -> str:
    change = _signed(draft - current) if current is not None and draft is not None else ""
    return _row(label, "-" if current is None else str(current), "-" if draft is None else str(draft), change)


def _ratio_row(label: str, current: float, draft: float) -> str:
    change = round(draft - current, 2)
    return _row(label, f"{current:.2f}", f"{draft:.2f}", f"{change:+.2f}" if change else "0")


def _signed(number: int) -> str:
    return f"{number:+d}" if number else "0"
