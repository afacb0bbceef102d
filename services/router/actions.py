"""What a worker's or supervisor's action does to a case, or why it cannot (pure, no I/O).

Workers answer the offer they hold and work their cases; supervisors of the case's station or
any station above it close, escalate, refer back and assign. Status checks come first (conflict),
then who may act (forbidden), then the arguments (invalid).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from schemas.commands import CaseCommand
from services.router.domain import Assignment, Station, certification_rank, tier_rank
from services.router.lifecycle import (
    HOLDING,
    Actor,
    CaseState,
    CommandRefused,
    Context,
    Decision,
    Emit,
    finished_late,
    offer_cannot_stand,
    offer_ended,
    offer_to,
    place,
    withdrawn,
)
from services.shared.time import rfc3339

_ALLOWED_FROM: dict[str, frozenset[str]] = {
    "accept": frozenset({"offered"}),
    "decline": frozenset({"offered"}),
    "start": frozenset({"accepted"}),
    "resolve": frozenset({"accepted", "in_progress"}),
    "close": frozenset({"received", "routed", "escalated", "offered", "queued", "accepted", "in_progress", "resolved"}),
}
_OPEN = frozenset({"routed", "escalated", "offered", "queued", "accepted", "in_progress"})


def decide_command(state: CaseState, command: CaseCommand, actor: Actor | None, ctx: Context) -> Decision:
    """Apply one person's action to the case, or raise CommandRefused saying why not."""
    allowed = _ALLOWED_FROM.get(command.action, _OPEN)
    if state.status not in allowed:
        raise CommandRefused(
            "conflict", f"cannot {command.action.replace('_', ' ')} a case that is {state.status.replace('_', ' ')}"
        )
    if command.action in ("accept", "decline", "start", "resolve"):
        _require_assignee(state, actor, command.action)
        return _worker_action(state, command, ctx)
    scope = _require_supervisor(state, actor, command.action, ctx)
    if command.action == "close":
        return _close(state, closed_by=str(command.actor_id), at=command.issued_at)
    if command.action == "escalate":
        return _escalate(state, ctx)
    if command.action == "refer_back":
        return _refer_back(state, command, scope, ctx)
    return _assign(state, command, scope, ctx, assigned_by=str(command.actor_id))


def _require_assignee(state: CaseState, actor: Actor | None, action: str) -> None:
    if actor is not None and actor.role == "worker" and actor.id != state.assignee_id and actor.id in state.passed_over:
        # Their own offer ended (they declined it, or let it lapse) and the case moved on: a
        # conflict with the case's state, not someone else's case (an accept racing one's decline).
        raise CommandRefused("conflict", f"worker {actor.id}'s offer of the case ended: it went to the next worker")
    if actor is None or actor.id != state.assignee_id or actor.role != "worker":
        raise CommandRefused("forbidden", f"only the worker holding the case may {action} it")


def _require_supervisor(state: CaseState, actor: Actor | None, action: str, ctx: Context) -> Station:
    home = actor.station_id if actor is not None and actor.role == "supervisor" else None
    if home is None or home not in ctx.network.stations or not ctx.network.is_within(state.station_id, home):
        what = "refer it back" if action == "refer_back" else f"{action} it"
        raise CommandRefused("forbidden", f"only a supervisor of the case's station or above may {what}")
    return ctx.network.stations[home]


def _worker_action(state: CaseState, command: CaseCommand, ctx: Context) -> Decision:
    worker = state.assignee_id
    here = (state.tier, state.station_id)
    if command.action == "decline":
        return offer_ended(state, ctx, how="declined", reason=(command.reason or "").strip())
    if command.action == "accept":
        # Sent after the deadline (the sweep fires it a grace later, for accepts sent in time).
        if state.accept_by is not None and command.issued_at > state.accept_by:
            lapsed = f"the offer to worker {worker} lapsed at {rfc3339(state.accept_by)}"
            raise CommandRefused("conflict", f"{lapsed}: it goes to the next worker")
        if (why := offer_cannot_stand(state, ctx)) is not None:
            # The router's next sweep withdraws the offer and makes it to someone who can take it.
            raise CommandRefused("conflict", f"worker {worker} {why}: the offer goes to someone else")
        accepted = replace(state, status="accepted", accept_by=None, accept_warn_at=None)
        return Decision(
            accepted, (Emit("accepted", *here, {"worker_id": worker}),), ended_offer=(str(worker), "accepted")
        )
    if command.action == "start":
        return Decision(replace(state, status="in_progress"), (Emit("started", *here, {"worker_id": worker}),))
    fields: dict[str, Any] = {"worker_id": worker, "outcome": command.outcome}
    resolved = Decision(replace(state, status="resolved"), (Emit("resolved", *here, fields),), release=worker)
    return finished_late(state, resolved, at=command.issued_at)


