"""The reliability bench: the router test bench (embedded PostgreSQL and Tansu in the test process,
services as killable subprocesses) plus a notifier whose webhooks point at a recording receiver,
HTTP submissions with a system token, and handles on the two servers for fault injection.

One network serves every reliability scenario: a county subtree per scenario, so scenarios never
share a worker, and long accept deadlines, so no timer fires while a test looks at a case.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from schemas.topics import CASE_EVENTS, TOPIC_PARTITIONS
from services.shared.embedded import EmbeddedProcess
from tests.integration.router_harness import SYSTEM_USER, RouterHarness
from tests.support.case_checks import offer_overlaps, sequence_problems
from tests.support.faults import committed_offsets, end_offsets
from tests.support.network_builder import NetworkBuilder, Subtree
from tests.support.topic_log import short_type
from tests.support.webhook_receiver import Receiver

POLICY = """\
version: 1
sla:
  critical: {accept: PT1H, resolve: P1D}
  high:     {accept: PT1H, resolve: P1D}
  medium:   {accept: PT1H, resolve: P1D}
  low:      {accept: PT1H, resolve: P1D}
load_weight: {critical: 3, high: 2, medium: 1, low: 1}
offers_per_tier: 2
lateral: true
rules:
  - name: default
    tier: township
"""
CITY = "M-RL"
CATEGORIES = ("social_assistance", "elderly_care", "family_support")
RISKS = ("low", "medium", "high")
SCENARIOS = ("BO", "DB", "CR", "SD")  # broker outage, database outage, crash, shutdown
WEBHOOK_SECRET = "reliability-secret"
# After the first offer (or queueing) a case only moves again when someone acts on it.
FIRST_PLACEMENT = frozenset({"assigned", "queued"})


def build_network(receiver_url: str) -> tuple[NetworkBuilder, dict[str, Subtree]]:
    """Per scenario: 2 townships × 2 rooms; per township and category 2 workers (capacity 8) and per
    county and category 1 worker (capacity 6), each with a webhook, and a supervisor per county."""
    net = NetworkBuilder()
    net.station(CITY, "city")
    net.system_user(SYSTEM_USER)
    trees = {}
    for name in SCENARIOS:
        tree = net.subtree(name, city=CITY, townships=2, rooms_per_township=2)
        trees[name] = tree
        people = [net.supervisor(f"{name.lower()}-sup", tree.county)]
        for category in CATEGORIES:
            short = category[:4]
            for i, township in enumerate(tree.townships, start=1):
                people += [net.worker(f"{name.lower()}-{short}-t{i}{j}", township, [category], capacity=8)
                           for j in (1, 2)]  # fmt: skip
            people.append(net.worker(f"{name.lower()}-{short}-c1", tree.county, [category], capacity=6))
        for person in people:
            net.users[person]["notify"] = [
                {"channel": "webhook", "url": f"{receiver_url}/hooks/{person}", "secret": WEBHOOK_SECRET}
            ]
    return net, trees


class ReliabilityBench(RouterHarness):
    """RouterHarness + notifier, HTTP submissions and the servers' process handles."""

    def __init__(self, work_dir: Path, *, receiver: Receiver) -> None:
        network, self.trees = build_network(receiver.url)
        super().__init__(work_dir, policy_yaml=POLICY, network=network)
        self.receiver = receiver
        self.token = ""

    async def start_all(self) -> None:
        """Infrastructure, intake and one router; a system token for HTTP submissions. The notifier
        starts only for the tests that need it (`ensure_notifier`)."""
        await self.start(routers=("router",))
        self.token = await self._create_token(SYSTEM_USER)

    async def _create_token(self, user_id: str) -> str:
        from services.shared.db import create_engine, session_factory, transaction
        from services.shared.directory import create_token
        from services.shared.settings import Settings

        engine = create_engine(Settings(), url=self.database_url)
        try:
            async with transaction(session_factory(engine)) as session:
                return await create_token(session, user_id=user_id)
        finally:
            await engine.dispose()

    # ---- processes ---------------------------------------------------------------------------

    def server(self, name: str) -> EmbeddedProcess:
        """The embedded `postgres` or `tansu` process."""
        assert self._infra is not None, "bench not started"
        return next(p for p in self._infra.processes if p.name == name)

    async def start_notifier(self, name: str = "notifier", **env: str) -> None:
        """Start `caselink notifier` and wait until it consumes (its ready file exists)."""
        ready_file = self.work_dir / f"{name}.ready"
        ready_file.unlink(missing_ok=True)
        # Escalation digests would hold pushes back for minutes: every push goes out on its own.
        settings = self._service_env(**{"CASELINK_NOTIFY_DIGEST_MINUTES": "0", **env})
        service = await self._spawn(name, ["notifier", "--ready-file", str(ready_file)], settings)

        async def touched() -> bool:
            return ready_file.exists()

        await self._wait_ready(service, touched)

    async def ensure_running(self, *names: str) -> None:
        """Start the intake, router or notifier of these names unless they run (an earlier test may
        have failed with one of them stopped)."""
        stopped = [n for n in names if (s := self.services.get(n)) is None or s.proc.returncode is not None]
        await asyncio.gather(*(self.start_intake() if n == "intake" else self.restart(n) for n in stopped))

    async def routed_from(self, rooms: list[str]) -> int:
        """Cases from these rooms the router has committed (it runs ahead of what the relay published)."""
        rows = await self.sql("SELECT count(*) AS n FROM router.cases WHERE room_id = ANY($1::text[])", rooms)
        return int(rows[0]["n"])

    async def restart(self, name: str) -> None:
        """Start a router or notifier (again) under this name."""
        if name.startswith("notifier"):
            await self.start_notifier(name)
        else:
            await self.start_router(name)

    async def kill(self, name: str) -> None:
        """SIGKILL a service: no shutdown code runs, open transactions roll back."""
        await self._stop(name, signal.SIGKILL, grace=10.0, must_exit_cleanly=False)

    async def terminate(self, name: str, *, grace: float = 30.0) -> float:
        """SIGTERM a service, require a clean exit within `grace`; return how long it took."""
        started = time.monotonic()
        await self._stop(name, signal.SIGTERM, grace=grace, must_exit_cleanly=True)
        return time.monotonic() - started

    def consumer_readiness(self, name: str) -> bool | None:
        """What a router's or notifier's ready file says now (None: no file, or not JSON)."""
        try:
            return bool(json.loads((self.work_dir / f"{name}.ready").read_text())["ready"])
        except (OSError, ValueError, KeyError):
            return None

    def log_count(self, name: str, event: str) -> int:
        """How often a service's log (all its runs) names a structlog event."""
        path = self.work_dir / f"{name}.log"
        return path.read_text(errors="replace").count(f'"event": "{event}"') if path.exists() else 0

    # ---- HTTP --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def client(self, seconds: float = 30.0) -> AsyncIterator[httpx.AsyncClient]:
        """An HTTP client for the intake with the system user's token."""
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(base_url=self.http, headers=headers, timeout=seconds, trust_env=False) as client:
            yield client

    async def post_referral(self, client: httpx.AsyncClient, room: str, category: str, risk: str) -> httpx.Response:
        """POST one referral with a fresh Idempotency-Key."""
        body = self.referral(room, category, risk)
        body.pop("submission_id")
        return await client.post("/v1/referrals", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})

    async def readyz(self) -> int:
        """The intake's /readyz status (0 when it does not answer at all)."""
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=10.0) as client:
                return (await client.get(f"{self.http}/readyz")).status_code
        except httpx.HTTPError:
            return 0

    # ---- what every scenario checks ------------------------------------------------------------

    async def wait_placed(self, cases: list[str], *, within: float) -> None:
        """Wait until every case was offered or queued, and the outbox is empty and events settled."""
        await self.events.wait_for(
            lambda: all(FIRST_PLACEMENT & set(self.events.types(case)) for case in cases),
            within=within,
            what=f"first placement of {len(cases)} cases",
            detail=lambda: self.explain(c for c in cases if not FIRST_PLACEMENT & set(self.events.types(c))),
        )
        if (notifier := self.services.get("notifier")) is not None and notifier.proc.returncode is None:
            # A running notifier (an earlier test's) still moves these cases' heads with `notified`.
            await wait_until(
                lambda: self.notifier_done(cases), within=within, what="the notifier through every event and job"
            )
        await self.settle(quiet=1.0, within=within)

    async def notifier_done(self, cases: list[str]) -> bool:
        """The notifier's group has committed every case event, and no push job of these cases is pending."""
        committed = await committed_offsets(
            self.kafka_bootstrap, "caselink-notifier", CASE_EVENTS, TOPIC_PARTITIONS[CASE_EVENTS]
        )
        ends = await end_offsets(self.kafka_bootstrap, CASE_EVENTS)
        if any(committed.get(p, 0) < end for p, end in ends.items()):
            return False
        rows = await self.sql(
            "SELECT count(*) AS n FROM notifier.jobs WHERE case_id = ANY($1::text[]) AND status = 'pending'", cases
        )
        return int(rows[0]["n"]) == 0

    async def placed_once_problems(self, cases: list[str]) -> dict[str, list[str]]:
        """Per case, why it was not routed exactly once and placed exactly once, with gap-free sequences
        on the topic that match the database's case head (empty when all is well)."""
        heads = {
            row["case_id"]: row["last_sequence"]
            for row in await self.sql(
                "SELECT case_id, last_sequence FROM shared.case_heads WHERE case_id = ANY($1::text[])", cases
            )
        }
        await self.settle(quiet=0.0, within=60)  # every event behind those heads is in the log
        found: dict[str, list[str]] = {}
        for case in cases:
            events = self.events.of(case)
            names = Counter(short_type(e) for e in events)
            problems = sequence_problems(events) + offer_overlaps(events)
            if names["received"] != 1 or names["routed"] != 1:
                problems.append(f"received ×{names['received']}, routed ×{names['routed']}")
            main = [n for n in (short_type(e) for e in events) if n not in {"notified", "notification_failed"}]
            # No capacity at the target: lateral help or `escalated` hops, then the one first placement.
            placement = [n for n in main[2:] if n != "escalated"][:1]
            if main[:2] != ["received", "routed"] or placement not in (["assigned"], ["queued"]):
                problems.append(f"main path {main}")
            if names["assigned"] + names["queued"] != 1:  # nobody acts and no deadline passes in these tests
                problems.append(f"assigned ×{names['assigned']}, queued ×{names['queued']}")
            if heads.get(case) != len(events):
                problems.append(f"case head at {heads.get(case)} but {len(events)} events on the topic")
            if problems:
                found[case] = problems
        return found

    def explain(self, cases: Any, limit: int = 3) -> str:
        return "\n".join(self.events.timeline(case) for case in list(cases)[:limit])


async def wait_until(predicate: Any, *, within: float, what: str, every: float = 0.2) -> None:
    """Poll an async predicate until it holds."""
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(every)
