"""The router's clock: fires passed deadlines and offers queued cases when capacity appears.

Every router replica runs a sweep. Deadlines live in router.cases (`next_due_at`), so they
survive restarts: a router started after a deadline passed fires it on its first tick. A due case
is claimed with FOR UPDATE SKIP LOCKED and handled in its own transaction, so replicas share the
work and each deadline takes effect exactly once (its event and the cleared deadline commit together).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from schemas.vocabulary import CERTIFICATIONS
from services.router import tables
from services.router.handlers import NetworkCache, decide_and_apply, lock_case, state_from_row
from services.router.lifecycle import (
    HOLDING,
    CaseState,
    Context,
    Decision,
    fire_due,
    hand_back_from_non_worker,
    offer_queued,
    withdraw_unavailable_offer,
)
from services.router.policy import Policy
from services.shared.db import is_transient_db_error, most_urgent_first, retry_conflicts, transaction
from services.shared.logging import get_logger
from services.shared.time import utc_now

log = get_logger(__name__)

# Most urgent first: risk, then the longest wait.
_URGENCY = most_urgent_first(tables.cases.c.risk_level)
_GONE = "(u.id IS NULL OR u.role <> 'worker' OR u.station_id IS NULL)"
# Workers holding something whose offers may no longer stand: off duty, over a lowered capacity, or
# no longer workers at all (`gone`: then what they accepted goes back too). A few rows of
# worker_load, so this is cheap to ask at every tick.
_UNAVAILABLE_HOLDERS = text(
    f"SELECT l.worker_id, {_GONE} AS gone FROM router.worker_load l LEFT JOIN shared.users u ON u.id = l.worker_id "
    f"WHERE l.load > 0 AND ({_GONE} OR NOT u.on_duty OR l.load > u.capacity)"
)
_DIRECTORY_VERSION = text("SELECT version FROM shared.directory_version")
# Offers whose worker now works at another station or holds a lower certification than the case
# needs: one look at every open offer, so asked only after the directory changed.
_OFFERS_OUT_OF_PLACE = text(
    "SELECT c.case_id FROM router.cases c JOIN shared.users u ON u.id = c.assignee_id "
    "WHERE c.status = 'offered' AND (u.station_id IS DISTINCT FROM c.station_id "
    "OR array_position(CAST(:ranks AS text[]), u.certification) "
    "< array_position(CAST(:ranks AS text[]), c.need_certification)) "
    "ORDER BY c.case_id LIMIT :limit"
)
# How long offers are looked at again after a directory change: a routing batch that chose from the
# network as it was before the change may commit its offers a little later.
DIRECTORY_SETTLES_SECONDS = 30.0
CATCH_UP_POLL_SECONDS = 0.2
_QUEUED = frozenset({"queued"})


class DeadlineSweep:
    """A background task that ticks every `interval` seconds."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        policy: Policy,
        *,
        interval: float = 1.0,
        batch: int = 1000,
        grace: timedelta = timedelta(0),
        caught_up: Callable[[], Awaitable[bool]] | None = None,
        catch_up_wait: float = 0.0,
    ) -> None:
        self._sessions = sessions
        self._policy = policy
        self._interval = interval
        self._batch = batch
        self._grace = grace
        self._caught_up = caught_up
        self._catch_up_wait = catch_up_wait
        self._task: asyncio.Task[None] | None = None
        self.fired = 0
        self.withdrawn = 0
        self.handed_back = 0
        self._directory: int | None = None  # the directory version offers were last checked against
        self._directory_settles_at = 0.0  # (monotonic) until then, offers are checked at every tick
        self.offered_from_queue = 0

    async def start(self) -> None:
        """Tick in the background until stopped."""
        self._task = asyncio.create_task(self._run(), name="router-sweep")

    async def stop(self) -> None:
        """Stop between two transactions; whatever is due stays due for the next router."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        await self._wait_for_the_actions_sent_meanwhile()
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be restarting: keep ticking
                level = log.warning if is_transient_db_error(exc) else log.error
                level("router.sweep_failed", error=repr(exc))
            await asyncio.sleep(self._interval)

    async def _wait_for_the_actions_sent_meanwhile(self) -> None:
        """Before the first tick, let the router read what people sent while no router ran (an
        accept sent before its deadline, say), up to `catch_up_wait` seconds: the deadlines that
        passed meanwhile fire after it, not ahead of it."""
        if self._caught_up is None:
            return
        started = time.monotonic()
        while (waited := time.monotonic() - started) < self._catch_up_wait:
            try:
                if await self._caught_up():
                    log.info("router.sweep_caught_up", waited_s=round(waited, 1))
                    return
            except Exception as exc:  # the broker may still be coming up: ask again
                log.debug("router.catch_up_unknown", error=repr(exc))
            await asyncio.sleep(CATCH_UP_POLL_SECONDS)
        log.warning("router.sweep_started_before_catching_up", waited_s=round(time.monotonic() - started, 1))

    async def tick(self) -> None:
        """Fire what is due, then offer queued cases if capacity may have appeared."""
        networks = NetworkCache()
        while await retry_conflicts(lambda: self._fire_next(networks), what="router.sweep"):
            pass
        await self._withdraw_unavailable_offers(networks)
        await self._offer_queued(networks)

    async def _fire_next(self, networks: NetworkCache) -> bool:
        async with transaction(self._sessions) as session:
            cases = tables.cases.c
            row = (
                (
                    await session.execute(
                        select(tables.cases)
                        .where(cases.next_due_at <= utc_now())
                        .order_by(cases.next_due_at)
                        .limit(1)
                        .with_for_update(skip_locked=True)
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                return False
            state = state_from_row(row)
            decision = await decide_and_apply(
                session,
                state,
                lambda ctx: fire_due(state, ctx, grace=self._grace),
                policy=self._policy,
                resident_ref=state.facts.resident_ref,
                networks=networks,
            )
            if decision is None:
                # A deadline within its grace (claimed at the deadline itself): look again once the
                # grace is over. Otherwise nothing was due after all: not claimed again.
                later = state.next_firing(self._grace)
                if later is None or later <= utc_now():
                    later = None
                    log.warning("router.sweep_nothing_due", case_id=state.facts.case_id)
                await session.execute(
                    tables.cases.update().where(cases.case_id == state.facts.case_id).values(next_due_at=later)
                )
            else:
                self.fired += 1
                log.debug(
                    "router.deadline_fired", case_id=state.facts.case_id, events=[e.name for e in decision.events]
                )
            return True

    async def _withdraw_unavailable_offers(self, networks: NetworkCache) -> None:
        # Every tick: the directory may change at any time (`network load`, or by hand), and an
        # offer a batch made from a snapshot taken just before such a change is caught here too.
        cases = tables.cases.c
        async with self._sessions() as session:
            holders = (await session.execute(_UNAVAILABLE_HOLDERS)).all()
            case_ids: list[str] = []
            if holders:
                gone = [row.worker_id for row in holders if row.gone]
                held = (
                    await session.execute(
                        select(cases.case_id)
                        .where(
                            ((cases.status == "offered") & cases.assignee_id.in_([row.worker_id for row in holders]))
                            | (cases.status.in_(("accepted", "in_progress")) & cases.assignee_id.in_(gone))
                        )
                        .order_by(_URGENCY, cases.case_id)
                        .limit(self._batch)
                    )
                ).scalars()
                case_ids.extend(held)
            if await self._directory_changed(session):
                out_of_place = await session.execute(
                    _OFFERS_OUT_OF_PLACE, {"ranks": list(CERTIFICATIONS), "limit": self._batch}
                )
                case_ids.extend(set(out_of_place.scalars()) - set(case_ids))
        for case_id in case_ids:
            withdraw = partial(self._apply_if, case_id, HOLDING, _take_back, networks)
            if (decision := await retry_conflicts(withdraw, what="router.sweep")) is not None:
                if decision.ended_offer is not None:
                    self.withdrawn += 1
                    log.info("router.offer_withdrawn", case_id=case_id, events=[e.name for e in decision.events])
                else:
                    self.handed_back += 1
                    log.info("router.case_handed_back", case_id=case_id, events=[e.name for e in decision.events])

    async def _directory_changed(self, session: AsyncSession) -> bool:
        """Whether the directory changed since the last look, or did so less than
        DIRECTORY_SETTLES_SECONDS ago (the first look counts as a change)."""
        version = (await session.execute(_DIRECTORY_VERSION)).scalar()
        now = time.monotonic()
        if version is None or version != self._directory:
            self._directory = version
            self._directory_settles_at = now + DIRECTORY_SETTLES_SECONDS
        return now < self._directory_settles_at

    async def _offer_queued(self, networks: NetworkCache) -> None:
        # Every tick, not only after a visible change: a release committed by another router
        # moments after our snapshot leaves no trace we could wait for, and checking the queue
        # against a snapshot in memory costs microseconds per case.
        cases = tables.cases.c
        async with self._sessions() as session:
            rows = (
                (
                    await session.execute(
                        select(tables.cases)
                        .where(cases.status == "queued")
                        .order_by(_URGENCY, cases.updated_at)
                        .limit(self._batch)
                    )
                )
                .mappings()
                .all()
            )
            if not rows:  # nothing waits: no need to read the network
                return
            network = await networks.get(session)
        for row in rows:
            state = state_from_row(row)
            # Tried on the snapshot first: only a case that would be placed costs a transaction.
            if offer_queued(state, Context(self._policy, network, utc_now())) is None:
                continue
            offer = partial(self._apply_if, state.facts.case_id, _QUEUED, offer_queued, networks)
            if await retry_conflicts(offer, what="router.sweep") is not None:
                self.offered_from_queue += 1
                async with self._sessions() as session:
                    network = await networks.get(session)

    async def _apply_if(
        self,
        case_id: str,
        statuses: frozenset[str],
        decide: Callable[[CaseState, Context], Decision | None],
        networks: NetworkCache,
    ) -> Decision | None:
        """Lock the case (skipped while another replica holds it) and, if it is still in one of `statuses`,
        apply `decide` to it in this transaction; None if nothing was done."""
        async with transaction(self._sessions) as session:
            state: CaseState | None = await lock_case(session, case_id, skip_locked=True)
            if state is None or state.status not in statuses:
                return None
            current = state
            return await decide_and_apply(
                session,
                current,
                lambda ctx: decide(current, ctx),
                policy=self._policy,
                resident_ref=current.facts.resident_ref,
                networks=networks,
            )


def _take_back(state: CaseState, ctx: Context) -> Decision | None:
    """An offer that can no longer stand is withdrawn; a case whose holder is no longer a worker
    goes back to be placed again."""
    if state.status == "offered":
        return withdraw_unavailable_offer(state, ctx)
    return hand_back_from_non_worker(state, ctx)