def _close(state: CaseState, *, closed_by: str, at: datetime) -> Decision:
    _, holder, ended = withdrawn(state)
    closed = replace(state, status="closed", accept_by=None, accept_warn_at=None)
    event = Emit("closed", state.tier, state.station_id, {"worker_id": state.assignee_id, "closed_by": closed_by})
    return finished_late(state, Decision(closed, (event,), release=holder, ended_offer=ended), at=at)


def _escalate(state: CaseState, ctx: Context) -> Decision:
    here = ctx.network.stations[state.station_id]
    parent = ctx.network.parent(here)
    if parent is None:
        raise CommandRefused("conflict", f"the case is at {here.id}, the top station: there is no tier above")
    free, holder, ended = withdrawn(state)
    up = Emit(
        "escalated", parent.tier, parent.id, {"from_tier": here.tier, "from_station_id": here.id, "reason": "manual"}
    )
    raised = replace(free, status="escalated", tier=parent.tier, station_id=parent.id, floor_station_id=parent.id)
    placed, events, offer = place(raised, parent, ctx)
    return Decision(placed, (up, *events), release=holder, offer=offer, ended_offer=ended)


def _refer_back(state: CaseState, command: CaseCommand, scope: Station, ctx: Context) -> Decision:
    network = ctx.network
    here = network.stations[state.station_id]
    if command.station_id is not None:
        target = network.stations.get(command.station_id)
        if target is None:
            raise CommandRefused("invalid", f"station_id: unknown station {command.station_id!r}")
        # Down a tier or more, to a station under the case's own or on the submitting room's path
        # (where a case placed laterally came from). Not anywhere else in the supervisor's subtree:
        # a county supervisor could otherwise hand a township's case to another township's room.
        on_path = network.is_within(state.facts.room_id, target.id)
        if tier_rank(target.tier) >= tier_rank(here.tier) or not (on_path or network.is_within(target.id, here.id)):
            raise CommandRefused(
                "invalid",
                f"station_id: {target.id} is neither below the case's {here.tier} {here.id} "
                f"nor on the path of its room {state.facts.room_id}",
            )
    else:
        below = [s for s in network.path_up(state.facts.room_id) if tier_rank(s.tier) < tier_rank(here.tier)]
        if not below:
            raise CommandRefused("conflict", f"the case is at {here.tier} {here.id}: there is no tier below it")
        target = below[-1]  # the highest station of the submitting room's path below the case
    free, holder, ended = withdrawn(state)
    reason = (command.reason or "").strip() or "referred back by a supervisor"
    back = Emit(
        "referred_back", target.tier, target.id, {"from_tier": here.tier, "from_station_id": here.id, "reason": reason}
    )
    lowered = replace(
        free, status="routed", tier=target.tier, station_id=target.id, floor_station_id=target.id, offers_made={}
    )
    placed, events, offer = place(lowered, target, ctx)
    return Decision(placed, (back, *events), release=holder, offer=offer, ended_offer=ended)


def _assign(state: CaseState, command: CaseCommand, scope: Station, ctx: Context, *, assigned_by: str) -> Decision:
    worker = ctx.network.worker(str(command.worker_id))
    if worker is None:
        raise CommandRefused("invalid", f"worker_id: unknown worker {command.worker_id!r}")
    if not ctx.network.is_within(worker.station_id, scope.id):
        raise CommandRefused("forbidden", f"worker {worker.id} works outside the supervisor's stations")
    need = state.need
    if worker.id == state.assignee_id and state.status in HOLDING:
        raise CommandRefused("conflict", f"the case is already with worker {worker.id}")
    if not worker.on_duty:
        raise CommandRefused("conflict", f"worker {worker.id} is off duty")
    if certification_rank(worker.certification) < certification_rank(need.certification):
        raise CommandRefused(
            "conflict", f"worker {worker.id} is certified {worker.certification}; the case needs {need.certification}"
        )
    if worker.load + need.weight > worker.capacity:
        raise CommandRefused(
            "conflict",
            f"worker {worker.id} has no room for the case: it weighs {need.weight}, "
            f"and {worker.load} of their capacity {worker.capacity} is in use",
        )
    free, holder, ended = withdrawn(state)
    station = ctx.network.stations[worker.station_id]
    assignment = Assignment(
        worker_id=worker.id,
        station_id=station.id,
        tier=station.tier,
        score=worker.load_ratio,
        accept_by=ctx.now + ctx.policy.sla[state.facts.risk_level].accept,
        weight=need.weight,
        candidates_considered=1,
    )
    explanation = {
        "manual": True,
        "assigned_by": assigned_by,
        "specialty_matches": need.specialty in worker.specialties,
        "outcome": {"assigned": worker.id, "station_id": station.id, "score": round(worker.load_ratio, 4)},
    }
    offered, assigned = offer_to(free, assignment, ctx, explanation=explanation)
    return Decision(offered, (assigned,), release=holder, offer=assignment, ended_offer=ended)
