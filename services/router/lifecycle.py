"""A case's life after routing: offers and their deadlines, fall-through to the next worker or the
next tier, the resolve SLA, queued cases meeting new capacity, and people's actions (pure, no I/O).

Every function takes the case's `CaseState` and a snapshot of the network and returns a
`Decision`: the new state, the events to emit in order, whose load to release and whose capacity
to reserve. The handler applies it in one transaction; if the reservation fails because another
router took the capacity meanwhile, it decides again on a fresh snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from services.router.domain import (
    Assignment,
    CaseFacts,
    Need,
    Network,
    Placement,
    Station,
    certification_rank,
    explain_placement,
    find_placement,
    need_for,
    route_new_case,
)

if TYPE_CHECKING:
    from services.router.policy import Policy

# The assignee holds `need.weight` of their capacity while the case is in one of these.
HOLDING = frozenset({"offered", "accepted", "in_progress"})
FINISHED = frozenset({"resolved", "closed"})
WARNING_SHARE = 0.8  # sla_warning fires when this share of a deadline's window has passed
# The part of a new case's explanation its `routed` event carries (the rest goes with the search's outcome).
ROUTING_EXPLAINED = ("rule", "policy_version", "need")

OfferEnd = Literal["declined", "offer_expired"]


class CommandRefused(Exception):
    """A person's action that cannot be applied; `outcome` is conflict, forbidden or invalid."""

    def __init__(self, outcome: Literal["conflict", "forbidden", "invalid"], message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


@dataclass(frozen=True, slots=True)
class Actor:
    """The user behind a command, as the directory knows them."""

    id: str
    role: str
    station_id: str | None


@dataclass(frozen=True, slots=True)
class CaseState:
    """Where a case is, who holds it, and which of its deadlines are still to fire."""

    facts: CaseFacts
    status: str
    tier: str
    station_id: str
    rule: str
    need: Need
    target_station_id: str  # where its rule sent it; a refer-back without a station returns below here
    floor_station_id: str  # the lowest station it may still be placed at (raised by escalations)
    resolve_by: datetime
    resolve_warn_at: datetime | None  # None once the warning fired
    resolve_breached: bool = False
    assignee_id: str | None = None
    accept_by: datetime | None = None
    accept_warn_at: datetime | None = None  # None once the warning fired, or with no offer out
    # Offers made per tier over the case's life: a tier that let offers lapse before, then gets
    # the case back from the queue, does not get a fresh allowance. A refer-back starts afresh.
    offers_made: dict[str, int] = field(default_factory=dict)
    passed_over: frozenset[str] = frozenset()  # workers who declined it or let an offer lapse

    @property
    def offers_at_tier(self) -> int:
        """Offers made so far at the tier the case is at."""
        return self.offers_made.get(self.tier, 0)

    @property
    def next_due_at(self) -> datetime | None:
        """When the sweep must look at this case next, or None if no deadline is pending."""
        return self.next_firing(timedelta(0))

    def next_firing(self, grace: timedelta) -> datetime | None:
        """When `fire_due` with this grace fires something next: a warning at its time, a deadline
        `grace` after it; None if nothing is pending."""
        due: list[datetime | None] = []
        if self.status == "offered":
            due += [self.accept_warn_at, self.accept_by and self.accept_by + grace]
        if self.status not in FINISHED:
            due += [self.resolve_warn_at, None if self.resolve_breached else self.resolve_by + grace]
        return min((moment for moment in due if moment is not None), default=None)


@dataclass(frozen=True, slots=True)
class Emit:
    """One event to emit; status comes from the event's name, sequence from the case head."""

    name: str
    tier: str
    station_id: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    state: CaseState
    events: tuple[Emit, ...]
    release: str | None = None  # this worker's load drops by the case's weight
    offer: Assignment | None = None  # reserve this worker's capacity and record the offer
    ended_offer: tuple[str, str] | None = None  # (worker id, accepted|declined|expired|withdrawn)


@dataclass(frozen=True, slots=True)
class Context:
    """What every decision may consult besides the case itself."""

    policy: Policy
    network: Network
    now: datetime
    served_before: frozenset[str] = frozenset()


def _warn_at(start: datetime, deadline: datetime) -> datetime:
    return start + (deadline - start) * WARNING_SHARE


def admit(case: CaseFacts, ctx: Context, *, received_at: datetime) -> Decision:
    """Route a newly received case: routed → escalated… → assigned | queued."""
    outcome = route_new_case(case, policy=ctx.policy, network=ctx.network, now=ctx.now, served_before=ctx.served_before)
    rule = ctx.policy.match(case.category, case.risk_level)
    resolve_by = received_at + ctx.policy.sla[case.risk_level].resolve
    state = CaseState(
        facts=case,
        status="routed",
        tier=outcome.target_tier,
        station_id=outcome.target_station_id,
        rule=rule.name,
        need=need_for(case, rule, ctx.policy),
        target_station_id=outcome.target_station_id,
        floor_station_id=outcome.target_station_id,
        resolve_by=resolve_by,
        resolve_warn_at=_warn_at(received_at, resolve_by),
    )
    routed = Emit(
        "routed",
        outcome.target_tier,
        outcome.target_station_id,
        {
            "rule": outcome.rule,
            "reason": outcome.reason,
            "policy_version": outcome.policy_version,
            "resolve_by": resolve_by,
            "notify_stations": outcome.notify_station_ids or None,
            # Why this tier and what the case needs; the search for a worker is explained once, by
            # the event that reports its outcome (assigned or queued), not twice per case.
            "explanation": {key: outcome.explanation[key] for key in ROUTING_EXPLAINED},
        },
    )
    escalations = tuple(
        Emit(
            "escalated",
            step.to_tier,
            step.to_station_id,
            {"from_tier": step.from_tier, "from_station_id": step.from_station_id, "reason": step.reason},
        )
        for step in outcome.escalations
    )
    if outcome.assignment is None:
        station = ctx.network.stations[outcome.station_id]
        queued = _queue(state, station)
        return Decision(queued, (routed, *escalations, _queued_event(station, outcome.explanation)))
    offered, assigned = offer_to(state, outcome.assignment, ctx, explanation=outcome.explanation)
    return Decision(offered, (routed, *escalations, assigned), offer=outcome.assignment)


def moved(name: str, source: Station, to: Station, *, reason: str) -> Emit:
    """An `escalated` or `referred_back` event from one station to another."""
    return Emit(name, to.tier, to.id, {"from_tier": source.tier, "from_station_id": source.id, "reason": reason})


def _queue(state: CaseState, station: Station) -> CaseState:
    return replace(
        state,
        status="queued",
        tier=station.tier,
        station_id=station.id,
        assignee_id=None,
        accept_by=None,
        accept_warn_at=None,
    )


def _queued_event(station: Station, explanation: dict[str, Any] | None = None) -> Emit:
    fields: dict[str, Any] = {"waiting_at": station.id}
    return Emit("queued", station.tier, station.id, fields | ({"explanation": explanation} if explanation else {}))


def offer_to(
    state: CaseState, assignment: Assignment, ctx: Context, *, explanation: dict[str, Any]
) -> tuple[CaseState, Emit]:
    """The case offered to the assignment's worker, and its `assigned` event."""
    offered = replace(
        state,
        status="offered",
        tier=assignment.tier,
        station_id=assignment.station_id,
        assignee_id=assignment.worker_id,
        accept_by=assignment.accept_by,
        accept_warn_at=_warn_at(ctx.now, assignment.accept_by),
        offers_made={**state.offers_made, assignment.tier: state.offers_made.get(assignment.tier, 0) + 1},
    )
    event = Emit(
        "assigned",
        assignment.tier,
        assignment.station_id,
        {
            "worker_id": assignment.worker_id,
            "accept_by": assignment.accept_by,
            "candidates_considered": assignment.candidates_considered,
            "score": assignment.score,
            "weight": assignment.weight,
            "explanation": _under_rule(state, ctx, explanation),
        },
    )
    return offered, event


def _under_rule(state: CaseState, ctx: Context, explanation: dict[str, Any]) -> dict[str, Any]:
    """A search's explanation headed by the case's rule and the policy version it ran under."""
    return {"rule": state.rule, "policy_version": ctx.policy.version, **explanation}


def place(state: CaseState, start: Station, ctx: Context) -> tuple[CaseState, tuple[Emit, ...], Assignment | None]:
    """Search from `start` (lateral, then upwards) and offer the case or queue it at the top."""
    placement = find_placement(
        network=ctx.network,
        start=start,
        need=state.need,
        lateral=ctx.policy.lateral,
        served_before=ctx.served_before,
        exclude_workers=state.passed_over,
    )
    explanation = explain_placement(state.need, placement)
    # As for a new case, the search is explained once, by the assigned or queued event that ends it.
    escalations = tuple(
        Emit(
            "escalated",
            step.to_tier,
            step.to_station_id,
            {"from_tier": step.from_tier, "from_station_id": step.from_station_id, "reason": step.reason},
        )
        for step in placement.escalations
    )
    assignment = _assignment(placement, state, ctx)
    if assignment is None:
        queued = _queued_event(placement.station, _under_rule(state, ctx, explanation))
        return _queue(state, placement.station), (*escalations, queued), None
    offered, assigned = offer_to(state, assignment, ctx, explanation=explanation)
    return offered, (*escalations, assigned), assignment


def _assignment(placement: Placement, state: CaseState, ctx: Context) -> Assignment | None:
    best = placement.best
    if best is None:
        return None
    return Assignment(
        worker_id=best.worker.id,
        station_id=placement.station.id,
        tier=placement.station.tier,
        score=best.load_ratio,
        accept_by=ctx.now + ctx.policy.sla[state.facts.risk_level].accept,
        weight=state.need.weight,
        candidates_considered=len(placement.ranked),
    )


def offer_ended(state: CaseState, ctx: Context, *, how: OfferEnd, reason: str | None = None) -> Decision:
    """The offered worker declined or let the offer lapse: next candidate at this tier, or up a tier
    once `offers_per_tier` offers were made here (CONTRACT §6)."""
    worker = state.assignee_id
    assert worker is not None and state.status == "offered", "only an outstanding offer can end"
    fields: dict[str, Any] = {"worker_id": worker} | ({"reason": reason} if reason is not None else {})
    ended = Emit(how, state.tier, state.station_id, fields)
    waiting = replace(
        state,
        status="routed",
        assignee_id=None,
        accept_by=None,
        accept_warn_at=None,
        passed_over=state.passed_over | {worker},
    )
    here = ctx.network.stations[state.station_id]
    record = (worker, "declined" if how == "declined" else "expired")
    if state.offers_at_tier < ctx.policy.offers_per_tier:
        placed, events, offer = place(waiting, here, ctx)
        return Decision(placed, (ended, *events), release=worker, offer=offer, ended_offer=record)
    parent = ctx.network.parent(here)
    if parent is None:  # offers used up at the top: wait there for someone new or a supervisor
        return Decision(_queue(waiting, here), (ended, _queued_event(here)), release=worker, ended_offer=record)
    up = moved("escalated", here, parent, reason=how)
    raised = replace(waiting, floor_station_id=parent.id, tier=parent.tier, station_id=parent.id)
    placed, events, offer = place(raised, parent, ctx)
    return Decision(placed, (ended, up, *events), release=worker, offer=offer, ended_offer=record)


def offer_cannot_stand(state: CaseState, ctx: Context) -> str | None:
    """Why the worker holding the case's offer may no longer take it, as the directory now stands
    ("went off duty", to follow "the worker" or "worker w-…"), or None while the offer stands.
    CONTRACT §6: never to a worker who is off duty, over capacity or without the certification
    the case needs; the router offers a case to the workers of the station it is at.

    The specialty is not asked again: a supervisor may assign a case outside a worker's specialty."""
    if state.status != "offered" or state.assignee_id is None:
        return None
    worker = ctx.network.worker(state.assignee_id)
    if worker is None:
        return "is no longer a worker here"
    if not worker.on_duty:
        return "went off duty"
    if worker.station_id != state.station_id:
        return f"moved to {worker.station_id}"
    if certification_rank(worker.certification) < certification_rank(state.need.certification):
        return f"is certified {worker.certification}; the case needs {state.need.certification}"
    if worker.load > worker.capacity:  # the offer's own weight is in the load already
        return f"has {worker.load} in use of a capacity lowered to {worker.capacity}"
    return None


def withdraw_unavailable_offer(state: CaseState, ctx: Context) -> Decision | None:
    """End an offer that cannot stand (`offer_cannot_stand`): `offer_expired` with the reason
    ("the worker went off duty"), then on as for a lapsed offer. None if the offer still stands."""
    why = offer_cannot_stand(state, ctx)
    if why is None or state.assignee_id is None:
        return None
    decision = offer_ended(state, ctx, how="offer_expired", reason=f"the worker {why}")
    return replace(decision, ended_offer=(state.assignee_id, "withdrawn"))


def withdrawn(state: CaseState) -> tuple[CaseState, str | None, tuple[str, str] | None]:
    """Take the case from whoever holds it: their load is released, an open offer is withdrawn."""
    holder = state.assignee_id if state.status in HOLDING else None
    ended = (holder, "withdrawn") if holder is not None and state.status == "offered" else None
    free = replace(state, assignee_id=None, accept_by=None, accept_warn_at=None)
    return free, holder, ended


def hand_back_from_non_worker(state: CaseState, ctx: Context) -> Decision | None:
    """A case accepted by someone who is no longer a worker (made a supervisor, say) cannot be
    worked by them: it is placed again from its station, as a new offer, escalation or queue,
    whose explanation says whose it was and why. None if its holder is still a worker."""
    free, holder, _ = withdrawn(state)
    if state.status == "offered" or holder is None or ctx.network.worker(holder) is not None:
        return None
    placed, events, offer = place(free, ctx.network.stations[state.station_id], ctx)
    *before, last = events
    handed_back = {"from_worker_id": holder, "reason": "the worker is no longer a worker here"}
    explanation = {**last.fields.get("explanation", {}), "handed_back": handed_back}
    explained = replace(last, fields=last.fields | {"explanation": explanation})
    return Decision(placed, (*before, explained), release=holder, offer=offer)


def fire_due(state: CaseState, ctx: Context, *, grace: timedelta = timedelta(0)) -> Decision | None:
    """Fire every deadline of the case that has passed, each exactly once; None if none has.

    A warning fires at its time; a deadline counts as passed `grace` after it, as an accept or a
    resolve the person sent in time may still be on its way to the router (the router judges an
    action by when it was sent: `actions.decide_command`)."""
    now = ctx.now
    lapsed = ctx.now - grace
    events: list[Emit] = []
    decision: Decision | None = None
    current = state
    if current.status == "offered" and current.accept_warn_at is not None and now >= current.accept_warn_at:
        events.append(_sla("sla_warning", current, current.accept_by, "accept"))
        current = replace(current, accept_warn_at=None)
    if current.status == "offered" and current.accept_by is not None and lapsed >= current.accept_by:
        # The accept deadline passed (CONTRACT §4: sla_breached, kind accept), and so the offer lapsed.
        events.append(_sla("sla_breached", current, current.accept_by, "accept"))
        decision = offer_ended(current, ctx, how="offer_expired")
        events.extend(decision.events)
        current = decision.state
    if current.status not in FINISHED:
        if current.resolve_warn_at is not None and now >= current.resolve_warn_at:
            events.append(_sla("sla_warning", current, current.resolve_by, "resolve"))
            current = replace(current, resolve_warn_at=None)
        if not current.resolve_breached and lapsed >= current.resolve_by:
            events.append(_sla("sla_breached", current, current.resolve_by, "resolve"))
            current = replace(current, resolve_breached=True)
    if not events:
        return None
    if decision is None:
        return Decision(current, tuple(events))
    return replace(decision, state=current, events=tuple(events))


def finished_late(state: CaseState, decision: Decision, *, at: datetime) -> Decision:
    """`decision` finishes the case (resolve, close) by an action taken `at`: if that was after the
    resolve deadline and the sweep has not said so yet (it waits a grace), `sla_breached` comes first."""
    if state.resolve_breached or at <= state.resolve_by:
        return decision
    breach = _sla("sla_breached", state, state.resolve_by, "resolve")
    return replace(decision, state=replace(decision.state, resolve_breached=True), events=(breach, *decision.events))


def _sla(name: str, state: CaseState, deadline: datetime | None, kind: str) -> Emit:
    holder = state.assignee_id if state.status in HOLDING else None
    return Emit(name, state.tier, state.station_id, {"deadline": deadline, "kind": kind, "worker_id": holder})


def offer_queued(state: CaseState, ctx: Context) -> Decision | None:
    """Offer a queued case if capacity appeared anywhere from its floor upwards; None if not yet."""
    if state.status != "queued":
        return None
    placement = find_placement(
        network=ctx.network,
        start=ctx.network.stations[state.floor_station_id],
        need=state.need,
        lateral=ctx.policy.lateral,
        served_before=ctx.served_before,
        exclude_workers=state.passed_over,
    )
    assignment = _assignment(placement, state, ctx)
    if assignment is None:
        return None
    offered, assigned = offer_to(state, assignment, ctx, explanation=explain_placement(state.need, placement))
    return Decision(offered, (assigned,), offer=assignment)
